"""Writes one benchmark's results into its own section of docs/BENCHMARKS.md (and describes the machine).

Each benchmark owns a section between two markers and replaces only that, so the scripts can run in any
order and on different days without clobbering each other's numbers::

    <!-- section:upload -->
    ...written by benchmarks/upload.py...
    <!-- /section:upload -->

A section missing from the file is appended at its end. From Python::

    from benchmarks.report import machine_markdown, write_section
    write_section("upload", machine_markdown() + "\\n\\n| ... |")

From the shell, e.g. for the engine's benchmark, which writes a Markdown file of its own::

    python -m lora_engine.bench --markdown /tmp/engine.md && python benchmarks/report.py engine /tmp/engine.md
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DOC = ROOT / "docs" / "BENCHMARKS.md"
DOC_HEADER = """# LoRA Studio benchmarks

Every section below is written by the script named in it (`benchmarks/*.py`, `python -m lora_engine.bench`);
rerun the script to refresh its section. Numbers from a shared 2-core CPU box are noisy: read the ratios,
measured side by side in the same run, rather than the absolute values.
"""
SHARED_MACHINE_NOTE = ("Measured on a machine shared with other engineers running test suites at the same time: "
                       "absolute numbers are pessimistic and noisy; the ratios compare runs made side by side.")


def _markers(name: str) -> tuple[str, str]:
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ValueError(f"a section name is lower-case letters, digits, - and _ (got {name!r})")
    return f"<!-- section:{name} -->", f"<!-- /section:{name} -->"


def replace_section(document: str, name: str, body: str) -> str:
    """``document`` with section ``name`` holding ``body`` (appended at the end when it is not there yet)."""
    start, end = _markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip() + "\n\n" + block + "\n"


def write_section(name: str, body: str, path: str | Path = DEFAULT_DOC) -> Path:
    """Replace section ``name`` of the Markdown file at ``path`` (created with a header if missing), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # two benchmarks finishing at once must not lose each other's section
    with open(Path(tempfile.gettempdir()) / "lora-studio-benchmarks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        document = path.read_text() if path.exists() else DOC_HEADER
        updated = replace_section(document, name, body)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".bench-", suffix=".md", delete=False) as tmp:
            tmp.write(updated)
        os.replace(tmp.name, path)
    return path


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_description() -> dict:
    """CPU model, cores, RAM, load, Python/torch/Django/PostgreSQL-client versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable, "ram_bytes": _ram_bytes(),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    for module in ("torch", "django"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def machine_markdown(extra: str = "") -> str:
    """One paragraph describing the machine and the date, for the top of a section."""
    m = machine_description()
    ram = f"{m['ram_bytes'] / 1024**3:.0f} GiB RAM" if m["ram_bytes"] else "RAM unknown"
    load = "/".join(f"{x:.1f}" for x in m["load_average"]) if m["load_average"] else "n/a"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (f"_Run {when} on {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, {ram}; "
            f"Python {m['python']}, torch {m['torch']}, Django {m['django']}; load average at start {load}._ "
            f"{SHARED_MACHINE_NOTE}")
    return text + (f" {extra}" if extra else "")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; ``align`` is one character per column (l or r), default: first left, others right."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replace one section of docs/BENCHMARKS.md with a Markdown file.")
    parser.add_argument("section", help="section name, e.g. engine")
    parser.add_argument("source", help="a Markdown file, or - for standard input")
    parser.add_argument("--doc", default=str(DEFAULT_DOC), help="the document to update")
    args = parser.parse_args(argv)
    body = sys.stdin.read() if args.source == "-" else Path(args.source).read_text()
    print(f"section {args.section} written to {write_section(args.section, body, args.doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

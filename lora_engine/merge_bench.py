"""Merge benchmark: :func:`lora_engine.merge.merge_adapter` against peft's ``merge_and_unload()`` and
``save_pretrained()``.

    python -m lora_engine.merge_bench [--hidden-size 1024] [--layers 8] [--vocab-size 32000] [--rank 16]
                                      [--targets all-linear] [--shard-mb 200] [--repeats 2] [--cache-dir DIR]
                                      [--markdown FILE] [--json]
    python benchmarks/report.py merge FILE          # puts the Markdown into docs/BENCHMARKS.md

Both sides merge the same adapter into the same saved base (a random-init Llama written once as sharded fp32
safetensors, large enough that the weights dwarf the libraries' resident memory) and write fp32 shards of the
same maximum size. Each side runs in a fresh interpreter that imports the same libraries (torch, safetensors,
transformers, peft) before its baseline is read, then resets the kernel's RSS high-water mark (VmHWM, via
``/proc/self/clear_refs``), so the peak covers the merge and save alone plus what the libraries already hold.
Wall time runs from the call to the last file written (the engine's includes its fsyncs and the sha256
manifest; peft's ``save_pretrained`` does neither). The two outputs are then compared tensor by tensor.
Target (issue 8): engine peak ≤ 0.5 × peft's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SIDES = ("engine", "peft")
PEAK_TARGET = 0.5
EQUAL_TOLERANCE = 1e-5


@dataclass(frozen=True)
class MergeBenchSpec:
    """The base model and adapter both sides merge."""

    hidden_size: int = 1024
    layers: int = 8
    heads: int = 16
    intermediate_size: int = 2816
    vocab_size: int = 32000
    rank: int = 16
    targets: str = "all-linear"
    """peft ``target_modules``: ``all-linear`` or comma-separated module names."""
    shard_mb: int = 200
    """Largest safetensors shard, base and both outputs, in MB (10**6 bytes)."""
    seed: int = 0


def _status_bytes(*keys: str) -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in keys:
                values[key] = int(rest.split()[0]) * 1024
    return values


def _reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def prepare_inputs(spec: MergeBenchSpec, cache_dir: Path) -> tuple[Path, Path]:
    """The base model directory and adapter directory for ``spec`` under ``cache_dir`` (built once, then reused).

    Returns:
        ``(base_dir, adapter_dir)``.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from .tiny import build_tiny_model, build_tiny_tokenizer

    identity = json.dumps(asdict(spec), sort_keys=True)
    root = cache_dir / f"merge-bench-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"
    base_dir, adapter_dir, done = root / "base", root / "adapter", root / "done.json"
    if done.is_file() and json.loads(done.read_text()) == asdict(spec):
        return base_dir, adapter_dir
    model = build_tiny_model("llama", seed=spec.seed, vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                             layers=spec.layers, heads=spec.heads, intermediate_size=spec.intermediate_size)
    model.save_pretrained(base_dir, max_shard_size=spec.shard_mb * 10**6)
    build_tiny_tokenizer(vocab_size=512).save_pretrained(base_dir)
    targets: str | list[str] = spec.targets if spec.targets == "all-linear" else spec.targets.split(",")
    torch.manual_seed(spec.seed + 1)
    config = LoraConfig(r=spec.rank, lora_alpha=2 * spec.rank, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(adapter_dir)  # A and B random: ΔW ≠ 0 everywhere
    done.write_text(json.dumps(asdict(spec)))
    return base_dir, adapter_dir


def run_side(side: str, base_dir: Path, adapter_dir: Path, out_dir: Path, shard_mb: int) -> dict[str, Any]:
    """Merge and save with one side in this process; return seconds, baseline and peak RSS in bytes."""
    import warnings

    import peft  # noqa: F401  the same libraries resident on both sides
    import safetensors  # noqa: F401
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from .merge import merge_adapter

    warnings.simplefilter("ignore")
    transformers.utils.logging.disable_progress_bar()
    baseline = _status_bytes("VmRSS")["VmRSS"]
    _reset_high_water_mark()
    start = time.perf_counter()
    if side == "engine":
        merge_adapter(str(base_dir), adapter_dir, out_dir, dtype="fp32", max_shard_bytes=shard_mb * 10**6)
    else:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(out_dir, max_shard_size=shard_mb * 10**6)
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM")["VmHWM"]
    return {"side": side, "seconds": seconds, "baseline_bytes": baseline, "peak_bytes": peak}


def compare_outputs(engine_dir: Path, peft_dir: Path) -> dict[str, Any]:
    """Tensor-by-tensor comparison of two model directories (one tensor pair in memory at a time).

    Returns:
        ``tensors`` compared, names ``only_engine`` / ``only_peft``, ``max_abs_diff`` and ``max_abs_weight``.
    """
    from .safetensors_stream import index_tensors, read_tensor

    ours = index_tensors(sorted(engine_dir.glob("*.safetensors")))
    theirs = index_tensors(sorted(peft_dir.glob("*.safetensors")))
    shared = sorted(set(ours) & set(theirs))
    max_diff = max_weight = 0.0
    for name in shared:
        a, b = read_tensor(ours[name]).double(), read_tensor(theirs[name]).double()
        if a.shape != b.shape:
            max_diff = float("inf")
            continue
        max_diff = max(max_diff, float((a - b).abs().max()) if a.numel() else 0.0)
        max_weight = max(max_weight, float(b.abs().max()) if b.numel() else 0.0)
    return {"tensors": len(shared), "only_engine": sorted(set(ours) - set(theirs)),
            "only_peft": sorted(set(theirs) - set(ours)), "max_abs_diff": max_diff, "max_abs_weight": max_weight}


def _spawn_side(side: str, base_dir: Path, adapter_dir: Path, out_dir: Path, shard_mb: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "lora_engine.merge_bench", "--worker", side, "--base", str(base_dir),
               "--adapter", str(adapter_dir), "--out", str(out_dir), "--shard-mb", str(shard_mb)]
    process = subprocess.run(command, capture_output=True, text=True,
                             env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if process.returncode != 0:
        raise RuntimeError(f"the {side} merge failed:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout.strip().splitlines()[-1])


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def run_merge_benchmark(spec: MergeBenchSpec, cache_dir: Path, repeats: int = 2) -> dict[str, Any]:
    """Build (or reuse) the inputs, run the sides alternately ``repeats`` times, compare the outputs.

    Returns:
        A JSON-ready dict: ``spec``, ``machine``, ``base_bytes``, ``runs`` (every run), ``sides`` (per side the
        fastest time and the highest peak over its runs), ``ratios`` (engine ÷ peft) and ``comparison``.
    """
    from .bench_report import machine_description

    base_dir, adapter_dir = prepare_inputs(spec, cache_dir)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="merge-bench-out-", dir=cache_dir) as tmp:
        for attempt in range(max(1, repeats)):
            for side in SIDES:
                out_dir = Path(tmp) / f"{side}-{attempt}"
                runs.append({**_spawn_side(side, base_dir, adapter_dir, out_dir, spec.shard_mb),
                             "output_bytes": _dir_bytes(out_dir)})
        comparison = compare_outputs(Path(tmp) / "engine-0", Path(tmp) / "peft-0")
    sides = {}
    for side in SIDES:
        mine = [r for r in runs if r["side"] == side]
        sides[side] = {"seconds": min(r["seconds"] for r in mine), "peak_bytes": max(r["peak_bytes"] for r in mine),
                       "baseline_bytes": max(r["baseline_bytes"] for r in mine),
                       "output_bytes": mine[0]["output_bytes"]}
    engine, peft = sides["engine"], sides["peft"]
    ratios = {"seconds": engine["seconds"] / peft["seconds"], "peak": engine["peak_bytes"] / peft["peak_bytes"],
              "growth": (engine["peak_bytes"] - engine["baseline_bytes"])
              / max(1, peft["peak_bytes"] - peft["baseline_bytes"])}
    base_bytes = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    return {"spec": asdict(spec), "machine": machine_description(), "base_bytes": base_bytes,
            "base_shards": len(list(base_dir.glob("*.safetensors"))), "runs": runs, "sides": sides,
            "ratios": ratios, "comparison": comparison}


def format_markdown(report: dict[str, Any]) -> str:
    """The report as the body of section ``merge`` of docs/BENCHMARKS.md."""
    mib = 1024**2
    s, m, c, ratios = report["spec"], report["machine"], report["comparison"], report["ratios"]
    equal = (c["max_abs_diff"] <= EQUAL_TOLERANCE and not c["only_engine"] and not c["only_peft"])
    met = ratios["peak"] <= PEAK_TARGET
    lines = [
        "## Merge (`python -m lora_engine.merge_bench --markdown F && python benchmarks/report.py merge F`)", "",
        f"_Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {m['cpu']}, {m['usable_cores']} usable of "
        f"{m['logical_cores']} logical cores; torch {m['torch']}, transformers {m['transformers']}, "
        f"Python {m['python']}._", "",
        f"Base: random-init Llama d={s['hidden_size']} L={s['layers']} vocab={s['vocab_size']} "
        f"(MLP {s['intermediate_size']}), {report['base_bytes'] / mib:.0f} MiB of fp32 safetensors in "
        f"{report['base_shards']} shards of ≤ {s['shard_mb']} MB. Adapter: rank {s['rank']}, {s['targets']}, A and B "
        f"random. Both sides write fp32 shards of ≤ {s['shard_mb']} MB; each runs in its own interpreter with torch, "
        "safetensors, transformers and peft imported before the baseline, VmHWM reset after it. "
        f"{len(report['runs']) // 2} runs per side, alternating: the fastest time and the highest peak are shown.", "",
        "| side | wall time (s) | peak RSS (MiB) | growth over baseline (MiB) | output (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    names = {"engine": "lora_engine `merge_adapter` (streamed)",
             "peft": "peft `merge_and_unload()` + `save_pretrained()`"}
    for side, r in report["sides"].items():
        lines.append(f"| {names[side]} | {r['seconds']:.1f} | {r['peak_bytes'] / mib:.0f} | "
                     f"{(r['peak_bytes'] - r['baseline_bytes']) / mib:.0f} | {r['output_bytes'] / mib:.0f} |")
    lines += [
        "",
        f"Engine ÷ peft: wall time ×{ratios['seconds']:.2f}, peak RSS ×{ratios['peak']:.2f}, growth over the "
        f"post-import baseline ×{ratios['growth']:.2f}. Target peak ≤ ×{PEAK_TARGET}: "
        f"{'**met**' if met else '**missed**'}.",
        "",
        f"Outputs: {c['tensors']} tensors compared, max |engine − peft| = {c['max_abs_diff']:.2e} "
        f"(largest |weight| {c['max_abs_weight']:.2f}); tensors only in one output: "
        f"{len(c['only_engine'])} / {len(c['only_peft'])} → {'equal' if equal else '**not equal**'} "
        f"(tolerance {EQUAL_TOLERANCE:g}).",
        "",
        "All runs (s, peak MiB): " + "; ".join(f"{r['side']} {r['seconds']:.1f} s {r['peak_bytes'] / mib:.0f}"
                                               for r in report["runs"]) + ".",
    ]
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = MergeBenchSpec()
    p = argparse.ArgumentParser(prog="python -m lora_engine.merge_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--intermediate-size", type=int, default=d.intermediate_size)
    p.add_argument("--vocab-size", type=int, default=d.vocab_size)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--targets", default=d.targets, help="all-linear or comma-separated module names")
    p.add_argument("--shard-mb", type=int, default=d.shard_mb)
    p.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "lora-merge-bench"),
                   help="where the base model and adapter are built once and reused")
    p.add_argument("--markdown", default=None, help="also write the section's Markdown to this file")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--adapter", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--worker``, one side of it); return the exit status."""
    args = _parse_args(argv)
    if args.worker:
        result = run_side(args.worker, Path(args.base), Path(args.adapter), Path(args.out), args.shard_mb)
        print(json.dumps(result))
        return 0
    spec = MergeBenchSpec(hidden_size=args.hidden_size, layers=args.layers, heads=args.heads,
                          intermediate_size=args.intermediate_size, vocab_size=args.vocab_size, rank=args.rank,
                          targets=args.targets, shard_mb=args.shard_mb)
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    report = run_merge_benchmark(spec, cache, repeats=args.repeats)
    text = format_markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A big JSONL through the browser's chunked upload endpoint (a benchmark, not a test).

Three measurements on the same generated file (default 1 GiB of OpenAI-chat rows, written to /tmp):

1. Upload: the datasets page's protocol (``POST /datasets/uploads/``, then 4 MiB ``.../chunk?offset=`` bodies,
   then ``.../finish``, which validates, hashes and moves the file into place) against a live uvicorn server, with a
   session cookie and CSRF header like the page's script. Throughput of the chunks, time of the finish,
   compared with copying the same file on the same disk in 4 MiB blocks (what the disk allows).
2. Validation alone: ``lora_engine.data.validate_file`` against a bare loop of ``json.loads`` over the same
   lines (the least any validator must do). Target: above 100 MB/s.
3. The server's memory: VmRSS of the web server process sampled every 50 ms from /proc, and its VmHWM,
   against its resident size just before the upload. Target: under 100 MB of growth.

Usage (PostgreSQL and Redis running; a throwaway database is created and dropped):
    python benchmarks/upload.py [--size-mb 1024] [--keep-file] [--no-write]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import machine_markdown, table, verdict, write_section  # noqa: E402
from benchmarks.stack import add_stack_arguments, make_user, prepare, read_rss, session_cookie_for  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
VALIDATION_TARGET_MB_S = 100.0
MEMORY_TARGET_MB = 100.0
WORDS = ("low rank adaptation freezes the pretrained weights and learns a small update to each targeted layer "
         "quick brown fox jumps over lazy dog question answer translate summarise explain why how when where "
         "python function returns list dictionary tensor gradient optimizer schedule warmup epoch").split()


def generate_jsonl(path: Path, size_bytes: int, seed: int = 0) -> Path:
    """Write OpenAI-chat rows (system/user/assistant, 200–900 bytes each) until ``size_bytes`` is reached."""
    if path.exists() and path.stat().st_size >= size_bytes:
        return path
    rng = random.Random(seed)
    written = 0
    with open(path, "w") as out:
        block: list[str] = []
        while written < size_bytes:
            user = " ".join(rng.choices(WORDS, k=rng.randint(8, 60)))
            answer = " ".join(rng.choices(WORDS, k=rng.randint(15, 90)))
            line = json.dumps({"messages": [{"role": "system", "content": "You are a helpful assistant."},
                                            {"role": "user", "content": user},
                                            {"role": "assistant", "content": answer}]}) + "\n"
            block.append(line)
            written += len(line)
            if len(block) >= 5000:
                out.write("".join(block))
                block = []
        out.write("".join(block))
    return path


class MemorySampler(threading.Thread):
    """Samples a process's VmRSS every ``interval`` seconds; keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.max_rss = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.max_rss = max(self.max_rss, read_rss(self.pid)[0])
            time.sleep(self.interval)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.max_rss


class UploadClient:
    """The datasets page's upload script, in Python: one keep-alive connection, session + CSRF."""

    def __init__(self, base_url: str, session_id: str):
        host, port = base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=600)
        csrf = "b" * 32
        self.headers = {"Cookie": f"sessionid={session_id}; csrftoken={csrf}", "X-CSRFToken": csrf,
                        "Referer": base_url + "/datasets/", "Origin": base_url}

    def post(self, path: str, body: bytes, content_type: str) -> dict:
        self.conn.request("POST", path, body=body, headers={**self.headers, "Content-Type": content_type})
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"POST {path}: {response.status} {data[:500]!r}")
        return json.loads(data)

    def upload(self, path: Path) -> dict:
        """Returns the timings: chunks_seconds, finish_seconds, chunks, and the finish answer."""
        size = path.stat().st_size
        started = self.post("/datasets/uploads/", json.dumps({"name": path.name, "size": size, "format": "auto"})
                            .encode(), "application/json")
        chunk_bytes, upload_id = started["chunk_bytes"], started["id"]
        t0 = time.perf_counter()
        offset = chunks = 0
        with open(path, "rb") as fh:
            while offset < size:
                chunk = fh.read(chunk_bytes)
                answer = self.post(f"/datasets/uploads/{upload_id}/chunk?offset={offset}", chunk,
                                   "application/octet-stream")
                offset, chunks = answer["received"], chunks + 1
        t1 = time.perf_counter()
        dataset = self.post(f"/datasets/uploads/{upload_id}/finish", b"{}", "application/json")
        t2 = time.perf_counter()
        return {"chunks_seconds": t1 - t0, "finish_seconds": t2 - t1, "chunks": chunks, "dataset": dataset}


def disk_copy_seconds(source: Path, target_dir: Path) -> float:
    """Copy ``source`` into ``target_dir`` in 4 MiB blocks with an fsync-free write, like the chunk endpoint."""
    target = target_dir / "disk-copy.jsonl"
    t0 = time.perf_counter()
    with open(source, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 4 * MIB)
    seconds = time.perf_counter() - t0
    target.unlink()
    return seconds


def json_loads_seconds(path: Path) -> tuple[float, int]:
    """A bare loop of json.loads over every line: (seconds, rows)."""
    rows = 0
    t0 = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                json.loads(line)
                rows += 1
    return time.perf_counter() - t0, rows


def validate_seconds(path: Path) -> tuple[float, int, bool]:
    from lora_engine.data import validate_file

    t0 = time.perf_counter()
    report = validate_file(path)
    return time.perf_counter() - t0, report.rows, report.ok


def run(args: argparse.Namespace) -> dict:
    stack = prepare("upload", args)
    from tests.support.processes import start_asgi_server, wait_for_http

    path = generate_jsonl(Path(args.file or f"/tmp/lora-bench-upload-{args.size_mb}mb.jsonl"), args.size_mb * MIB)
    size = path.stat().st_size
    results: dict = {"size_bytes": size}
    try:
        # Cold page cache would measure the disk, not the code: read the file once first.
        results["json_loads_seconds"], results["rows"] = json_loads_seconds(path)
        results["json_loads_seconds"] = min(results["json_loads_seconds"], json_loads_seconds(path)[0])
        results["validate_seconds"], validated_rows, ok = validate_seconds(path)
        assert ok and validated_rows == results["rows"], "the generated file must validate"
        results["disk_copy_seconds"] = disk_copy_seconds(path, stack.data_dir)

        user = make_user("bench-upload")
        server, base_url = start_asgi_server(stack.work_dir)
        try:
            client = UploadClient(base_url, session_cookie_for(user))
            wait_for_http(base_url + "/healthz")
            client.post("/datasets/uploads/", json.dumps({"name": "warm.jsonl", "size": 10}).encode(),
                        "application/json")  # imports and first-request work happen before the baseline
            time.sleep(0.5)
            results["rss_before"], _ = read_rss(server.pid)
            sampler = MemorySampler(server.pid)
            sampler.start()
            timings = client.upload(path)
            results["rss_max_sampled"] = sampler.stop()
            results["rss_after"], results["hwm_after"] = read_rss(server.pid)
            results.update({k: v for k, v in timings.items() if k != "dataset"})
            results["dataset_rows"] = timings["dataset"]["rows"]
        finally:
            server.stop()
    finally:
        if not args.keep_file and not args.file:
            path.unlink(missing_ok=True)
        stack.close()
    return results


def summarize(r: dict) -> tuple[list[str], str]:
    size_mb = r["size_bytes"] / MB
    upload_mb_s = size_mb / r["chunks_seconds"]
    end_to_end = size_mb / (r["chunks_seconds"] + r["finish_seconds"])
    disk_mb_s = size_mb / r["disk_copy_seconds"]
    validate_mb_s = size_mb / r["validate_seconds"]
    loads_mb_s = size_mb / r["json_loads_seconds"]
    growth_mb = (max(r["rss_max_sampled"], r["hwm_after"]) - r["rss_before"]) / MB
    lines = [
        f"file: {size_mb:,.0f} MB, {r['rows']:,} rows; server stored {r['dataset_rows']:,} rows",
        f"upload (chunks): {upload_mb_s:8.1f} MB/s  ({r['chunks']} chunks in {r['chunks_seconds']:.1f} s)  "
        f"vs disk copy {disk_mb_s:.1f} MB/s  → ×{upload_mb_s / disk_mb_s:.2f} of the disk",
        f"finish (validate + sha256 + move on the server): {r['finish_seconds']:.1f} s; "
        f"end to end {end_to_end:.1f} MB/s",
        f"validate_file: {validate_mb_s:8.1f} MB/s  vs bare json.loads loop {loads_mb_s:.1f} MB/s  "
        f"→ ×{validate_mb_s / loads_mb_s:.2f}  (target > {VALIDATION_TARGET_MB_S:.0f} MB/s: "
        f"{'met' if validate_mb_s > VALIDATION_TARGET_MB_S else 'MISSED'})",
        f"server memory: {r['rss_before'] / MB:.0f} MB before, max sampled RSS {r['rss_max_sampled'] / MB:.0f} MB, "
        f"VmHWM {r['hwm_after'] / MB:.0f} MB → growth {growth_mb:.1f} MB  (target < {MEMORY_TARGET_MB:.0f} MB: "
        f"{'met' if growth_mb < MEMORY_TARGET_MB else 'MISSED'})",
    ]
    rows = [
        ["upload, 4 MiB chunks over HTTP", f"{upload_mb_s:.1f} MB/s", f"disk copy {disk_mb_s:.1f} MB/s",
         f"×{upload_mb_s / disk_mb_s:.2f}", "—"],
        ["upload incl. finish (validate, sha256, move)", f"{end_to_end:.1f} MB/s", "—", "—", "—"],
        ["`validate_file` alone", f"{validate_mb_s:.1f} MB/s", f"`json.loads` loop {loads_mb_s:.1f} MB/s",
         f"×{validate_mb_s / loads_mb_s:.2f}", f"> 100 MB/s: {verdict(validate_mb_s > VALIDATION_TARGET_MB_S)}"],
        ["web server memory growth (VmHWM / sampled VmRSS − RSS before)", f"{growth_mb:.1f} MB",
         f"RSS before {r['rss_before'] / MB:.0f} MB", "—", f"< 100 MB: {verdict(growth_mb < MEMORY_TARGET_MB)}"],
    ]
    body = "\n\n".join([
        "## Upload (`benchmarks/upload.py`)",
        machine_markdown(),
        f"A {size_mb:,.0f} MB JSONL of {r['rows']:,} OpenAI-chat rows through the datasets page's chunked upload "
        f"({r['chunks']} chunks of 4 MiB on one keep-alive connection, session cookie + CSRF header) to a live "
        "uvicorn server, on the same machine. MB = 10⁶ bytes.",
        table(["measurement", "LoRA Studio", "baseline (same run)", "ratio", "target"], rows, "lrrrl"),
        f"The finish request (validation, sha256 and the move into place, on the server) took "
        f"{r['finish_seconds']:.1f} s.",
    ])
    return lines, body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the generated JSONL in MiB")
    parser.add_argument("--file", default=None, help="upload this JSONL instead of generating one (kept)")
    parser.add_argument("--keep-file", action="store_true", help="keep the generated file in /tmp for reruns")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    print("note: this machine may be shared with other engineers' test runs; numbers are noisy.")
    results = run(args)
    lines, body = summarize(results)
    print("\n".join(lines))
    if not args.no_write:
        print(f"wrote section 'upload' of {write_section('upload', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

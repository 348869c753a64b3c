"""Step end → websocket client latency, with 1, 10 and 100 watchers (a benchmark, not a test).

The path measured is the real one: the worker's recorder (worker.recorder.JobRecorder: the point numbered and
handed to its live pusher → webapp.jobs.events.emit_metrics, while the batched PostgreSQL writes go on beside
it) → channels_redis → uvicorn → ``ws/jobs/<id>/`` →
a websocket client. A second run leaves the recorder out (emit_metrics called directly at step end) to
show what the recorder adds. Each latency is measured from the moment the trainer hands the step
to the recorder (``on_step``) to the moment a client has parsed the point; the clients run in this process,
so both ends read the same clock.

LlamaBoard (LLaMA-Factory's web UI) refreshes its curves by polling every 2 s: a new point waits on average
1 s, and up to 2 s, before the page can show it. The ratios printed compare against those numbers.

Usage (a database with the migrations applied, and Redis):
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/lora_studio_dev REDIS_URL=redis://127.0.0.1:6379/11 \
        python benchmarks/live_latency.py [--steps 150] [--rate 20] [--watchers 1,10,100] [--workers 2]

The clients, the step emitter and the percentiles are tests/support/loadgen.py's (shared with
tests/reliability/test_load.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

import django  # noqa: E402

django.setup()

from tests.support.loadgen import (  # noqa: E402
    StepEmitter,
    arrival_latencies_ms,
    complete,
    open_watchers,
    percentile,
    watch_all,
)
from tests.support.processes import start_asgi_server  # noqa: E402
from webapp.accounts.keys import create_api_key  # noqa: E402
from webapp.jobs.models import Job  # noqa: E402
from webapp.server import worker_count  # noqa: E402

POLL_INTERVAL_MS = 2000.0


def make_job(user) -> Job:
    from webapp.basemodels.models import BaseModel
    from webapp.datasets.models import Dataset

    dataset, _ = Dataset.objects.get_or_create(owner=user, name="bench.jsonl", defaults={"storage_path": "bench"})
    base_model, _ = BaseModel.objects.get_or_create(name="bench-latency-model",
                                                    defaults={"owner": user, "source": "local", "local_path": "/x"})
    return Job.objects.create(owner=user, dataset=dataset, base_model=base_model, config={}, rank=8, alpha=16,
                              suffix=f"latency-{uuid.uuid4().hex[:6]}", total_steps=100_000)


async def measure(base_url: str, key: str, job: Job, watchers: int, steps: int, rate: float,
                  through_recorder: bool) -> tuple[list[float], bool]:
    url = base_url.replace("http://", "ws://") + f"/ws/jobs/{job.id}/?key={key}"
    sockets = await open_watchers(url, base_url, watchers)
    emitter = StepEmitter(job, steps, rate, through_recorder).start()
    arrivals = await watch_all(sockets, steps)
    await asyncio.to_thread(emitter.join)
    return arrival_latencies_ms(arrivals, emitter.step_end), complete(arrivals, steps)


def report(label: str, watchers: int, latencies: list[float], complete: bool) -> list:
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    print(f"{label:<22} {watchers:>4} watchers  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p99 {p99:7.1f} ms  "
          f"mean {statistics.fmean(latencies):7.1f} ms  {'all points' if complete else 'POINTS MISSING'}  "
          f"| vs 2 s polling: p50 {1000 / p50:5.0f}x sooner than its 1 s average wait, "
          f"p95 {POLL_INTERVAL_MS / p95:5.0f}x under one interval, p99 {POLL_INTERVAL_MS / p99:5.0f}x")
    return [label, watchers, f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", "yes" if complete else "**no**",
            f"×{1000 / p50:.0f}", f"×{POLL_INTERVAL_MS / p95:.0f}",
            ("**met**" if p95 < 50 else "**missed**") if watchers == 100 else "—"]


def write_report(rows: list[list], steps: int, rate: float, workers: int) -> None:
    from benchmarks.report import machine_markdown, table, write_section

    body = "\n\n".join([
        "## Live latency (`benchmarks/live_latency.py`)",
        machine_markdown(),
        f"Step end (the trainer's `on_step`) → a websocket client has parsed the point, through uvicorn "
        f"({workers} worker process{'es' if workers > 1 else ''}) and channels_redis pub/sub; {steps} steps at "
        f"{rate:g} steps/s per run; the watchers run in the benchmark's process. Baseline: LlamaBoard's 2 s "
        "polling (a point waits 1 s on average, up to 2 s).",
        table(["path", "watchers", "p50 ms", "p95 ms", "p99 ms", "all points", "p50 vs 1 s average wait",
               "p95 vs 2 s interval", "p95 < 50 ms at 100"], rows, "lrrrrlrrl"),
    ])
    print(f"wrote section 'live-latency' of {write_section('live-latency', body)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps per run")
    parser.add_argument("--rate", type=float, default=20.0, help="steps per second")
    parser.add_argument("--watchers", default="1,10,100", help="comma-separated watcher counts")
    parser.add_argument("--no-recorder", action="store_true", help="only the direct-emitter runs")
    parser.add_argument("--workers", type=int, default=worker_count(),
                        help="uvicorn worker processes (default: WEB_CONCURRENCY, else 1)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    args = parser.parse_args()

    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-latency")
    key = create_api_key(user, name="latency benchmark")[1]
    modes = [("emitter only", False)]
    if not args.no_recorder:
        try:
            import worker.recorder  # noqa: F401

            modes.insert(0, ("recorder + emitter", True))
        except ImportError:
            print("worker.recorder is not available: measuring the emitter path only")
    with tempfile.TemporaryDirectory() as tmp:
        server, base_url = start_asgi_server(Path(tmp), workers=args.workers,
                                             DJANGO_SETTINGS_MODULE=os.environ["DJANGO_SETTINGS_MODULE"])
        try:
            print(f"uvicorn at {base_url} ({args.workers} worker processes); {args.steps} steps at "
                  f"{args.rate:g} steps/s per run; channels_redis at {os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0')}")
            rows = []
            for label, through_recorder in modes:
                for watchers in (int(w) for w in args.watchers.split(",")):
                    job = make_job(user)
                    latencies, all_points = asyncio.run(
                        measure(base_url, key, job, watchers, args.steps, args.rate, through_recorder))
                    rows.append(report(label, watchers, latencies, all_points))
        finally:
            server.stop()
    if not args.no_write:
        write_report(rows, args.steps, args.rate, args.workers)


if __name__ == "__main__":
    main()

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
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/lora_studio_dev REDIS_URL=redis://127.0.0.1:6379/0 \
        python benchmarks/live_latency.py [--steps 150] [--rate 20] [--watchers 1,10,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402

from lora_engine.callbacks import RunInfo, StepMetrics  # noqa: E402
from tests.support.processes import start_asgi_server  # noqa: E402
from webapp.accounts.keys import create_api_key  # noqa: E402
from webapp.jobs import events  # noqa: E402
from webapp.jobs.models import Job  # noqa: E402

POLL_INTERVAL_MS = 2000.0
CONCURRENT_HANDSHAKES = 10


def make_job(user) -> Job:
    from webapp.basemodels.models import BaseModel
    from webapp.datasets.models import Dataset

    dataset, _ = Dataset.objects.get_or_create(owner=user, name="bench.jsonl", defaults={"storage_path": "bench"})
    base_model, _ = BaseModel.objects.get_or_create(name="bench-latency-model",
                                                    defaults={"owner": user, "source": "local", "local_path": "/x"})
    return Job.objects.create(owner=user, dataset=dataset, base_model=base_model, config={}, rank=8, alpha=16,
                              suffix=f"latency-{uuid.uuid4().hex[:6]}", total_steps=100_000)


def step_record(step: int, total: int) -> StepMetrics:
    return StepMetrics(step=step, total_steps=total, epoch=step / total, loss=2.0 / step ** 0.1, learning_rate=2e-4,
                       grad_norm=1.0, tokens_seen=step * 512, tokens_per_second=10_000.0, elapsed_seconds=step * 0.05,
                       eta_seconds=(total - step) * 0.05, memory_allocated_bytes=1 << 30, memory_peak_bytes=1 << 31)


class Producer:
    """Ends a 'training step' every 1/rate seconds and hands it to the recorder (or straight to the emitter)."""

    def __init__(self, job: Job, steps: int, rate: float, through_recorder: bool):
        self.job, self.steps, self.rate, self.through_recorder = job, steps, rate, through_recorder
        self.step_end: dict[int, float] = {}

    def run(self) -> None:
        recorder = None
        if self.through_recorder:
            from webapp.jobs.leases import claim_job, new_lease_owner
            from worker.recorder import JobRecorder

            lease = claim_job(self.job.id, new_lease_owner())
            recorder = JobRecorder(lease).start()
            recorder.on_train_start(RunInfo(total_steps=self.steps, start_step=0, trainable_params=1, total_params=1,
                                            adapter_bytes=1, train_rows=1, eval_rows=0, device="cpu"))
        interval = 1.0 / self.rate
        next_at = time.perf_counter()
        for step in range(1, self.steps + 1):
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))
            self.step_end[step] = time.perf_counter()
            if recorder is not None:
                recorder.on_step(step_record(step, self.steps))
            else:
                values = step_record(step, self.steps).to_dict()
                events.emit_metrics(self.job.id, [{"seq": step, "step": step, "split": "train", "values": values}])
        if recorder is not None:
            recorder.close()


async def watcher(url: str, origin: str, steps: int, ready: asyncio.Event, arrivals: list[tuple[int, float]],
                  connected: list[int], handshakes: asyncio.Semaphore) -> None:
    async with handshakes:
        socket = await websockets.connect(url, origin=origin, max_size=None, open_timeout=30)
        json.loads(await socket.recv())  # the state sent on connect: the socket has joined the group
    connected.append(1)
    try:
        await ready.wait()
        seen = 0
        while seen < steps:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout=30))
            now = time.perf_counter()
            if message.get("type") == "points":
                for point in message["points"]:
                    if point["split"] == "train":
                        arrivals.append((point["step"], now))
                        seen += 1
    finally:
        await socket.close()


async def measure(base_url: str, key: str, job: Job, watchers: int, steps: int, rate: float,
                  through_recorder: bool) -> tuple[list[float], bool]:
    url = base_url.replace("http://", "ws://") + f"/ws/jobs/{job.id}/?key={key}"
    arrivals: list[tuple[int, float]] = []
    connected: list[int] = []
    ready = asyncio.Event()
    # daphne drops a socket its application has not accepted within 5 s; on a loaded 2-core box 100 handshakes
    # at once (each authenticating against the database) take longer than that, so they go in waves
    handshakes = asyncio.Semaphore(CONCURRENT_HANDSHAKES)
    tasks = [asyncio.create_task(watcher(url, base_url, steps, ready, arrivals, connected, handshakes))
             for _ in range(watchers)]
    while len(connected) < watchers:
        await asyncio.sleep(0.05)
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()
    ready.set()
    producer = Producer(job, steps, rate, through_recorder)
    thread = threading.Thread(target=producer.run, daemon=True)
    thread.start()
    await asyncio.gather(*tasks)
    thread.join()
    latencies = sorted((arrived - producer.step_end[step]) * 1000 for step, arrived in arrivals)
    return latencies, len(arrivals) == watchers * steps


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def report(label: str, watchers: int, latencies: list[float], complete: bool) -> list:
    p50, p95, p99 = (percentile(latencies, q) for q in (50, 95, 99))
    print(f"{label:<22} {watchers:>4} watchers  p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p99 {p99:7.1f} ms  "
          f"mean {statistics.fmean(latencies):7.1f} ms  {'all points' if complete else 'POINTS MISSING'}  "
          f"| vs 2 s polling: p50 {1000 / p50:5.0f}x sooner than its 1 s average wait, "
          f"p95 {POLL_INTERVAL_MS / p95:5.0f}x under one interval, p99 {POLL_INTERVAL_MS / p99:5.0f}x")
    return [label, watchers, f"{p50:.1f}", f"{p95:.1f}", f"{p99:.1f}", "yes" if complete else "**no**",
            f"×{1000 / p50:.0f}", f"×{POLL_INTERVAL_MS / p95:.0f}",
            ("**met**" if p95 < 50 else "**missed**") if watchers == 100 else "—"]


def write_report(rows: list[list], steps: int, rate: float) -> None:
    from benchmarks.report import machine_markdown, table, write_section

    body = "\n\n".join([
        "## Live latency (`benchmarks/live_latency.py`)",
        machine_markdown(),
        f"Step end (the trainer's `on_step`) → a websocket client has parsed the point, through uvicorn and "
        f"channels_redis; {steps} steps at {rate:g} steps/s per run. Baseline: LlamaBoard's 2 s polling (a point "
        "waits 1 s on average, up to 2 s).",
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
        server, base_url = start_asgi_server(Path(tmp), DJANGO_SETTINGS_MODULE=os.environ["DJANGO_SETTINGS_MODULE"])
        try:
            print(f"uvicorn at {base_url}; {args.steps} steps at {args.rate:g} steps/s per run; "
                  f"channels_redis at {os.environ.get('REDIS_URL', 'redis://127.0.0.1:6379/0')}")
            rows = []
            for label, through_recorder in modes:
                for watchers in (int(w) for w in args.watchers.split(",")):
                    job = make_job(user)
                    latencies, complete = asyncio.run(
                        measure(base_url, key, job, watchers, args.steps, args.rate, through_recorder))
                    rows.append(report(label, watchers, latencies, complete))
        finally:
            server.stop()
    if not args.no_write:
        write_report(rows, args.steps, args.rate)


if __name__ == "__main__":
    main()

"""The web server under load: 200 pages watching one running job while 50 API clients list and read jobs.

The real stack: uvicorn (two worker processes) on the test database in PostgreSQL, Redis pub/sub for the live
pushes, and a job whose steps go through the worker's recorder (claimed with a lease, pushed live, stored in
batches; tests/support/loadgen.StepEmitter), with no model to train so the two cores go to the web side.
Nothing may be lost or refused: every watcher gets every step exactly once and every request answers 200.
The latencies (p50/p95/p99) are recorded for scripts/reliability_report.py's "Load" section; they are not
asserted (the machine is shared), the issues' targets are printed beside them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import pytest

from tests.support.loadgen import (
    StepEmitter,
    arrival_latencies_ms,
    closed_loop,
    open_watchers,
    percentile,
    watch_all,
)
from tests.support.processes import start_asgi_server
from webapp.api.ids import job_id as api_job_id
from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.jobs.models import Job

from . import results

pytestmark = [pytest.mark.stack, pytest.mark.slow]

WATCHERS = 200
API_CLIENTS = 50
STEPS = 100
STEPS_PER_SECOND = 10.0
SERVER_WORKERS = 2
FINISHED_JOBS = 300
LIVE_TARGET_P95_MS = 50.0
API_TARGET_P95_MS = 100.0


def make_jobs(owner) -> Job:
    """``FINISHED_JOBS`` finished jobs to list, and the queued job the emitter will run."""
    dataset = Dataset.objects.create(owner=owner, name="load.jsonl", storage_path="datasets/load.jsonl", rows=100)
    base_model = BaseModel.objects.create(owner=owner, name="load-model", source="local", local_path="/x")
    config = {"lora": {"rank": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"]}}
    Job.objects.bulk_create([
        Job(owner=owner, dataset=dataset, base_model=base_model, config=config, rank=8, alpha=16, state="succeeded",
            suffix=f"done-{i}", total_steps=50, current_step=50, progress=1.0) for i in range(FINISHED_JOBS)])
    return Job.objects.create(owner=owner, dataset=dataset, base_model=base_model, config=config, rank=8, alpha=16,
                              suffix=f"live-{uuid.uuid4().hex[:6]}", total_steps=STEPS)


async def under_load(base_url: str, key: str, job: Job, paths: list[str]):
    """Watchers connect; the API clients start; the job emits its steps; both end when the last point is in."""
    ws_url = base_url.replace("http://", "ws://") + f"/ws/jobs/{job.id}/?key={key}"
    started = time.perf_counter()
    sockets = await open_watchers(ws_url, base_url, WATCHERS, concurrent_handshakes=20)
    connect_seconds = time.perf_counter() - started
    stop = asyncio.Event()
    api = asyncio.create_task(closed_loop(base_url, paths, API_CLIENTS, seconds=300,
                                          headers={"Authorization": f"Bearer {key}"}, stop=stop))
    emitter = StepEmitter(job, STEPS, STEPS_PER_SECOND).start()
    try:
        arrivals = await watch_all(sockets, STEPS, timeout=30)
    finally:
        stop.set()
        api_result = await api
        await asyncio.to_thread(emitter.join)
    return arrivals, emitter.step_end, api_result, connect_seconds


def test_200_watchers_and_50_api_clients_lose_nothing(transactional_db, owner, owner_key, tmp_path):
    job = make_jobs(owner)
    paths = ["/v1/fine_tuning/jobs?limit=20", f"/v1/fine_tuning/jobs/{api_job_id(job.id)}",
             f"/api/jobs/{job.id}/metrics?max_points=500"]
    server, base_url = start_asgi_server(tmp_path, workers=SERVER_WORKERS)
    wall = time.perf_counter()
    try:
        arrivals, step_end, api, connect_seconds = asyncio.run(under_load(base_url, owner_key, job, paths))
    finally:
        server.stop()
    wall = time.perf_counter() - wall

    live = arrival_latencies_ms(arrivals, step_end)
    short = [(i, len(watcher)) for i, watcher in enumerate(arrivals) if len(watcher) != STEPS]
    results.set_meta("load", watchers=WATCHERS, api_clients=API_CLIENTS, steps=STEPS, rate=STEPS_PER_SECOND,
                     server_workers=SERVER_WORKERS, cores=os.cpu_count(), seconds=round(wall, 1),
                     watchers_connect_seconds=round(connect_seconds, 1), live_target_p95_ms=LIVE_TARGET_P95_MS,
                     api_target_p95_ms=API_TARGET_P95_MS)
    results.record("load", what=f"live points, step end → {WATCHERS} watchers", count=len(live),
                   p50_ms=round(percentile(live, 50), 1), p95_ms=round(percentile(live, 95), 1),
                   p99_ms=round(percentile(live, 99), 1), errors=len(short), target_p95_ms=LIVE_TARGET_P95_MS)
    for path in paths:
        one = api.for_path(path)
        results.record("load", what=f"`GET {path.replace(str(job.id), '<id>').replace(job.id.hex, '<id>')}`",
                       count=one.requests, p50_ms=round(one.p50, 1), p95_ms=round(one.p95, 1),
                       p99_ms=round(one.p99, 1), errors=len(one.failures), target_p95_ms=API_TARGET_P95_MS,
                       rps=round(one.rps, 1))

    assert not short, f"watchers missing points (watcher, points got of {STEPS}): {short[:10]}"
    for watcher in arrivals:
        assert [step for step, _ in watcher] == list(range(1, STEPS + 1))  # each step once, in order
    assert not api.failures, api.failures[:10]
    assert all(api.for_path(path).requests >= API_CLIENTS for path in paths), \
        {path: api.for_path(path).requests for path in paths}

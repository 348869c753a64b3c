"""The dashboard's read API under load, on a big database (a benchmark, not a test).

The database holds ``--jobs`` jobs (default 10,000) of one user and ``--points`` metric points (default
1,000,000; ``--full`` for the issue's 10,000,000), bulk-generated in PostgreSQL with ``generate_series``:
one job has ``--big-job-points`` (default 100,000) train points plus an eval point every 500 steps, the
others share the rest. Then, against a live uvicorn server with an API key:

- jobs list: ``GET /v1/fine_tuning/jobs?limit=20`` (the newest page of the user's 10,000 jobs);
- a job's metrics for drawing: ``GET /api/jobs/<big job>/metrics?max_points=1000`` (100k points thinned).

Each request is run by 1 client (the baseline: service time alone) and by 50 concurrent clients on their own
keep-alive connections, each sending its next request as soon as the last one answered (closed loop, the
worst case); latency percentiles and throughput for both, and the ratio. Target: p95 under 100 ms with 50.

Usage (PostgreSQL and Redis running; a throwaway database is created and dropped):
    python benchmarks/api_load.py [--points 1000000 | --full] [--clients 50] [--seconds 15]
    python benchmarks/api_load.py --database lora_bench_api_full --full   # keep the generated data for reruns
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import machine_markdown, table, verdict, write_section  # noqa: E402
from tests.support.loadgen import closed_loop  # noqa: E402

TARGET_P95_MS = 100.0
EVAL_EVERY = 500


# ---------------------------------------------------------------------------------------------------------
# The data


def _step_values(step: str, total: str) -> str:
    """SQL for one step's values, shaped like the recorder's (StepMetrics.to_dict() + attempt)."""
    return (f"jsonb_build_object('epoch', {step}::float / {total}, 'loss', 2.5 / (1 + {step} / 1000.0) "
            f"+ 0.05 * random(), 'learning_rate', 2e-4, 'grad_norm', 0.5 + random(), 'tokens_seen', {step} * 2048, "
            f"'tokens_per_second', 9000 + 500 * random(), 'elapsed_seconds', {step} * 0.2, 'eta_seconds', "
            f"({total} - {step}) * 0.2, 'memory_allocated_bytes', 3000000000, 'memory_peak_bytes', 4000000000, "
            f"'total_steps', {total}, 'attempt', 1)")


def generate(jobs: int, points: int, big_points: int) -> str:
    """Fill the database (in one transaction); returns the big job's id."""
    from django.db import transaction

    with transaction.atomic():  # all or nothing: a kept database is either complete or empty
        return _generate(jobs, points, big_points)


def _generate(jobs: int, points: int, big_points: int) -> str:
    from django.db import connection

    from benchmarks.stack import make_user
    from webapp.basemodels.models import BaseModel
    from webapp.datasets.models import Dataset
    from webapp.jobs.models import Job, MetricPoint

    user = make_user("bench-api")
    dataset = Dataset.objects.create(owner=user, name="big.jsonl", storage_path="datasets/big.jsonl", rows=10000)
    base_model = BaseModel.objects.create(owner=user, name="bench-api-model", source="local", local_path="/x")
    config = {"model": "/x", "lora": {"rank": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"]}}
    big = Job.objects.create(owner=user, dataset=dataset, base_model=base_model, config=config, rank=8, alpha=16,
                             suffix="big", state="succeeded", current_step=big_points, total_steps=big_points,
                             progress=1.0, last_seq=big_points + big_points // EVAL_EVERY)
    job_table, point_table = Job._meta.db_table, MetricPoint._meta.db_table
    columns = [f.column for f in Job._meta.concrete_fields]
    overrides = {"id": "gen_random_uuid()", "suffix": "'job-' || s", "created_at": "now() - s * interval '1 minute'",
                 "state": "(ARRAY['succeeded','failed','cancelled','succeeded'])[1 + s %% 4]"}
    select = ", ".join(overrides.get(c, f't."{c}"') for c in columns)
    per_job = max(1, (points - big_points) // max(1, jobs - 1))
    with connection.cursor() as cursor:
        cursor.execute(f'INSERT INTO {job_table} ({", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)}) '
                       f"SELECT {select} FROM {job_table} t, generate_series(1, %s) s WHERE t.id = %s",
                       [jobs - 1, big.id])
        cursor.execute(f"UPDATE {job_table} SET current_step = %s, total_steps = %s, last_seq = %s "
                       f"WHERE id <> %s", [per_job, per_job, per_job, big.id])
        cursor.execute(f'INSERT INTO {point_table} (job_id, step, split, seq, "values", created_at) '
                       f"SELECT %s, s, 'train', s + (s - 1) / {EVAL_EVERY}, {_step_values('s', str(big_points))}, "
                       f"now() FROM generate_series(1, %s) s", [big.id, big_points])
        cursor.execute(f'INSERT INTO {point_table} (job_id, step, split, seq, "values", created_at) '
                       f"SELECT %s, s * {EVAL_EVERY}, 'eval', s * {EVAL_EVERY} + s, jsonb_build_object('eval_loss', "
                       f"2.6 / (1 + s / 2.0), 'perplexity', exp(2.6 / (1 + s / 2.0)), 'tokens_seen', s * 1024000, "
                       f"'attempt', 1), now() FROM generate_series(1, %s) s", [big.id, big_points // EVAL_EVERY])
        cursor.execute(f'INSERT INTO {point_table} (job_id, step, split, seq, "values", created_at) '
                       f"SELECT j.id, s, 'train', s, {_step_values('s', str(per_job))}, now() "
                       f"FROM {job_table} j, generate_series(1, %s) s WHERE j.id <> %s", [per_job, big.id])
    return str(big.id)


def analyze() -> None:
    from django.db import connection

    from webapp.jobs.models import Job, MetricPoint

    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Job._meta.db_table}")
        cursor.execute(f"VACUUM ANALYZE {MetricPoint._meta.db_table}")


def existing_data(big_points: int) -> str | None:
    """The big job of an earlier run on a kept database (``--database``), if its data is there."""
    from webapp.jobs.models import Job

    big = Job.objects.filter(suffix="big", owner__username="bench-api").first()
    return str(big.id) if big is not None and big.current_step == big_points else None


def counts() -> tuple[int, int]:
    from django.db import connection

    from webapp.jobs.models import Job, MetricPoint

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {MetricPoint._meta.db_table}")
        points = cursor.fetchone()[0]
    return Job.objects.count(), points


# ---------------------------------------------------------------------------------------------------------
# The load


async def load(base_url: str, key: str, path: str, clients: int, seconds: float) -> dict:
    """``clients`` closed-loop clients for ``seconds`` (tests/support/loadgen.py): latencies, throughput, failures."""
    outcome = await closed_loop(base_url, [path], clients, seconds, headers={"Authorization": f"Bearer {key}"})
    return {"clients": clients, "requests": outcome.requests, "rps": outcome.rps, "p50": outcome.p50,
            "p95": outcome.p95, "p99": outcome.p99, "failures": len(outcome.failures)}


def check_answers(base_url: str, key: str, paths: dict[str, str], big_points: int) -> dict[str, float]:
    """Each endpoint answers 200 with what a page needs; returns the response sizes and first-request times
    (for the metrics, the uncached read of the whole history)."""
    import urllib.request

    sizes = {}
    for name, path in paths.items():
        request = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {key}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
        sizes[f"{name} cold ms"] = (time.perf_counter() - t0) * 1000
        data = json.loads(body)
        if name == "metrics":
            assert data["total_points"] >= big_points and data["downsampled"], data.get("total_points")
        else:
            assert len(data["data"]) == 20 and data["has_more"]
        sizes[name] = len(body)
    return sizes


# ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    from benchmarks.stack import prepare

    stack = prepare("api", args)
    from benchmarks.stack import make_user
    from tests.support.processes import start_asgi_server
    from webapp.accounts.keys import create_api_key

    try:
        t0 = time.perf_counter()
        big_id = existing_data(args.big_job_points) if args.database else None
        generated = big_id is None
        if generated:
            print(f"generating {args.jobs:,} jobs and {args.points:,} metric points ...", flush=True)
            big_id = generate(args.jobs, args.points, args.big_job_points)
            analyze()
        jobs, points = counts()
        setup_seconds = time.perf_counter() - t0
        print(f"database: {jobs:,} jobs, {points:,} metric points ({'generated' if generated else 'reused'} in "
              f"{setup_seconds:.0f} s)", flush=True)
        key = create_api_key(make_user("bench-api"), name="api load benchmark")[1]
        paths = {"jobs list": "/v1/fine_tuning/jobs?limit=20",
                 "metrics": f"/api/jobs/{big_id}/metrics?max_points={args.max_points}"}
        server, base_url = start_asgi_server(stack.work_dir, workers=args.workers,
                                             DB_CONN_MAX_AGE=str(args.conn_max_age), DB_POOL_SIZE=str(args.pool_size),
                                             WEB_REQUEST_SLOTS=str(args.request_slots))
        results: dict = {"jobs": jobs, "points": points, "paths": paths, "runs": {}}
        try:
            results["sizes"] = check_answers(base_url, key, paths, args.big_job_points)
            for name, path in paths.items():
                for clients in (1, args.clients):
                    outcome = asyncio.run(load(base_url, key, path, clients, args.seconds))
                    results["runs"][(name, clients)] = outcome
                    print(f"{name:<10} {clients:>3} clients: p50 {outcome['p50']:7.1f} ms  p95 {outcome['p95']:7.1f} ms"
                          f"  p99 {outcome['p99']:7.1f} ms  {outcome['rps']:6.1f} req/s  "
                          f"({outcome['requests']} requests, {outcome['failures']} failed)", flush=True)
        finally:
            server.stop()
    finally:
        stack.close()
    return results


def summarize(r: dict, args: argparse.Namespace) -> tuple[list[str], str]:
    rows, lines = [], []
    for name in r["paths"]:
        one, many = r["runs"][(name, 1)], r["runs"][(name, args.clients)]
        ok = many["p95"] < TARGET_P95_MS and many["failures"] == 0
        lines.append(f"{name}: p95 ×{many['p95'] / one['p95']:.1f} with {args.clients} clients vs 1; throughput "
                     f"×{many['rps'] / one['rps']:.2f}; target p95 < {TARGET_P95_MS:.0f} ms: "
                     f"{'met' if ok else 'MISSED'}")
        for run in (one, many):
            rows.append([f"`{r['paths'][name]}`" if run is one else "″", run["clients"], f"{run['p50']:.1f}",
                         f"{run['p95']:.1f}", f"{run['p99']:.1f}", f"{run['rps']:.1f}", run["failures"],
                         "baseline" if run is one else f"p95 ×{many['p95'] / one['p95']:.1f}, "
                                                       f"req/s ×{many['rps'] / one['rps']:.2f}",
                         "—" if run is one else verdict(ok)])
    body = "\n\n".join([
        "## API under load (`benchmarks/api_load.py`)",
        machine_markdown(),
        f"PostgreSQL holding {r['jobs']:,} jobs (one user's) and {r['points']:,} metric points; the big job has "
        f"{args.big_job_points:,} train points and one eval point per {EVAL_EVERY} steps. "
        f"uvicorn with {args.workers} worker process{'es' if args.workers > 1 else ''}, "
        f"API-key auth. Each client is a keep-alive connection sending its next request as soon as the last one "
        f"answered (closed loop), for {args.seconds:g} s; the 1-client run is the baseline (service time alone). "
        f"DB_POOL_SIZE={args.pool_size} and WEB_REQUEST_SLOTS={args.request_slots} per process"
        f"{'' if args.pool_size else f', DB_CONN_MAX_AGE={args.conn_max_age}'}. "
        f"Response sizes: jobs list {r['sizes']['jobs list'] / 1000:.1f} kB, "
        f"metrics {r['sizes']['metrics'] / 1000:.1f} kB (max_points={args.max_points}).",
        table(["request", "clients", "p50 ms", "p95 ms", "p99 ms", "req/s", "errors", f"{args.clients} vs 1",
               "p95 < 100 ms"], rows, "lrrrrrrrl"),
        f"The first metrics request (nothing cached: the whole history read and thinned) took "
        f"{r['sizes']['metrics cold ms']:.0f} ms; later requests for the same history are served from the "
        f"per-process cache keyed by the job's last_seq (`webapp/jobs/metrics_query.py`; one read per history "
        f"per process, concurrent requests for it wait for that read). The first jobs-list "
        f"request took {r['sizes']['jobs list cold ms']:.0f} ms. Both answers are then kept encoded by each "
        f"process and sent again only after one query per request finds the rows they were made from unchanged "
        f"(PostgreSQL xmin; `webapp/lib/kept_answers.py`): the data here does not change during the runs, so "
        f"these figures are the unchanged-page case. Django's sync middleware and views run in one thread hop "
        f"per request (`webapp/lib/asgi_handler.py`).",
    ])
    return lines, body


def main(argv: list[str] | None = None) -> int:
    from benchmarks.stack import add_stack_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=1_000_000, help="metric points in the whole database")
    parser.add_argument("--full", action="store_true", help="the issue's scale: 10,000,000 metric points")
    parser.add_argument("--big-job-points", type=int, default=100_000, help="train points of the job drawn")
    parser.add_argument("--max-points", type=int, default=1000, help="max_points asked for the chart")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--workers", type=int, default=None,
                        help="uvicorn worker processes (default: WEB_CONCURRENCY, else 1)")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of each load run")
    parser.add_argument("--conn-max-age", type=int, default=0,
                        help="DB_CONN_MAX_AGE for the web server (0, the default install; with DB_POOL_SIZE "
                             "the pool, not this, keeps connections)")
    parser.add_argument("--pool-size", type=int, default=10,
                        help="DB_POOL_SIZE: PostgreSQL connections pooled per web process (0: no pool)")
    parser.add_argument("--request-slots", type=int, default=4,
                        help="WEB_REQUEST_SLOTS: GETs inside Django at once per web process (0: no limit)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if args.full:
        args.points = 10_000_000
    from webapp.server import worker_count

    args.workers = worker_count(args.workers)
    print("note: this machine may be shared with other engineers' test runs; numbers are noisy.")
    results = run(args)
    lines, body = summarize(results, args)
    print("\n".join(lines))
    if not args.no_write:
        print(f"wrote section 'api-load' of {write_section('api-load', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

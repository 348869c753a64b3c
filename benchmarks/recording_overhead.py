"""What live recording costs: training through a real Celery worker against the bare engine (a benchmark).

Worker side: a job created with ``webapp.jobs.actions.create_job`` runs in a real Celery worker process
(``worker.tasks.train``: lease, heartbeat, and the recorder writing every step to PostgreSQL in batches and
pushing it through Redis). Bare side: ``lora_engine.train(config)`` with no callbacks on the very same
RunConfig (the job's own, pointed at another output directory), in a long-lived runner process of its own.

Both sides report the engine's ``TrainResult`` (tokens seen ÷ the training loop's wall time, read from the
``metrics.json`` the trainer writes), so the comparison is the loop with and without recording. The sides
alternate, each warmed up once untimed; the median tokens/s of each is compared. Target: the worker side
under 3% slower. The two sides must reach the same final loss (same seed, same data): a check that they did
the same work.

torch runs one intra-op thread on both sides by default (``--threads``): on a CPU box shared with other
processes, OpenMP's spinning threads make a 2-thread run up to 15× slower and the noise swamps the signal.

Usage (PostgreSQL and Redis running; a throwaway database is created and dropped):
    python benchmarks/recording_overhead.py [--repeats 5] [--steps 120] [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import machine_markdown, median, table, verdict, write_section  # noqa: E402

TARGET_OVERHEAD = 0.03
WORDS = ("low rank adaptation freezes the pretrained weights and learns a small update quick brown fox jumps over "
         "the lazy dog question answer").split()


def job_settings(args: argparse.Namespace) -> dict:
    return {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": "q_proj,v_proj", "batch_size": args.batch_size,
            "max_seq_len": args.seq_len, "max_steps": args.steps, "save_every": 0, "eval_fraction": 0.0,
            "learning_rate": 2e-4, "warmup_steps": 0, "seed": 0}


def bare_runner() -> int:
    """The bare side's process: one RunConfig (JSON) per stdin line → one TrainResult summary per stdout line."""
    import lora_engine
    from lora_engine.config import RunConfig

    for line in sys.stdin:
        config = RunConfig.from_dict(json.loads(line))
        result = lora_engine.train(config)
        print(json.dumps({"tokens_seen": result.tokens_seen, "elapsed_seconds": result.elapsed_seconds,
                          "steps": result.steps, "final_loss": result.final_loss}), flush=True)
    return 0


class BareSide:
    def __init__(self, env: dict, log_path: Path):
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, __file__, "--bare-runner"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)

    def run(self, config) -> dict:
        self.proc.stdin.write(json.dumps(config.to_dict()) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bare runner died: see {self._log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self._log.close()


class WorkerSide:
    def __init__(self, stack, user, dataset, base_model, settings: dict, threads: int):
        from tests.support.processes import start_worker
        from tests.support.workers import purge_queues, wait_for_worker

        purge_queues()
        self.user, self.dataset, self.base_model, self.settings = user, dataset, base_model, settings
        self.proc = wait_for_worker(start_worker(stack.work_dir, name="bench-overhead",
                                                 OMP_NUM_THREADS=str(threads), LOG_LEVEL="WARNING"))
        self.runs = 0

    def run(self) -> tuple[dict, object]:
        from webapp.jobs.actions import create_job
        from webapp.jobs.models import Job

        self.runs += 1
        job = create_job(self.user, self.dataset, self.base_model, self.settings, suffix=f"overhead-{self.runs}")
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.is_terminal:
                break
            if not self.proc.alive():
                raise RuntimeError(f"the worker died:\n{self.proc.log()[-3000:]}")
            time.sleep(0.2)
        if job.state != Job.State.SUCCEEDED:
            raise RuntimeError(f"job {job.id} ended {job.state}: {job.error_message}\n{self.proc.log()[-3000:]}")
        result = json.loads((Path(job.output_dir) / "metrics.json").read_text())
        recorded = job.metrics.filter(split="train").count()
        if recorded != result["steps"]:
            raise RuntimeError(f"job {job.id}: {recorded} train points recorded for {result['steps']} steps")
        return result, job

    def close(self) -> None:
        self.proc.stop()


def make_inputs(stack, args: argparse.Namespace):
    """A tiny Llama (saved as a local model) and a JSONL of text rows, registered as the job's inputs."""
    from benchmarks.stack import make_user
    from lora_engine.tiny import save_tiny_model
    from webapp.basemodels.actions import register_local_model
    from webapp.datasets.actions import create_dataset

    user = make_user("bench-overhead")
    model_dir = save_tiny_model(stack.work_dir / "tiny-llama", arch="llama", hidden_size=args.hidden_size,
                                layers=args.layers, heads=4, vocab_size=512)
    rng = random.Random(0)
    rows = [json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(40, 80)))}) for _ in range(600)]
    dataset = create_dataset(user, "overhead.jsonl", ["\n".join(rows).encode() + b"\n"])
    base_model = register_local_model(user, f"bench-tiny-llama-{os.getpid()}", str(model_dir))
    return user, dataset, base_model


def run(args: argparse.Namespace) -> dict:
    from benchmarks.stack import prepare

    stack = prepare("overhead", args)
    from webapp.jobs.configs import build_run_config

    bare = worker = None
    try:
        user, dataset, base_model = make_inputs(stack, args)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
        bare = BareSide(env, stack.work_dir / "bare-runner.log")
        worker = WorkerSide(stack, user, dataset, base_model, job_settings(args), args.threads)
        runs: dict[str, list[dict]] = {"bare": [], "worker": []}
        config = None
        for i in range(args.repeats + 1):  # run 0 warms both sides up and is not counted
            order = ("worker", "bare") if i % 2 == 0 else ("bare", "worker")  # the job's config comes first
            for side in order:
                if side == "worker":
                    result, job = worker.run()
                    config = build_run_config(job)
                else:
                    bare_config = dataclasses.replace(config, output_dir=str(stack.work_dir / f"bare-{i}"),
                                                      resume=False)
                    result = bare.run(bare_config)
                result["tokens_per_second"] = result["tokens_seen"] / result["elapsed_seconds"]
                if i > 0:
                    runs[side].append(result)
                print(f"  run {i}{' (warm-up)' if i == 0 else ''} {side:<6} {result['tokens_per_second']:8.0f} tok/s "
                      f"{result['steps']} steps in {result['elapsed_seconds']:.2f} s, final loss "
                      f"{result['final_loss']:.4f}", flush=True)
        return {"runs": runs, "config": config.to_dict()}
    finally:
        if bare is not None:
            bare.close()
        if worker is not None:
            worker.close()
        stack.close()


def _runs(results: list[dict]) -> str:
    return ", ".join(f"{r['tokens_per_second']:.0f}" for r in results)


def summarize(report: dict, args: argparse.Namespace) -> tuple[list[str], str]:
    from worker.recorder import WRITE_EVERY_SECONDS

    runs = report["runs"]
    bare_tps = median([r["tokens_per_second"] for r in runs["bare"]])
    worker_tps = median([r["tokens_per_second"] for r in runs["worker"]])
    ratio = worker_tps / bare_tps
    overhead = 1 - ratio
    best_ratio = max(r["tokens_per_second"] for r in runs["worker"]) / max(r["tokens_per_second"] for r in runs["bare"])
    spread = (max(r["tokens_per_second"] for r in runs["bare"]) - min(r["tokens_per_second"] for r in runs["bare"])) \
        / bare_tps
    same_loss = {round(r["final_loss"], 5) for side in runs.values() for r in side}
    step_ms = median([r["elapsed_seconds"] / r["steps"] * 1000 for r in runs["bare"]])
    ok = overhead < TARGET_OVERHEAD
    lines = [
        f"bare engine  median {bare_tps:8.0f} tok/s  (runs: {_runs(runs['bare'])})",
        f"Celery+rec.  median {worker_tps:8.0f} tok/s  (runs: {_runs(runs['worker'])})",
        f"worker ÷ bare = ×{ratio:.3f}: {100 * overhead:+.1f}% slower  (target < 3%: {'met' if ok else 'MISSED'}); "
        f"final losses {'identical' if len(same_loss) == 1 else 'DIFFER: ' + str(sorted(same_loss))}",
        f"best run ÷ best run = ×{best_ratio:.3f} ({100 * (1 - best_ratio):+.1f}%); the bare side's own run-to-run "
        f"spread is {100 * spread:.0f}% of its median (machine load)",
    ]
    rows = [["bare `lora_engine.train(config)`, no callbacks", f"{bare_tps:.0f}",
             _runs(runs["bare"]), "×1.000"],
            ["Celery worker + `JobRecorder` (PostgreSQL + Redis)", f"{worker_tps:.0f}",
             _runs(runs["worker"]), f"×{ratio:.3f}"]]
    body = "\n\n".join([
        "## Recording overhead (`benchmarks/recording_overhead.py`)",
        machine_markdown(),
        f"A Llama of hidden size {args.hidden_size} × {args.layers} layers (vocab 512), LoRA rank 8 on q_proj,v_proj, "
        f"micro-batch {args.batch_size} × up to {args.seq_len} tokens, {args.steps} AdamW steps "
        f"(≈{step_ms:.0f} ms each; the recorder pushes every step live and writes the database every "
        f"{WRITE_EVERY_SECONDS:g} s), "
        f"{args.threads} torch thread(s) per side; {args.repeats} timed runs per side, alternating, after one "
        "untimed warm-up each. Tokens/s = the TrainResult's tokens ÷ training-loop seconds.",
        table(["side", "median tokens/s", "runs", "ratio"], rows, "lrrr"),
        f"Recording costs **{100 * overhead:+.1f}%** of median throughput (target under 3%: {verdict(ok)}); "
        f"fastest run against fastest run: ×{best_ratio:.3f} ({100 * (1 - best_ratio):+.1f}%). The bare side's own "
        f"runs spread over {100 * spread:.0f}% of its median: when that exceeds the effect, the machine's load, "
        "not the recorder, decides the median (rerun on an idle machine). Every step "
        f"reached the database once; the final losses of all runs are "
        f"{'identical' if len(same_loss) == 1 else 'different (!)'}.",
    ])
    return lines, body


def main(argv: list[str] | None = None) -> int:
    from benchmarks.stack import add_stack_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on both sides")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/BENCHMARKS.md")
    parser.add_argument("--bare-runner", action="store_true", help=argparse.SUPPRESS)
    add_stack_arguments(parser)
    args = parser.parse_args(argv)
    if args.bare_runner:
        return bare_runner()
    print("note: this machine may be shared with other engineers' test runs; numbers are noisy.")
    report = run(args)
    lines, body = summarize(report, args)
    print("\n".join(lines))
    if not args.no_write:
        print(f"wrote section 'recording-overhead' of {write_section('recording-overhead', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Render docs/RELIABILITY.md from the reliability suite's results (never written by hand).

Inputs, all in the results directory (``$RELIABILITY_RESULTS``, else ``$DATA_DIR/reliability``):
- ``<section>.json`` written by tests/reliability (bad_input, access_matrix, websocket_matrix, csrf,
  session_revocation, security, fuzz, load);
- ``*junit.xml`` from pytest ``--junitxml`` runs: tests/reliability and the fault-injection tests in tests/worker.

Usage:
    python scripts/reliability_report.py                 # render from existing results
    python scripts/reliability_report.py --run           # run tests/reliability (junit) first, then render
    python scripts/reliability_report.py --run --worker  # also the fault-injection tests in tests/worker
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.reliability.results import results_dir  # noqa: E402

WORKER_FAULT_TESTS = ["tests/worker/test_training_jobs.py", "tests/worker/test_redis_restart.py",
                      "tests/worker/test_worker_startup.py", "tests/worker/test_merge_task.py",
                      "tests/worker/test_gguf_export_task.py",
                      "tests/worker/test_web_server_restart.py", "tests/worker/test_postgres_restart.py",
                      "tests/worker/test_disk_full.py"]
WORKER_FAULT_FILTER = "killed or redis or database or twice or unsafe or cancel or restart or disk"

# What the fault-injection tests in tests/worker inject and what must hold (their names say the rest).
FAULTS = {
    "test_a_killed_worker_job_resumes_from_its_checkpoint":
        ("SIGKILL to the worker's process group mid-training; a second worker is running",
         "the job resumes from its checkpoint on the other worker and succeeds; every step stored exactly once; "
         "its adapter equals an uninterrupted run's (float tolerance)"),
    "test_a_redis_outage_mid_run_loses_no_point":
        ("Redis (broker and channel layer) stopped for 10 s mid-training while Chromium watches the job, then "
         "started again",
         "training goes on, the job finishes, no metric point is lost, no retry is triggered; the page catches "
         "up and its chart holds every step once"),
    "test_training_goes_on_when_database_connections_drop":
        ("every PostgreSQL session of the test database terminated mid-training (what a restart does)",
         "the worker reconnects and retries its writes; the job finishes with every step stored once"),
    "test_a_job_delivered_twice_runs_once":
        ("the same Celery message delivered twice (two workers)",
         "the lease lets one worker run the job; the second delivery is dropped"),
    "test_cancel_stops_a_running_job_within_one_step":
        ("cancel requested while the job runs", "the job ends cancelled within one step, keeping its checkpoint"),
    "test_a_worker_refuses_to_start_with_unsafe_torch_loading":
        ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the worker's environment", "the worker refuses to start"),
    "test_a_merge_survives_a_killed_worker_and_is_downloadable":
        ("SIGKILL to the worker during a merge", "the merge is retried; no half-written model is offered"),
    "test_a_gguf_export_survives_a_killed_worker_and_downloads_as_gguf":
        ("SIGKILL to the worker while it writes a merged model's GGUF",
         "the export is retried on another worker; the half-written file is never offered and is removed"),
    "test_a_restarted_web_server_loses_no_point_on_a_watching_page":
        ("SIGKILL to the ASGI server (uvicorn) while Chromium watches a training job; started again on its port a "
         "few seconds later",
         "the page reconnects by itself; its chart holds every step exactly once (the missed ones refetched)"),
    "test_a_postgres_restart_mid_training_loses_no_step":
        ("a private PostgreSQL cluster stopped (fast shutdown) mid-training and started again seconds later",
         "the worker retries its writes; the job succeeds on its first attempt with every step stored once"),
    "test_an_upload_to_a_full_disk_is_refused_and_nothing_is_kept":
        ("a 64 KiB tmpfs as DATA_DIR under /v1/files (in memory and spooled) and the pages' chunked upload",
         "507 saying the disk is full; no data set row, no partial file; the next upload that fits is stored"),
    "test_a_full_disk_at_checkpoint_or_adapter_save_fails_the_job_cleanly":
        ("tiny tmpfs mounts under two jobs' output directories: full at the first checkpoint, full at the adapter",
         "both jobs fail with a 'disk is full' message, no half-written checkpoint or adapter; the next job succeeds"),
}

# Redelivery, out of memory and bursts: their tests also write figures (section worker_faults, rendered below).
WORKER_FAULT_TESTS += ["tests/worker/test_redelivery.py", "tests/worker/test_out_of_memory.py",
                       "tests/worker/test_many_jobs.py"]
WORKER_FAULT_FILTER += " or visibility or memory or oom or burst"
FAULTS.update({
    "test_a_job_longer_than_the_visibility_timeout_runs_exactly_once":
        ("a 3-minute job with a 60 s broker visibility timeout, two idle workers beside its own (sampled every second)",
         "Redis hands the message out again and the idle worker drops it: one process trains the job at every "
         "sample, every step stored once, one attempt"),
    "test_a_job_killed_by_oom_every_time_fails_after_the_retry_cap":
        ("SIGKILL of the training process (alone, or with its worker) every time the job runs; fresh workers",
         "after JOB_MAX_ATTEMPTS the job is failed with its reason (killed N times, likely out of memory, what to "
         "lower); the killed workers' messages come back and are dropped; nothing left in the broker"),
    "test_out_of_memory_in_training_fails_with_guidance_and_the_worker_takes_the_next_job":
        ("a job whose settings need far more memory than the worker's limit (an allocation fails in training)",
         "the job fails saying what to lower, with its values; the same worker trains the next job"),
    "test_a_burst_of_jobs_from_many_users_runs_each_once_one_per_slot":
        ("20 jobs launched at once by 5 users on 2 single-slot workers (sampled every 0.5 s)",
         "never more jobs running than slots; every job succeeds on one claim, every step stored once"),
})

# Failures before the claim, and a full disk under the adapter pages.
WORKER_FAULT_TESTS += ["tests/worker/test_failures_before_claim.py", "tests/web/test_adapters_disk_full.py"]
WORKER_FAULT_FILTER += " or claim or adapter"
FAULTS.update({
    "test_a_job_failing_before_its_claim_fails_after_max_attempts_and_the_worker_trains_the_next":
        ("the worker's claim raises (or SIGKILLs its process) for one job at every delivery, before the job is "
         "marked running",
         "after JOB_MAX_ATTEMPTS deliveries the job is failed with a message naming the error; no further "
         "delivery; the same worker trains the next job"),
    "test_a_merge_or_session_whose_worker_dies_before_its_claim_fails_after_max_attempts":
        ("the worker's claim of a merge (or a playground session) SIGKILLs its process at every delivery, before "
         "the row is marked running",
         "the delivery after JOB_MAX_ATTEMPTS deaths fails the merge (session) saying its worker stopped N times; "
         "no further delivery; the same worker trains the next job"),
    "test_an_adapter_upload_to_a_full_disk_is_a_507_and_nothing_is_kept":
        ("a full tmpfs as DATA_DIR under the adapter upload page",
         "507 saying the disk is full; no adapter row, no partial file or directory"),
    "test_reducing_an_adapter_on_a_full_disk_is_a_507_and_nothing_is_kept":
        ("a full tmpfs as DATA_DIR under the rank reduction (page and API)", "507 (disk_full); nothing kept"),
    "test_downloading_an_adapter_whose_archive_cannot_be_built_is_a_507":
        ("a full tmpfs as DATA_DIR when the download archive is built (page and API)",
         "507 (disk_full); no partial zip left"),
    "test_a_multipart_upload_spooled_to_a_full_disk_is_a_507_even_before_the_view":
        ("a full tmpfs under a browser's multipart upload (adapter and data set pages, CSRF enforced): Django "
         "spools the files while the CSRF check reads the body, before any view runs",
         "507 with the disk-full page (handler500), not a 500; no partial file"),
    "test_the_analysis_is_shown_when_its_cache_cannot_be_written":
        ("a full tmpfs as DATA_DIR when the analysis cache is written", "the analysis is shown; no cache file"),
})


def render_worker_figures(section: dict | None) -> list[str]:
    """What the redelivery, out-of-memory and burst tests measured."""
    if not section:
        return []
    lines = ["Figures from the fault tests:", "", "| fault test | figures |", "| --- | --- |"]
    lines += [f"| `{e['test']}` | {_cell('; '.join(f'{k}: {v}' for k, v in e['figures'].items()), 400)} |"
              for e in section["entries"]]
    return lines + [""]


# ------------------------------------------------------------------------------------------------ loading


def load_sections(directory: Path) -> dict[str, dict[str, Any]]:
    sections = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        sections[data.get("section", path.stem)] = data
    return sections


def _docstring(file: str, name: str) -> str:
    path = ROOT / file
    if not path.exists():
        return ""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
    return ""


def load_junit(directory: Path) -> list[dict[str, Any]]:
    """Every testcase of every junit file: name, file, outcome, seconds, docstring."""
    cases = []
    for path in sorted(directory.glob("*junit*.xml")):
        for case in ET.parse(path).getroot().iter("testcase"):
            classname = case.get("classname", "")
            file = classname.replace(".", "/") + ".py"
            name = case.get("name", "")
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                if case.find(tag) is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
            base = name.split("[")[0]
            cases.append({"file": file, "name": name, "base": base, "outcome": outcome,
                          "seconds": float(case.get("time") or 0), "doc": _docstring(file, base)})
    return cases


# ---------------------------------------------------------------------------------------------- rendering


def _cell(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_bad_input(section: dict | None) -> list[str]:
    lines = ["## Bad input", ""]
    if not section:
        return lines + ["_No results: run tests/reliability/test_bad_input.py._", ""]
    entries = section["entries"]
    refused = [e for e in entries if not e["accepted"] and 400 <= e["status"] < 500]
    accepted = [e for e in entries if e["accepted"]]
    lines += [f"**{len(entries)} inputs tried** through the real endpoints (pages' uploads, `/v1`, `/api`): "
              f"**{len(refused)} refused with a 4xx** naming the problem, {len(accepted)} legitimately accepted "
              "(stored under a server-made name). After each: no database row and no file under "
              "`DATA_DIR/datasets` or `DATA_DIR/adapters` was left behind, and the next request was served.",
              "", "Statuses: " + ", ".join(f"{status} × {count}" for status, count in
                                            sorted(Counter(e["status"] for e in entries).items())), "",
              "| input | status | message |", "| --- | --- | --- |"]
    for entry in entries:
        label = entry["id"] + (f" — {entry['describe']}" if entry.get("describe") else "")
        lines.append(f"| {_cell(label, 90)} | {entry['status']} | {_cell(entry['message'])} |")
    return lines + [""]


def render_access(sections: dict) -> list[str]:
    lines = ["## Access control", ""]
    matrix = sections.get("access_matrix")
    if matrix:
        entries = matrix["entries"]
        meta = matrix.get("meta", {})
        bad = [e for e in entries if not e["ok"]]
        by_who = Counter((e["who"], e["status"]) for e in entries)
        lines += [f"**Access matrix: {meta.get('routes', '?')} classified routes × owner / another user / staff / "
                  f"anonymous = {meta.get('cells', len(entries))} requests**, {len(bad)} wrong answers. Another user "
                  "gets 404 for every object route (as for a missing id), anonymous callers the login page (pages) "
                  "or 401 (API); an unclassified new route fails the suite.", "",
                  "| who | status | count |", "| --- | --- | --- |"]
        lines += [f"| {who} | {status} | {count} |" for (who, status), count in sorted(by_who.items())]
        lines.append("")
    sockets = sections.get("websocket_matrix")
    if sockets:
        lines += ["Websockets (through `webapp.asgi.application`):", "", "| route | who | connected |",
                  "| --- | --- | --- |"]
        lines += [f"| `{e['route']}` | {e['who']} | {'yes' if e['connected'] else 'refused'} |"
                  for e in sockets["entries"]]
        lines.append("")
    revocation = sections.get("session_revocation")
    if revocation:
        lines += ["Revoking a session closes every open socket of the user (job, jobs list, playground):", "",
                  "| revoked by | sockets open | closed | slowest close (s) |", "| --- | --- | --- | --- |"]
        lines += [f"| {e['how']} | {e['sockets']} | {e['closed']} | {e['max_seconds']} |"
                  for e in revocation["entries"]]
        lines.append("")
    csrf = sections.get("csrf")
    if csrf:
        entries = csrf["entries"]
        lines += [f"CSRF: {len(entries)} routes POSTed by a logged-in browser without a token: "
                  f"{sum(e['status'] == 403 for e in entries)} answered 403, "
                  f"{sum(e['status'] == 405 for e in entries)} 405 (API routes that take no POST), "
                  f"{sum(not e['ok'] for e in entries)} accepted.", ""]
    return lines


def render_security(section: dict | None) -> list[str]:
    if not section:
        return []
    lines = ["## Security checks", "", "| check | what held |", "| --- | --- |"]
    lines += [f"| {e['check']} | {_cell(e['held'], 200)} |" for e in section["entries"]]
    return lines + [""]


def render_fuzz(section: dict | None) -> list[str]:
    lines = ["## API fuzzing (schemathesis)", ""]
    if not section:
        return lines + ["_No results: run tests/reliability/test_api_fuzz.py._", ""]
    meta = section["meta"]
    statuses = ", ".join(f"{k} × {v}" for k, v in sorted(meta.get("status_counts", {}).items()))
    lines += [f"**{meta.get('examples', 0)} generated requests** over {meta.get('operations', '?')} operations of "
              f"`/api/openapi.json` (modes {', '.join(meta.get('modes', []))}, up to {meta.get('max_examples')} "
              f"examples per operation and mode, fixed seed) against a live uvicorn server with a Bearer key, in "
              f"{meta.get('seconds')} s: **{meta.get('server_errors', 0)} server errors**. "
              f"Skipped for time: {len(meta.get('skipped', []))}.", "", f"Statuses: {statuses}", ""]
    return lines


def render_load(section: dict | None) -> list[str]:
    """The load test's latencies: live points to many watchers, and API requests, all at once."""
    lines = ["## Load", ""]
    if not section:
        return lines + ["_No results: run tests/reliability/test_load.py._", ""]
    meta = section["meta"]
    lines += [f"**{meta.get('watchers')} websocket watchers** on one running job ({meta.get('steps')} steps at "
              f"{meta.get('rate')} steps/s through the worker's recorder) **and {meta.get('api_clients')} API "
              f"clients** (keep-alive, each sending its next request as soon as the last one answered) at the same "
              f"time, against uvicorn with {meta.get('server_workers')} worker processes on PostgreSQL and Redis, "
              f"on {meta.get('cores')} cores shared with the clients; {meta.get('seconds')} s in all (the watchers "
              f"connected in {meta.get('watchers_connect_seconds')} s). Every watcher must get every step exactly "
              "once and every request must answer 200 (errors: watchers short of points, or failed requests); "
              "the p95 targets are the issues' and are reported, not asserted.", "",
              "| what | count | p50 ms | p95 ms | p99 ms | errors | p95 target |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for e in section["entries"]:
        target = e.get("target_p95_ms")
        verdict = "—" if target is None else f"< {target:g} ms: {'met' if e['p95_ms'] < target else 'missed'}"
        lines.append(f"| {_cell(e['what'], 120)} | {e['count']} | {e['p50_ms']} | {e['p95_ms']} | {e['p99_ms']} | "
                     f"{e['errors']} | {verdict} |")
    return lines + [""]


def render_tests(cases: list[dict], fault_figures: dict | None = None) -> list[str]:
    lines = ["## Fault injection and the suite's tests", ""]
    if not cases:
        return lines + ["_No junit results: run with `--run` (and `--worker` for the fault-injection tests)._", ""]
    faults = [c for c in cases if c["base"] in FAULTS]
    # figures the fault tests measured (tests.reliability.results, section "fault_figures"), by test name
    figures = {e["test"]: e["figures"] for e in (fault_figures or {}).get("entries", [])}
    if faults:
        lines += ["| fault test | injected | what held | figures | result | seconds |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for case in faults:
            injected, held = FAULTS[case["base"]]
            measured = "; ".join(f"{k}: {v}" for k, v in figures.get(case["base"], {}).items()) or "–"
            lines.append(f"| `{case['name']}` | {injected} | {held} | {_cell(measured, 300)} | {case['outcome']} | "
                         f"{case['seconds']:.1f} |")
        lines.append("")
    counts = Counter(c["outcome"] for c in cases)
    lines += ["All tests in the junit results: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
              f"; {sum(c['seconds'] for c in cases):.0f} s in all.", "",
              "| test | what it checks | result | seconds |", "| --- | --- | --- | --- |"]
    grouped: dict[tuple[str, str], list[dict]] = {}
    for case in cases:
        grouped.setdefault((case["file"], case["base"]), []).append(case)
    for (file, base), group in grouped.items():
        outcome = Counter(c["outcome"] for c in group)
        result = ", ".join(f"{k} {v}" for k, v in sorted(outcome.items()))
        doc = group[0]["doc"] or (FAULTS[base][1] if base in FAULTS else "")
        lines.append(f"| `{Path(file).name}::{base}`{f' ×{len(group)}' if len(group) > 1 else ''} | "
                     f"{_cell(doc, 140)} | {result} | {sum(c['seconds'] for c in group):.1f} |")
    return lines + [""]


def render(directory: Path) -> str:
    sections = load_sections(directory)
    cases = load_junit(directory)
    written = sorted(s.get("written_at", "") for s in sections.values())
    header = ["# Reliability", "",
              "Generated by `scripts/reliability_report.py` from the results of `tests/reliability` (and the "
              "fault-injection tests in `tests/worker`) — do not edit by hand; rerun "
              "`python scripts/reliability_report.py --run --worker`.", "",
              f"Results from {written[0] if written else '?'} to {written[-1] if written else '?'}.", ""]
    body = (render_bad_input(sections.get("bad_input")) + render_access(sections)
            + render_security(sections.get("security")) + render_fuzz(sections.get("fuzz"))
            + render_load(sections.get("load"))
            + render_tests(cases, sections.get("fault_figures")) + render_worker_figures(sections.get("worker_faults")))
    return "\n".join(header + body).rstrip() + "\n"


def run_suite(directory: Path, worker: bool) -> None:
    env = {**os.environ, "RELIABILITY_RESULTS": str(directory)}
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pytest", "tests/reliability", "-q",
                    f"--junitxml={directory / 'reliability-junit.xml'}"], cwd=ROOT, env=env, check=False)
    if worker:
        subprocess.run([sys.executable, "-m", "pytest", *WORKER_FAULT_TESTS, "-q", "-k", WORKER_FAULT_FILTER,
                        f"--junitxml={directory / 'worker-junit.xml'}"], cwd=ROOT, env=env, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=results_dir())
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RELIABILITY.md")
    parser.add_argument("--run", action="store_true", help="run tests/reliability first (junit into --results)")
    parser.add_argument("--worker", action="store_true", help="with --run: the tests/worker fault tests too")
    args = parser.parse_args(argv)
    if args.run:
        run_suite(args.results, args.worker)
    if not args.results.exists():
        print(f"no results in {args.results}: run with --run", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz every operation of the API's OpenAPI document (/api/openapi.json) with schemathesis against a live ASGI
server, authenticated with a Bearer key: no answer may be a 5xx.

Bounded for CI: a few examples per operation and generation mode, a fixed seed (hypothesis ``derandomize``),
and a time budget after which the remaining operations are skipped (and counted as such in the report).
The server uses its own Redis database, so jobs the fuzzer creates never reach another test's workers.
"""

from __future__ import annotations

import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.support.processes import start_asgi_server

from .conftest import CHAT_ROWS, jsonl
from .results import record, set_meta

MAX_EXAMPLES = 6  # per operation and generation mode
BUDGET_SECONDS = 100
ISOLATED_REDIS = "redis://127.0.0.1:6379/13"
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@pytest.fixture
def asgi_url(transactional_db, tmp_path):
    proc, base_url = start_asgi_server(tmp_path, REDIS_URL=ISOLATED_REDIS)
    yield base_url
    proc.stop()


def _fuzz_operation(operation, mode, base_url: str, headers: dict, seen: list, failures: list) -> None:
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        try:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
        except requests.RequestException as exc:  # the server dropped the connection: as bad as a 5xx
            failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}")
            return
        seen.append(response.status_code)
        if response.status_code >= 500:
            failures.append(f"{operation.label} [{mode.value}]: {response.status_code} for "
                            f"{case.method} {case.formatted_path} {str(case.body)[:200]}")

    try:
        run()
    except Unsatisfiable:  # e.g. no way to make a negative case for an operation without parameters
        pass


def test_the_api_never_answers_5xx(asgi_url, owner, owner_key):
    headers = {"Authorization": f"Bearer {owner_key}"}
    uploaded = requests.post(f"{asgi_url}/v1/files", headers=headers, data={"purpose": "fine-tune"},
                             files={"file": ("train.jsonl", jsonl(CHAT_ROWS))}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text  # so that some generated ids and bodies hit real rows
    schema = schemathesis.openapi.from_url(f"{asgi_url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    started, statuses, failures, skipped = time.monotonic(), [], [], []
    for operation in operations:
        for mode in MODES:
            if time.monotonic() - started > BUDGET_SECONDS:
                skipped.append(f"{operation.label} [{mode.value}]")
                continue
            before = len(statuses)
            _fuzz_operation(operation, mode, asgi_url, headers, statuses, failures)
            record("fuzz", operation=operation.label, mode=mode.value, examples=len(statuses) - before,
                   statuses=sorted(set(statuses[before:])))
    assert requests.get(f"{asgi_url}/healthz", timeout=10).status_code == 200, "the server keeps serving"
    elapsed = time.monotonic() - started
    set_meta("fuzz", operations=len(operations), examples=len(statuses), server_errors=len(failures),
             skipped=skipped, seconds=round(elapsed, 1), max_examples=MAX_EXAMPLES,
             modes=[mode.value for mode in MODES], status_counts={str(s): statuses.count(s) for s in set(statuses)})
    assert not failures, "\n".join(failures[:30])
    assert len(skipped) < len(operations), "the time budget allowed too little fuzzing"

"""A delivery that fails before it claims its job (or merge, or playground session): an exception in setup, or
the process dying there.

Before the claim the row is still queued and its attempt count does not move, so neither the reapers (which
cap attempts of claimed work) nor anything else stopped it: the reconciler sent it again every ~10 s, forever.
Now every delivery of a queued row is counted before anything can fail, and the one that reaches
JOB_MAX_ATTEMPTS without a claim fails the row with a message naming the error. The worker trains the next job.

The fault is injected into the real worker process by a ``sitecustomize`` module on its PYTHONPATH that wraps
the claim (``webapp.jobs.leases.claim_job``, ``webapp.adapters.merges.claim_merge``,
``webapp.playground.actions.start_session``) as soon as its module is imported: for one row id it raises, or
kills the process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.reliability.results import record
from tests.support.processes import wait_until
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import job_state, wait_for_end
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, JobEvent

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MAX_ATTEMPTS = 3
RECONCILE_SECONDS = 2  # a lost message is sent again after two scans: about every 4 s here
# A message whose worker process died comes back after 5 s, looked for every second.
BROKER = {"JOB_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "JOB_RECONCILE_SECONDS": str(RECONCILE_SECONDS),
          "CELERY_VISIBILITY_TIMEOUT": "5", "CELERY_RESTORE_SECONDS": "1"}
RUN = {**TINY_RUN, "max_steps": 4, "save_every": 0}

FAULT_HOOK = '''
import importlib.abc
import importlib.machinery
import os
import signal
import sys

FAULT_JOB, FAULT = os.environ["LS_TEST_CLAIM_FAULT_JOB"], os.environ["LS_TEST_CLAIM_FAULT"]
MODULE, CLAIM = os.environ["LS_TEST_CLAIM_FAULT_IN"].rsplit(".", 1)


class WrapClaim(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            claim = getattr(module, CLAIM)

            def faulty_claim(row_id, *args):
                if str(row_id) == FAULT_JOB:
                    if FAULT == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError("injected fault: setup broke before the job was claimed")
                return claim(row_id, *args)

            setattr(module, CLAIM, faulty_claim)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, WrapClaim())
'''


def fault_hook(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(FAULT_HOOK)
    return os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")]))


def deliveries(row, log: str, what: str = "job") -> int:
    return log.count(f"{what} {row.pk}: delivery ")


@pytest.mark.parametrize("fault", ["exception", "kill"])
def test_a_job_failing_before_its_claim_fails_after_max_attempts_and_the_worker_trains_the_next(
        transactional_db, owner, base_model, dataset, workers, tmp_path, fault):
    doomed = create_job(owner, dataset, base_model, RUN, suffix="doomed")
    started = time.monotonic()
    worker = workers("faulty", PYTHONPATH=fault_hook(tmp_path / "hook"), LS_TEST_CLAIM_FAULT_JOB=str(doomed.pk),
                     LS_TEST_CLAIM_FAULT=fault, LS_TEST_CLAIM_FAULT_IN="webapp.jobs.leases.claim_job", **BROKER)
    wait_for_end(doomed, timeout=150)
    seconds_to_fail = time.monotonic() - started

    assert doomed.state == Job.State.FAILED and doomed.attempt == 0, (doomed.state, doomed.attempt)
    assert f"{MAX_ATTEMPTS} times" in doomed.error_message, doomed.error_message
    if fault == "exception":
        assert "RuntimeError: injected fault: setup broke before the job was claimed" in doomed.error_message
        assert "injected fault" in doomed.error and "Traceback" in doomed.error
        expected = MAX_ATTEMPTS
    else:
        assert "stopped" in doomed.error_message, doomed.error_message
        expected = MAX_ATTEMPTS + 1  # the delivery after the last death finds the count reached and fails it
    assert JobEvent.objects.filter(job=doomed, level="error").exists()
    wait_until(lambda: deliveries(doomed, worker.log()) >= expected, timeout=10, message="the deliveries' log lines")
    time.sleep(4 * RECONCILE_SECONDS + 2)  # long enough for two more redeliveries if the job were still queued
    assert deliveries(doomed, worker.log()) == expected, worker.log()[-3000:]
    assert job_state(doomed).state == Job.State.FAILED

    assert worker.alive()
    following = create_job(owner, dataset, base_model, RUN, suffix="following")
    wait_for_end(following)
    assert following.state == Job.State.SUCCEEDED and following.attempt == 1, following.error
    record("worker_faults", test=f"test_a_job_failing_before_its_claim_fails_after_max_attempts_and_the_worker_"
                                 f"trains_the_next[{fault}]",
           figures={"deliveries": expected, "JOB_MAX_ATTEMPTS": MAX_ATTEMPTS,
                    "seconds to fail": round(seconds_to_fail, 1), "next job": following.state})


def queued_merge(owner, base_model):
    from webapp.adapters.merges import request_merge
    from webapp.adapters.models import Adapter

    adapter = Adapter.objects.create(owner=owner, name="never merged", storage_path="adapters/none",
                                     base_model=base_model, rank=4, alpha=8.0)
    return request_merge(adapter)[0]


def queued_session(owner, base_model):
    from webapp.playground.actions import create_session

    return create_session(owner, base_model, [], "Hello?")


@pytest.mark.parametrize(("what", "claim", "make_row"), [
    ("merge", "webapp.adapters.merges.claim_merge", queued_merge),
    ("playground session", "webapp.playground.actions.start_session", queued_session),
], ids=["merge", "playground"])
def test_a_merge_or_session_whose_worker_dies_before_its_claim_fails_after_max_attempts(
        transactional_db, owner, base_model, dataset, workers, tmp_path, what, claim, make_row):
    """Merges, GGUF exports (the same LeasedWork code as merges) and playground sessions are capped too."""
    doomed = make_row(owner, base_model)
    started = time.monotonic()
    worker = workers("faulty", PYTHONPATH=fault_hook(tmp_path / "hook"), LS_TEST_CLAIM_FAULT_JOB=str(doomed.pk),
                     LS_TEST_CLAIM_FAULT="kill", LS_TEST_CLAIM_FAULT_IN=claim, **BROKER)
    wait_until(lambda: type(doomed).objects.get(pk=doomed.pk).state == "failed", timeout=150,
               message=f"the {what} to fail")
    seconds_to_fail = time.monotonic() - started

    doomed.refresh_from_db()
    assert doomed.started_at is None, "it was never claimed"
    assert f"its worker stopped {MAX_ATTEMPTS} times before it began" in doomed.error_message, doomed.error_message
    expected = MAX_ATTEMPTS + 1  # the delivery after the last death finds the count reached and fails it
    wait_until(lambda: deliveries(doomed, worker.log(), what) >= expected, timeout=10,
               message="the deliveries' log lines")
    time.sleep(4 * RECONCILE_SECONDS + 2)  # long enough for two more redeliveries if it were still queued
    assert deliveries(doomed, worker.log(), what) == expected, worker.log()[-3000:]

    assert worker.alive()
    following = create_job(owner, dataset, base_model, RUN, suffix="following")
    wait_for_end(following)
    assert following.state == Job.State.SUCCEEDED, following.error
    record("worker_faults", test=f"test_a_merge_or_session_whose_worker_dies_before_its_claim_fails_after_max_"
                                 f"attempts[{'merge' if what == 'merge' else 'playground'}]",
           figures={"deliveries": expected, "JOB_MAX_ATTEMPTS": MAX_ATTEMPTS,
                    "seconds to fail": round(seconds_to_fail, 1), "next job": following.state})

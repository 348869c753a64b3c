"""Deliveries that never reach the claim: counted before they can fail, and capped at JOB_MAX_ATTEMPTS."""

from __future__ import annotations

import pytest

from webapp.jobs.actions import JOBS
from webapp.jobs.leases import claim_job
from webapp.jobs.models import Job, JobEvent

from .jobs_factories import make_job

ERROR = "RuntimeError: setup broke"
count_delivery, record_failed_delivery = JOBS.deliveries.count, JOBS.deliveries.record_failure


@pytest.fixture
def queued(owner, settings):
    settings.JOB_MAX_ATTEMPTS = 3
    return make_job(owner, state=Job.State.QUEUED)


def test_it_counts_deliveries_and_the_claim_resets_the_count(queued):
    assert count_delivery(queued.pk) and count_delivery(queued.pk)
    queued.refresh_from_db()
    assert queued.unclaimed_deliveries == 2
    claim_job(queued.pk, "host:1:abc")
    queued.refresh_from_db()
    assert (queued.state, queued.unclaimed_deliveries, queued.attempt) == (Job.State.RUNNING, 0, 1)
    assert count_delivery(queued.pk)  # a duplicate delivery of a running job: not counted, the claim drops it
    queued.refresh_from_db()
    assert queued.unclaimed_deliveries == 0


def test_failed_deliveries_keep_the_job_queued_until_the_last_allowed_one(queued):
    for delivery in (1, 2):
        assert count_delivery(queued.pk)
        assert record_failed_delivery(queued.pk, "Traceback ...", ERROR) is None
        queued.refresh_from_db()
        assert queued.state == Job.State.QUEUED and queued.unclaimed_deliveries == delivery
    assert count_delivery(queued.pk)
    failed = record_failed_delivery(queued.pk, "Traceback ...", ERROR)

    queued.refresh_from_db()
    assert failed is not None and queued.state == Job.State.FAILED and queued.finished_at is not None
    assert ("The job could not be started: its worker failed 3 times before it began, each time with "
            "RuntimeError: setup broke") in queued.error_message
    assert queued.error == "Traceback ..."
    assert JobEvent.objects.filter(job=queued, level="warning").count() == 2
    assert JobEvent.objects.filter(job=queued, level="error", message__contains="setup broke").count() == 1


def test_deliveries_that_died_silently_fail_the_job_at_the_next_one(queued):
    for _ in range(3):
        assert count_delivery(queued.pk)  # ... and the process died before saying anything
    assert not count_delivery(queued.pk)

    queued.refresh_from_db()
    assert queued.state == Job.State.FAILED
    assert "its worker stopped 3 times before it began" in queued.error_message


def test_an_exception_after_the_claim_is_left_to_the_lease(queued):
    assert count_delivery(queued.pk)
    claim_job(queued.pk, "host:1:abc")
    assert record_failed_delivery(queued.pk, "Traceback ...", ERROR) is None
    queued.refresh_from_db()
    assert queued.state == Job.State.RUNNING and queued.error == ""


def test_a_delivery_of_something_that_is_not_a_job_is_left_to_the_claim(queued):
    assert count_delivery("not-a-uuid")
    assert record_failed_delivery("not-a-uuid", "Traceback ...", ERROR) is None

"""Whole drawn-history answers kept per process by the version of the job row (metrics_query.drawn_answers).

These tests commit (``transaction=True``), as the web server does: inside a transaction block nothing is kept.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from webapp.jobs import metrics_query
from webapp.jobs.models import Job

from .jobs_factories import add_points, make_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def nothing_kept():
    metrics_query._cache.clear()
    metrics_query.drawn_answers.clear()
    yield
    metrics_query._cache.clear()
    metrics_query.drawn_answers.clear()


def drawn(client, job: Job, query: str = "?max_points=100") -> tuple[dict, int]:
    """The answer and how many queries it took."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(f"/api/jobs/{job.id}/metrics{query}")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    return response.json(), len(captured)


def test_it_works(api, owner):
    job = make_job(owner)
    add_points(job, range(1, 501))
    first, _ = drawn(api, job)  # (and checks the API key)
    again, queries = drawn(api, job)
    assert again == first and first["last_seq"] == 500 and queries == 1  # the job row's version only


def test_any_write_to_the_job_shows_at_once(owner_client, owner):
    job = make_job(owner)
    add_points(job, range(1, 501))
    drawn(owner_client, job)
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, progress=1.0)  # no signal, no save()
    state = drawn(owner_client, job)[0]["state"]
    assert (state["state"], state["progress"]) == ("succeeded", 1.0)
    add_points(job, range(501, 511))  # the recorder's way: points and last_seq in one transaction
    later = drawn(owner_client, job)[0]
    assert later["last_seq"] == 510 and later["points"][-1]["step"] == 510
    assert drawn(owner_client, job, "?max_points=10")[0]["points"] != later["points"]  # its own answer


def test_it_validates_ownership(owner_client, stranger_client, staff_client, owner):
    job = make_job(owner)
    add_points(job, range(1, 50))
    assert drawn(owner_client, job)[0]["total_points"] == 49
    for _ in range(2):
        assert stranger_client.get(f"/api/jobs/{job.id}/metrics?max_points=100").status_code == 404
        assert stranger_client.get(f"/api/jobs/{job.id}/metrics?max_points=1").status_code == 404  # 404 first
        assert drawn(staff_client, job)[0]["total_points"] == 49

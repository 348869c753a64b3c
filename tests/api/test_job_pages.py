"""The jobs list's kept pages (webapp/api/job_pages.py): sent again while their rows are unchanged, rebuilt after
any write, whoever made it.

These tests commit (``transaction=True``), as the web server does: inside a transaction block nothing is kept.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.api.conftest import make_job
from webapp.adapters.models import Adapter
from webapp.api.job_pages import kept_pages
from webapp.basemodels.models import BaseModel
from webapp.jobs.models import Job

pytestmark = pytest.mark.django_db(transaction=True)

LIST = "/v1/fine_tuning/jobs?limit=2"


@pytest.fixture(autouse=True)
def no_kept_pages():
    kept_pages.clear()
    yield
    kept_pages.clear()


def listed(client, path: str = LIST) -> tuple[dict, int]:
    """The answer and how many queries it took."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    return response.json(), len(captured)


def test_it_works(api, owner, dataset, base_model):
    jobs = [make_job(owner, dataset, base_model, suffix=f"j{i}", state="succeeded") for i in range(3)]
    api.get(LIST)  # checks the key
    kept_pages.clear()
    first, built = listed(api)
    again, checked = listed(api)
    assert again == first and [j["id"] for j in first["data"]] == [f"ftjob-{j.id.hex}" for j in jobs[:0:-1]]
    assert first["has_more"] is True
    assert (checked, built) == (1, 2)  # the versions, then the page; later the versions only


def test_every_kind_of_write_shows_at_once(api, owner, dataset, base_model):
    job = make_job(owner, dataset, base_model, suffix="a", state="running")
    other = make_job(owner, dataset, base_model, suffix="b", state="queued")
    api.get(LIST)
    listed(api)

    Job.objects.filter(pk=other.pk).update(state="cancelled")  # a queryset update(): no signal, no save()
    assert listed(api)[0]["data"][0]["status"] == "cancelled"

    other.suffix = "renamed"
    other.save()
    assert listed(api)[0]["data"][0]["user_provided_suffix"] == "renamed"

    Job.objects.filter(pk=job.pk).update(state="succeeded")
    adapter = Adapter.objects.create(owner=owner, job=job, name="tutor", storage_path="adapters/x",
                                     base_model=base_model, rank=8, alpha=16)
    assert listed(api)[0]["data"][1]["fine_tuned_model"].startswith("ft:tiny-llama:tutor:")

    BaseModel.objects.filter(pk=base_model.pk).update(name="tiny-llama-2")
    page = listed(api)[0]
    assert [j["model"] for j in page["data"]] == ["tiny-llama-2"] * 2
    assert page["data"][1]["fine_tuned_model"].startswith("ft:tiny-llama-2:tutor:")

    adapter.delete()
    assert listed(api)[0]["data"][1]["fine_tuned_model"] is None

    newest = make_job(owner, dataset, base_model, suffix="c", state="succeeded")
    page = listed(api)[0]
    assert page["first_id"] == f"ftjob-{newest.id.hex}" and page["has_more"] is True

    newest.delete()
    page = listed(api)[0]
    assert page["first_id"] == f"ftjob-{other.id.hex}" and page["has_more"] is False


def test_a_page_with_a_running_job_is_built_every_time(api, owner, dataset, base_model):
    make_job(owner, dataset, base_model, state="running", eta_seconds=120.0)
    api.get(LIST)
    page, built = listed(api)
    assert page["data"][0]["estimated_finish"] is not None  # moves with the clock: never kept
    assert listed(api)[1] == built > 1


def test_it_validates_ownership(api, stranger_api, staff_key, owner, stranger, dataset, base_model):
    from django.test import Client

    mine = make_job(owner, dataset, base_model, state="succeeded")
    theirs = make_job(stranger, dataset, base_model, state="succeeded")
    staff_api = Client(HTTP_AUTHORIZATION=f"Bearer {staff_key}")
    for _ in range(2):
        assert [j["id"] for j in listed(api)[0]["data"]] == [f"ftjob-{mine.id.hex}"]
        assert [j["id"] for j in listed(stranger_api)[0]["data"]] == [f"ftjob-{theirs.id.hex}"]
        assert [j["id"] for j in listed(staff_api)[0]["data"]] == [f"ftjob-{theirs.id.hex}", f"ftjob-{mine.id.hex}"]


def test_pages_after_a_job_are_kept_apart(api, owner, dataset, base_model):
    jobs = [make_job(owner, dataset, base_model, suffix=f"j{i}", state="succeeded") for i in range(5)]
    after = f"{LIST}&after=ftjob-{jobs[3].id.hex}"
    for _ in range(2):
        assert [j["user_provided_suffix"] for j in listed(api)[0]["data"]] == ["j4", "j3"]
        assert [j["user_provided_suffix"] for j in listed(api, after)[0]["data"]] == ["j2", "j1"]
    Job.objects.filter(pk=jobs[1].pk).delete()
    page = listed(api, after)[0]
    assert [j["user_provided_suffix"] for j in page["data"]] == ["j2", "j0"] and page["has_more"] is False

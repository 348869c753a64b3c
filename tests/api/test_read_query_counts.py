"""The read API's hot paths make one database query each once the API key has been checked, however many
jobs a page holds.

Under 50 concurrent clients every query is a round-trip made while the request holds a pooled connection and
a thread, so a query more per request is throughput lost (docs/BENCHMARKS.md, api-load). The key's check is
remembered by the process for a few seconds (webapp/accounts/keys.py).
"""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.api.conftest import make_job
from webapp.jobs.models import MetricPoint


def _queries(client, path: str) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content
    return [query["sql"] for query in captured]


def test_the_jobs_list_is_one_query_whatever_the_page_holds(api, owner, dataset, base_model):
    make_job(owner, dataset, base_model, suffix="first")
    api.get("/v1/fine_tuning/jobs?limit=20")  # checks the key (and writes its last_used_at)
    assert len(_queries(api, "/v1/fine_tuning/jobs?limit=20")) == 1
    for n in range(25):
        make_job(owner, dataset, base_model, suffix=f"j{n}")
    sql = _queries(api, "/v1/fine_tuning/jobs?limit=20")
    assert len(sql) == 1 and "LIMIT 21" in sql[0] and "COUNT(" not in sql[0].upper()


def test_a_drawn_history_read_again_is_one_query(api, owner, dataset, base_model):
    job = make_job(owner, dataset, base_model, suffix="m", last_seq=50)
    MetricPoint.objects.bulk_create(MetricPoint(job=job, seq=s, step=s, split="train", values={"loss": 1.0 / s})
                                    for s in range(1, 51))
    path = f"/api/jobs/{job.pk}/metrics?max_points=20"
    api.get(path)
    sql = _queries(api, path)
    assert len(sql) == 1 and "jobs_job" in sql[0]  # the job (owner-scoped), then the cached history

"""The thinned metric history read light (only the watched metrics per point) and cached by last_seq."""

from __future__ import annotations

import pytest
from django.http import JsonResponse

from webapp.jobs import metrics_query
from webapp.jobs.downsample import downsample_by_split
from webapp.jobs.models import MetricPoint

from .jobs_factories import add_points, make_job, step_values


@pytest.fixture(autouse=True)
def empty_cache():
    metrics_query._cache.clear()
    yield
    metrics_query._cache.clear()


def odd_values(step: int) -> dict:
    """Spikes, and values the thinning must skip: strings, booleans, nulls, missing keys."""
    values = step_values(step, loss=50.0 if step == 1234 else None)
    if step % 97 == 0:
        values["loss"] = "nan"
    if step % 89 == 0:
        values["grad_norm"] = True
    if step % 83 == 0:
        values["grad_norm"] = None
    if step % 79 == 0:
        del values["loss"]
    return values


def test_it_picks_the_same_points_as_thinning_the_full_rows(owner):
    job = make_job(owner)
    add_points(job, range(1, 3001), values=odd_values)
    add_points(job, range(50, 3001, 50), split="eval")
    rows = MetricPoint.objects.filter(job=job).order_by("seq")
    full = list(rows.values("seq", "step", "split", "values"))
    for budget in (10, 300, 1000):
        drawn, total, highest = metrics_query.downsampled_points(rows, budget)
        assert drawn == downsample_by_split(full, budget)
        assert (total, highest) == (len(full), full[-1]["seq"])
    assert any(p["step"] == 1234 for p in drawn)  # the spike survives


def test_it_works_through_the_api_and_sees_new_points(owner_client, owner):
    job = make_job(owner)
    add_points(job, range(1, 2001))
    first = owner_client.get(f"/api/jobs/{job.id}/metrics?max_points=100").json()
    again = owner_client.get(f"/api/jobs/{job.id}/metrics?max_points=100").json()
    assert first == again and first["last_seq"] == 2000 and first["downsampled"]
    add_points(job, range(2001, 2011))  # last_seq moves: the cached answer is not reused
    later = owner_client.get(f"/api/jobs/{job.id}/metrics?max_points=100").json()
    assert later["last_seq"] == 2010 and later["total_points"] == 2010 and later["points"][-1]["step"] == 2010


def test_it_validates_ownership(owner_client, stranger_client, owner):
    job = make_job(owner)
    add_points(job, range(1, 50))
    assert owner_client.get(f"/api/jobs/{job.id}/metrics?max_points=20").status_code == 200
    assert metrics_query._cache  # the owner's answer is cached: it must not reach anyone else
    assert stranger_client.get(f"/api/jobs/{job.id}/metrics?max_points=20").status_code == 404


class CountingJson:
    """Stands in for metrics_query's ``json`` module, counting what it encodes."""

    def __init__(self):
        import json

        self.json, self.encoded = json, 0

    def dumps(self, *args, **kwargs):
        self.encoded += 1
        return self.json.dumps(*args, **kwargs)


def test_a_repeat_request_sends_the_cached_encoding_and_the_same_bytes(owner_client, owner, monkeypatch):
    job = make_job(owner)
    add_points(job, range(1, 3001), values=odd_values)
    counting = CountingJson()
    monkeypatch.setattr(metrics_query, "json", counting)
    url = f"/api/jobs/{job.id}/metrics?max_points=200"
    first = owner_client.get(url)
    assert counting.encoded == 1
    second = owner_client.get(url)
    assert counting.encoded == 1  # the thinned points were not encoded again
    assert first.content == second.content and first["Content-Type"] == "application/json"
    # what JsonResponse would have sent for the same answer, byte for byte
    assert first.content == JsonResponse(first.json()).content
    paged = owner_client.get(f"/api/jobs/{job.id}/metrics?after_seq=10&limit=7")
    assert paged.content == JsonResponse(paged.json()).content and len(paged.json()["points"]) == 7


def test_concurrent_requests_for_one_history_read_it_once(monkeypatch):
    import threading
    import time

    reads = []

    def slow_read(rows, max_points):
        reads.append(max_points)
        time.sleep(0.2)  # a long history being read: the other requests arrive meanwhile
        return metrics_query.DrawnHistory(b"[]", 0, 0, None)

    monkeypatch.setattr(metrics_query, "_read_history", slow_read)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(metrics_query.drawn_history(None, 100, ("job", 7))))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == 8 and len({id(answer) for answer in answers}) == 1
    assert reads == [100]
    metrics_query.drawn_history(None, 100, ("job", 8))  # another history (a new last_seq) is read anew
    assert reads == [100, 100] and not metrics_query._reading


def test_a_failed_read_is_not_cached_and_the_next_request_reads_again(monkeypatch):
    calls = []

    def failing_read(rows, max_points):
        calls.append(1)
        raise RuntimeError("database went away")

    monkeypatch.setattr(metrics_query, "_read_history", failing_read)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            metrics_query.drawn_history(None, 100, ("job", 9))
    assert len(calls) == 2 and not metrics_query._cache and not metrics_query._reading

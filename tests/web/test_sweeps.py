"""Rank sweeps: one job per rank in one transaction, the alpha rule, the sweep page, the API, ownership."""

from __future__ import annotations

import math

import pytest
from django.test import Client

from webapp.compare.actions import SweepRejected, create_sweep
from webapp.jobs.models import Job, Sweep

from .compare_factories import finished_job
from .jobs_factories import make_base_model, make_dataset

RANKS = [1, 2, 4, 8, 16, 32]  # the tiny Llama's v_proj is 64 -> 32: rank 64 does not fit


@pytest.fixture(autouse=True)
def enqueued(monkeypatch):
    """Training messages are recorded instead of sent to the shared broker."""
    sent: list[str] = []
    monkeypatch.setattr("webapp.jobs.actions.enqueue_training", lambda job_id: sent.append(str(job_id)) or True)
    return sent


@pytest.fixture
def dataset(owner):
    return make_dataset(owner)


@pytest.fixture
def base_model(owner):
    return make_base_model(owner)


SETTINGS = {"eval_fraction": 0.1, "seed": 7, "learning_rate": 1e-4, "max_steps": 20}


@pytest.mark.parametrize("rule, fixed, alphas, rslora", [
    ("alpha=r", None, [1, 2, 4, 8, 16, 32], False),
    ("alpha=2r", None, [2, 4, 8, 16, 32, 64], False),
    ("fixed", 16.0, [16] * 6, False),
    ("rslora", 8.0, [8] * 6, True),
])
def test_it_creates_one_job_per_rank_with_the_alpha_rule(owner, dataset, base_model, enqueued,
                                                         django_capture_on_commit_callbacks, rule, fixed, alphas,
                                                         rslora):
    with django_capture_on_commit_callbacks(execute=True):
        sweep = create_sweep(owner, dataset, base_model, {**SETTINGS, "rank": 99, "alpha": 1}, [32, 1, 4, 2, 16, 8],
                             rule, fixed, 0.02, name="my sweep")
    jobs = list(sweep.jobs.order_by("rank"))
    assert sweep.ranks == RANKS and sweep.alpha_rule == rule and sweep.tolerance == 0.02
    assert [j.rank for j in jobs] == RANKS
    assert [j.alpha for j in jobs] == alphas
    assert all(j.config["lora"]["use_rslora"] is rslora for j in jobs)
    assert [j.suffix for j in jobs] == [f"my-sweep-r{r}" for r in RANKS]
    # The same seed and data split for every rank: the jobs differ only in rank and alpha.
    assert {(j.config["train"]["seed"], j.config["data"]["eval_fraction"], j.dataset_id) for j in jobs} == \
        {(7, 0.1, dataset.id)}
    assert all(j.state == Job.State.QUEUED and j.owner == owner for j in jobs)
    assert sorted(enqueued) == sorted(str(j.id) for j in jobs)  # queued after the commit


def test_rslora_without_a_fixed_alpha_keeps_the_settings_alpha(owner, dataset, base_model):
    sweep = create_sweep(owner, dataset, base_model, {"alpha": 12}, [4, 16], "rslora", None, 0.01)
    assert sweep.fixed_alpha == 12.0
    assert [j.alpha for j in sweep.jobs.order_by("rank")] == [12.0, 12.0]
    # no eval fraction and no validation file: rows are held out, so the recommendation can use eval loss
    assert {j.config["data"]["eval_fraction"] for j in sweep.jobs.all()} == {0.1}


def test_it_is_all_or_nothing(owner, dataset, base_model, enqueued, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(SweepRejected) as caught:
        create_sweep(owner, dataset, base_model, SETTINGS, [1, 2, 4, 8, 16, 32, 64], "alpha=2r", None, 0.01)
    assert str(caught.value).startswith("Rank 64:") and caught.value.param == "rank"
    assert "at most 32" in str(caught.value)
    assert not Sweep.objects.exists() and not Job.objects.exists()
    assert enqueued == []


@pytest.mark.parametrize("kwargs, param", [
    ({"ranks": []}, "ranks"),
    ({"ranks": [0, 4]}, "ranks"),
    ({"ranks": "4, x"}, "ranks"),
    ({"ranks": list(range(1, 20))}, "ranks"),
    ({"alpha_rule": "alpha=3r"}, "alpha_rule"),
    ({"alpha_rule": "fixed", "fixed_alpha": None}, "fixed_alpha"),
    ({"fixed_alpha": -1.0}, "fixed_alpha"),
    ({"tolerance": 1.5}, "tolerance"),
    ({"settings": {"bogus": 1}}, "bogus"),
])
def test_it_names_the_problem(owner, dataset, base_model, kwargs, param):
    args = {"settings": {}, "ranks": [4, 8], "alpha_rule": "alpha=2r", "fixed_alpha": None, "tolerance": 0.01,
            **kwargs}
    with pytest.raises(SweepRejected) as caught:
        create_sweep(owner, dataset, base_model, **args)
    assert caught.value.param == param
    assert not Sweep.objects.exists() and not Job.objects.exists()


def test_the_form_launches_a_sweep(owner_client, owner, dataset, base_model):
    page = owner_client.get("/sweeps/new/").content.decode()
    assert 'name="eval_fraction" value="0.1"' in page
    assert 'value="1,2,4,8,16,32,64"' in page and 'name="rank"' not in page and 'name="alpha_rule"' in page
    form = {"dataset": dataset.id, "base_model": base_model.id, "ranks": "2,8", "alpha_rule": "alpha=r",
            "tolerance": "0.01", "name": "from-form"}
    from webapp.jobs.configs import default_settings
    for key, value in default_settings().items():
        if key not in ("rank", "alpha", "use_rslora") and value is not None and value is not False:
            form.setdefault(key, value)
    response = owner_client.post("/sweeps/new/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    sweep = Sweep.objects.get()
    assert response["Location"] == f"/sweeps/{sweep.id}/"
    assert [(j.rank, j.alpha) for j in sweep.jobs.order_by("rank")] == [(2, 2.0), (8, 8.0)]

    form["ranks"] = "8,64"
    rejected = owner_client.post("/sweeps/new/", form)
    assert rejected.status_code == 400 and "rank 64" in rejected.content.decode()
    assert Sweep.objects.count() == 1


def test_the_sweep_page_recommends_a_rank(owner_client, owner):
    sweep = Sweep.objects.create(owner=owner, name="ranks", ranks=[2, 8, 32], tolerance=0.01)
    for rank, best in ((2, 2.0), (8, 1.805), (32, 1.8)):
        finished_job(owner, rank=rank, alpha=2.0 * rank, losses=[3.0, 2.0], eval_losses={2: best}, sweep=sweep,
                     suffix=f"r{rank}")
    page = owner_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert "rank 8</strong>" in page and "within 1% of the best" in page and "plateaus from rank 8" in page
    assert "/compare/?jobs=" in page  # the sweep's curves, one click away
    looser = owner_client.get(f"/sweeps/{sweep.id}/?tolerance=0.2").content.decode()
    assert "rank 2</strong>" in looser
    listing = owner_client.get("/sweeps/").content.decode()
    assert "ranks" in listing and f"/sweeps/{sweep.id}/" in listing


def test_without_eval_the_page_says_it_uses_train_loss(owner_client, owner):
    sweep = Sweep.objects.create(owner=owner, name="no-eval", ranks=[4, 16])
    finished_job(owner, rank=4, alpha=8, losses=[2.0, 1.5], sweep=sweep)
    finished_job(owner, rank=16, alpha=32, losses=[2.0, 1.2], sweep=sweep)
    page = owner_client.get(f"/sweeps/{sweep.id}/").content.decode()
    assert "rank 16</strong>" in page and "final train loss" in page and "No job has an eval loss" in page


def test_api_launches_and_describes_a_sweep(api, owner, dataset, base_model):
    response = api.post("/api/sweeps", {"dataset": f"file-{dataset.id.hex}", "base_model": base_model.name,
                                        "settings": SETTINGS, "ranks": [4, 16], "alpha_rule": "fixed",
                                        "fixed_alpha": 32, "tolerance": 0.05}, content_type="application/json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["object"] == "sweep" and body["ranks"] == [4, 16] and body["recommendation"] is None
    assert [(j["rank"], j["alpha"], j["state"]) for j in body["jobs"]] == [(4, 32.0, "queued"), (16, 32.0, "queued")]

    sweep = Sweep.objects.get(pk=body["id"])
    for job, best in zip(sweep.jobs.order_by("rank"), (1.9, 1.85), strict=True):
        finished_job(owner, rank=job.rank, alpha=job.alpha, losses=[2.0], eval_losses={1: best}, sweep=sweep)
    detail = api.get(f"/api/sweeps/{sweep.id}").json()
    assert detail["recommendation"]["rank"] == 4 and detail["recommendation"]["metric"] == "best_eval_loss"
    assert math.isclose(detail["recommendation"]["threshold"], 1.85 * 1.05)
    assert api.get(f"/api/sweeps/{sweep.id}?tolerance=0").json()["recommendation"]["rank"] == 16
    assert api.get(f"/api/sweeps/{sweep.id}?tolerance=abc").status_code == 400
    assert [s["id"] for s in api.get("/api/sweeps").json()["data"]] == [str(sweep.id)]


def test_api_reports_every_problem_and_stores_nothing(api, dataset, base_model):
    response = api.post("/api/sweeps", {"dataset": str(dataset.id), "base_model": str(base_model.id),
                                        "ranks": [8, 64]}, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "rank" and "Rank 64" in error["message"] and error["problems"]
    assert not Sweep.objects.exists() and not Job.objects.exists()
    assert api.post("/api/sweeps", {"dataset": str(dataset.id)}, content_type="application/json").status_code == 400


def test_it_validates_ownership(owner, stranger, stranger_client, dataset, base_model):
    sweep = create_sweep(owner, dataset, base_model, {}, [4, 8], "alpha=2r", None, 0.01)
    assert stranger_client.get(f"/sweeps/{sweep.id}/").status_code == 404
    assert str(sweep.id) not in stranger_client.get("/sweeps/").content.decode()
    job_ids = ",".join(str(j.id) for j in sweep.jobs.all())
    assert stranger_client.get(f"/compare/?jobs={job_ids}").status_code == 404

    from webapp.accounts.keys import create_api_key

    theirs = Client(HTTP_AUTHORIZATION=f"Bearer {create_api_key(stranger, name='t')[1]}")
    missing = theirs.get(f"/api/sweeps/{sweep.id}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert theirs.get("/api/sweeps").json()["data"] == []
    # Nor can a stranger launch a sweep on my data set or model: they answer like ids that do not exist.
    response = theirs.post("/api/sweeps", {"dataset": str(dataset.id), "base_model": str(base_model.id),
                                           "ranks": [4]}, content_type="application/json")
    assert response.status_code == 404
    with pytest.raises(SweepRejected, match="was not found"):
        create_sweep(stranger, dataset, base_model, {}, [4], "alpha=2r", None, 0.01)
    assert Sweep.objects.count() == 1

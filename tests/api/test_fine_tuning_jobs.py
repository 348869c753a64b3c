"""POST/GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id}, POST .../cancel."""

from __future__ import annotations

import json

from django.utils import timezone

from webapp.jobs.models import Job

from .conftest import make_job


def create(client, body: dict):
    return client.post("/v1/fine_tuning/jobs", json.dumps(body), content_type="application/json")


def test_it_creates_a_job(api, owner, dataset, base_model):
    response = create(api, {
        "model": "tiny-llama", "training_file": f"file-{dataset.id.hex}", "suffix": "math", "seed": 3,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.5}}},
        "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]},
    })
    assert response.status_code == 200, response.content
    body = response.json()
    job = Job.objects.get()
    assert job.owner == owner and job.state == Job.State.QUEUED and job.rank == 4 and job.suffix == "math"
    assert body["id"] == f"ftjob-{job.id.hex}" and body["object"] == "fine_tuning.job"
    assert body["status"] == "queued" and body["model"] == "tiny-llama" and body["seed"] == 3
    assert body["training_file"] == f"file-{dataset.id.hex}" and body["validation_file"] is None
    assert body["hyperparameters"]["n_epochs"] == 2 and body["hyperparameters"]["batch_size"] == 2
    assert abs(body["hyperparameters"]["learning_rate_multiplier"] - 0.5) < 1e-9
    assert body["method"]["supervised"]["hyperparameters"] == body["hyperparameters"]
    assert body["fine_tuned_model"] is None and body["finished_at"] is None and body["error"] is None
    assert body["organization_id"] == "org-lora-studio" and body["integrations"] == []
    assert body["lora"]["rank"] == 4 and body["lora"]["alpha"] == 8


def test_top_level_hyperparameters_and_defaults(api, dataset, base_model):
    response = create(api, {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}",
                            "validation_file": f"file-{dataset.id.hex}",
                            "hyperparameters": {"n_epochs": "auto", "learning_rate_multiplier": 2}})
    assert response.status_code == 200, response.content
    body = response.json()
    job = Job.objects.get()
    assert job.validation_dataset_id == dataset.id and body["validation_file"] == f"file-{dataset.id.hex}"
    assert abs(body["hyperparameters"]["learning_rate_multiplier"] - 2) < 1e-9 and job.rank == 8


def test_it_lists_newest_first_with_pagination(api, owner, dataset, base_model, stranger):
    jobs = [make_job(owner, dataset, base_model, suffix=f"j{i}") for i in range(3)]
    make_job(stranger, dataset, base_model)  # not the owner's: never listed
    listing = api.get("/v1/fine_tuning/jobs").json()
    assert [j["id"] for j in listing["data"]] == [f"ftjob-{j.id.hex}" for j in reversed(jobs)]
    first = api.get("/v1/fine_tuning/jobs", {"limit": 2}).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    rest = api.get("/v1/fine_tuning/jobs", {"limit": 2, "after": first["data"][-1]["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [f"ftjob-{jobs[0].id.hex}"] and rest["has_more"] is False


def test_it_retrieves_a_finished_job(api, job):
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, finished_at=timezone.now(), tokens_seen=1234)
    body = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}").json()
    assert body["status"] == "succeeded" and body["trained_tokens"] == 1234 and isinstance(body["finished_at"], int)
    assert body["hyperparameters"] == {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}
    assert body["seed"] == 7 and body["user_provided_suffix"] == "demo"


def test_a_failed_job_carries_an_error_object(api, job):
    Job.objects.filter(pk=job.pk).update(state=Job.State.FAILED, finished_at=timezone.now(),
                                         error_message="Training ran out of memory: lower the batch size.")
    body = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"code": "out_of_memory", "param": None,
                             "message": "Training ran out of memory: lower the batch size."}


def test_a_trained_job_names_its_adapter(api, job):
    from webapp.adapters.models import Adapter

    adapter = Adapter.objects.create(owner=job.owner, job=job, name="demo", storage_path="adapters/x",
                                     base_model=job.base_model, rank=8, alpha=16)
    body = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}").json()
    assert body["fine_tuned_model"] == f"ft:tiny-llama:demo:{adapter.id.hex}"


def test_it_cancels(api, job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/cancel")
    assert response.status_code == 200, response.content
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED and response.json()["status"] == "cancelled"
    again = api.post(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_finished_job_cannot_be_cancelled(api, job):
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, finished_at=timezone.now())
    response = api.post(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/cancel")
    assert response.status_code == 400 and "already succeeded" in response.json()["error"]["message"]
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED


def test_it_validates_ownership(stranger_api, job):
    job_id = f"ftjob-{job.id.hex}"
    for response in (stranger_api.get(f"/v1/fine_tuning/jobs/{job_id}"),
                     stranger_api.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"),
                     stranger_api.get(f"/v1/fine_tuning/jobs/{job_id}/events"),
                     stranger_api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints")):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No such fine-tuning job: '{job_id}'."
    assert stranger_api.get("/v1/fine_tuning/jobs").json()["data"] == []
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED


def test_it_requires_authentication(anonymous, job):
    job_id = f"ftjob-{job.id.hex}"
    for response in (anonymous.get("/v1/fine_tuning/jobs"), anonymous.get(f"/v1/fine_tuning/jobs/{job_id}"),
                     anonymous.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"),
                     create(anonymous, {"model": "tiny-llama"})):
        assert response.status_code == 401
    assert Job.objects.count() == 1


def test_targets_default_to_the_models_attention_projections(api, owner, dataset, base_model, tmp_path):
    from lora_engine.tiny import save_tiny_model
    from webapp.basemodels.actions import register_local_model

    register_local_model(owner, "tiny-gpt2", str(save_tiny_model(tmp_path / "gpt2", arch="gpt2")))
    training_file = f"file-{dataset.id.hex}"
    for model, expected in (("tiny-gpt2", ["c_attn"]), ("tiny-llama", ["q_proj", "v_proj"])):
        response = create(api, {"model": model, "training_file": training_file, "lora": {"rank": 4}})
        assert response.status_code == 200, response.content
        job = Job.objects.get(base_model__name=model)
        assert job.config["lora"]["targets"] == expected
    named = create(api, {"model": "tiny-gpt2", "training_file": training_file, "lora": {"targets": ["q_proj"]}})
    assert named.status_code == 400 and named.json()["error"]["param"] == "lora.targets"  # named targets are kept

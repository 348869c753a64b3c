"""Deleting an ended job (page and /api/jobs/<id>): its curves, events, checkpoints and files go; a running job
or one whose adapter exists is kept, with the reason; other users get 404. Then its data set can be deleted."""

from __future__ import annotations

from django.test import Client

from tests.web.jobs_factories import add_points, make_job
from webapp.adapters.models import Adapter
from webapp.datasets.models import Dataset
from webapp.jobs.actions import add_event
from webapp.jobs.models import Job, JobEvent, MetricPoint


def _ended_job(owner, state=Job.State.FAILED) -> Job:
    job = make_job(owner, state=state)
    add_points(job, range(1, 6))
    add_event(job, "Job failed.")
    job.output_dir.mkdir(parents=True)
    (job.output_dir / "checkpoint-5").mkdir()
    (job.output_dir / "checkpoint-5" / "optimizer.pt").write_bytes(b"x" * 100)
    return job


def test_an_ended_job_is_deleted_with_its_records_and_files_then_its_data_set_can_go(owner, owner_client,
                                                                                    django_capture_on_commit_callbacks):
    job = _ended_job(owner)
    dataset_id = job.dataset_id
    assert owner_client.post(f"/datasets/{dataset_id}/delete").status_code == 302
    assert Dataset.objects.filter(pk=dataset_id).exists()  # refused: the job uses it

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{job.id}/delete", follow=True)
    assert response.redirect_chain[-1][0] == "/jobs/" and b"deleted" in response.content
    assert not Job.objects.filter(pk=job.id).exists()
    assert not MetricPoint.objects.filter(job_id=job.id).exists() and not JobEvent.objects.filter(job_id=job.id)
    assert not job.output_dir.exists()

    owner_client.post(f"/datasets/{dataset_id}/delete")
    assert not Dataset.objects.filter(pk=dataset_id).exists()


def test_a_running_job_or_one_with_an_adapter_is_kept_with_the_reason(owner, owner_client, api):
    running = make_job(owner, state=Job.State.RUNNING)
    response = owner_client.post(f"/jobs/{running.id}/delete", follow=True)
    assert b"cancel it, and delete it once it has stopped" in response.content
    assert Job.objects.filter(pk=running.id).exists()

    trained = _ended_job(owner, state=Job.State.SUCCEEDED)
    Adapter.objects.create(owner=owner, name="keeps-it", storage_path="adapters/x", base_model=trained.base_model,
                           rank=8, alpha=16.0, job=trained)
    response = api.delete(f"/api/jobs/{trained.id}")
    assert response.status_code == 409 and "delete the adapter first" in response.json()["error"]["message"]
    assert Job.objects.filter(pk=trained.id).exists() and trained.output_dir.exists()


def test_the_api_deletes_and_other_users_get_404(owner, api, stranger_client, stranger_key):
    job = _ended_job(owner, state=Job.State.CANCELLED)
    assert stranger_client.post(f"/jobs/{job.id}/delete").status_code == 404
    assert Client(HTTP_AUTHORIZATION=f"Bearer {stranger_key}").delete(f"/api/jobs/{job.id}").status_code == 404
    assert Job.objects.filter(pk=job.id).exists()

    response = api.delete(f"/api/jobs/{job.id}")
    assert response.status_code == 200 and response.json() == {"id": str(job.id), "object": "fine_tuning.job",
                                                                "deleted": True}
    assert api.get(f"/api/jobs/{job.id}").status_code == 404

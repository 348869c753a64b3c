"""GET /v1/fine_tuning/jobs/{id}/events and /checkpoints."""

from __future__ import annotations

import datetime

from django.utils import timezone

from webapp.jobs.models import Checkpoint, JobEvent, MetricPoint


def add_history(job, steps: int = 3) -> None:
    """Messages and metric points as the worker writes them, at distinct, increasing times."""
    type(job).objects.filter(pk=job.pk).update(total_steps=steps)
    start = timezone.now() - datetime.timedelta(minutes=10)
    moments = iter(start + datetime.timedelta(seconds=i) for i in range(100))
    JobEvent.objects.filter(pk=JobEvent.objects.create(job=job, message="Job started").pk).update(
        created_at=next(moments))
    for step in range(1, steps + 1):
        point = MetricPoint.objects.create(job=job, step=step, split="train", seq=step, values={
            "step": step, "total_steps": steps, "loss": 2.0 / step, "learning_rate": 2e-4, "tokens_seen": 10 * step})
        MetricPoint.objects.filter(pk=point.pk).update(created_at=next(moments))
    point = MetricPoint.objects.create(job=job, step=steps, split="eval", seq=steps + 1,
                                       values={"step": steps, "eval_loss": 0.75, "perplexity": 2.1})
    MetricPoint.objects.filter(pk=point.pk).update(created_at=next(moments))
    event = JobEvent.objects.create(job=job, level="warning", message="Job finished", data={"steps": steps})
    JobEvent.objects.filter(pk=event.pk).update(created_at=next(moments))


def test_it_lists_events_newest_first(api, job):
    add_history(job)
    body = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/events").json()
    messages = [e["message"] for e in body["data"]]
    assert messages == ["Job finished", "Step 3/3: validation loss=0.7500", "Step 3/3: training loss=0.6667",
                        "Step 2/3: training loss=1.0000", "Step 1/3: training loss=2.0000", "Job started"]
    assert body["has_more"] is False
    first = body["data"][0]
    assert first["object"] == "fine_tuning.job.event" and first["type"] == "message" and first["level"] == "warn"
    assert first["data"] == {"steps": 3} and isinstance(first["created_at"], int)
    metrics = body["data"][2]
    assert metrics["type"] == "metrics" and metrics["data"]["train_loss"] == 2.0 / 3
    assert metrics["data"]["step"] == 3 and metrics["data"]["total_steps"] == 3
    assert body["data"][1]["data"]["valid_loss"] == 0.75
    assert len({e["id"] for e in body["data"]}) == 6


def test_it_pages_through_events_without_gaps_or_repeats(api, job):
    add_history(job, steps=5)
    seen, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/events", params).json()
        seen += [e["id"] for e in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    everything = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/events", {"limit": 100}).json()
    assert seen == [e["id"] for e in everything["data"]] and len(seen) == 8


def test_bad_event_cursor(api, job, owner, dataset, base_model):
    from .conftest import make_job

    other = make_job(owner, dataset, base_model)
    add_history(other)
    foreign = api.get(f"/v1/fine_tuning/jobs/ftjob-{other.id.hex}/events").json()["data"][0]["id"]
    for after in ("ftevent-zz", "nonsense", foreign):
        response = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/events", {"after": after})
        assert response.status_code == 400 and response.json()["error"]["param"] == "after"


def test_it_lists_checkpoints(api, job):
    for step in (2, 4, 6):
        Checkpoint.objects.create(job=job, step=step, path=f"jobs/{job.id}/checkpoint-{step}",
                                  metrics={"loss": 1.0 / step, "eval_loss": 0.5 if step == 6 else None})
    body = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/checkpoints").json()
    assert [c["step_number"] for c in body["data"]] == [6, 4, 2] and body["has_more"] is False
    newest = body["data"][0]
    assert newest["object"] == "fine_tuning.job.checkpoint" and newest["id"].startswith("ftckpt-")
    assert newest["fine_tuning_job_id"] == f"ftjob-{job.id.hex}"
    assert newest["fine_tuned_model_checkpoint"] == f"ft:tiny-llama:demo:{job.id.hex}:ckpt-step-6"
    assert newest["metrics"]["step"] == 6 and newest["metrics"]["train_loss"] == 1.0 / 6
    assert newest["metrics"]["valid_loss"] == 0.5
    page = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/checkpoints", {"limit": 2}).json()
    assert page["has_more"] is True
    rest = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/checkpoints",
                   {"limit": 2, "after": page["last_id"]}).json()
    assert [c["step_number"] for c in rest["data"]] == [2]
    assert api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/checkpoints",
                   {"after": "ftckpt-zz"}).status_code == 400


def test_it_validates_ownership(stranger_api, job):
    add_history(job)
    for suffix in ("events", "checkpoints"):
        assert stranger_api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/{suffix}").status_code == 404


def test_it_requires_authentication(anonymous, job):
    for suffix in ("events", "checkpoints"):
        assert anonymous.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/{suffix}").status_code == 401


def test_each_step_is_listed_once_and_the_page_log_keeps_its_step_lines(api, owner_client, owner, dataset,
                                                                       base_model):
    from webapp.jobs.leases import claim_job, record_metric_points

    from .conftest import make_job

    job = make_job(owner, dataset, base_model, state="queued", total_steps=4)
    lease = claim_job(job.pk, "w1")
    train = [{"step": s, "split": "train", "values": {"loss": 1.0 / s}} for s in (1, 2, 3, 4)]
    record_metric_points(lease, [*train, {"step": 4, "split": "eval", "values": {"eval_loss": 0.5}}],
                         {"current_step": 4, "total_steps": 4})
    events = api.get(f"/v1/fine_tuning/jobs/ftjob-{job.id.hex}/events", {"limit": 100}).json()["data"]
    steps = [(e["data"].get("step"), e["type"]) for e in events if e["message"].startswith("Step ")]
    assert sorted(steps) == [(1, "metrics"), (2, "metrics"), (3, "metrics"), (4, "metrics"), (4, "metrics")]
    assert any(e["type"] == "message" for e in events)  # "Worker w1 picked up the job", "Training started"
    log = owner_client.get(f"/api/jobs/{job.id}/log").json()["data"]
    assert "Step 4/4: training loss 0.2500" in [e["message"] for e in log]  # the job page's log is unchanged

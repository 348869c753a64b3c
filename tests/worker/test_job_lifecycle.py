"""The job actions a worker relies on, in-process (fast): validation, cancel, claims, replayed steps, the reaper."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from lora_engine.callbacks import RunInfo
from lora_engine.config import RunConfig
from lora_engine.errors import TrainingOutOfMemory
from tests.conftest import make_user
from tests.worker.conftest import TINY_RUN
from webapp.jobs.actions import JobRejected, cancel_job, create_job
from webapp.jobs.leases import cancel_flag, claim_job, record_metric_points, record_run_info, renew_lease
from webapp.jobs.models import Job, JobEvent, MetricPoint
from webapp.jobs.reaper import reap_expired_leases
from worker.errors import describe_failure


@pytest.fixture
def job(owner, dataset, base_model) -> Job:
    return create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 10})


def expire(job: Job) -> None:
    Job.objects.filter(pk=job.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_it_creates_a_queued_job_with_an_estimate(owner, dataset, base_model):
    job = create_job(owner, dataset, base_model, {"rank": "16", "alpha": 32, "use_rslora": "true"}, suffix="demo")

    assert (job.state, job.rank, job.alpha, job.quantization, job.suffix) == ("queued", 16, 32.0, "none", "demo")
    config = RunConfig.from_dict(job.config)
    assert config.lora.use_rslora and config.lora.targets == ("q_proj", "v_proj")
    assert config.model == base_model.local_path and config.data.path == str(dataset.path)
    assert job.memory_estimate["lora"]["total"] < job.memory_estimate["full"]["total"]
    assert JobEvent.objects.filter(job=job, message__startswith="Job created").exists()


@pytest.mark.parametrize("values, param, words", [
    ({"rnak": 8}, "rnak", "unknown setting 'rnak'"),
    ({"targets": "q_proj,qkv_proj"}, "targets", "'qkv_proj' matches no layer"),
    ({"rank": 64}, "rank", "rank 64 is larger than layer"),
    ({"learning_rate": -1}, "learning_rate", "learning rate must be"),
    ({"batch_size": "many"}, "batch_size", "batch_size must be a whole number"),
    ({"quantization": "fp4"}, "quantization", "quantization must be one of"),
])
def test_it_rejects_bad_settings_and_stores_nothing(owner, dataset, base_model, values, param, words):
    with pytest.raises(JobRejected) as caught:
        create_job(owner, dataset, base_model, values)

    assert caught.value.param == param and words in str(caught.value)
    assert not Job.objects.exists()


def test_it_validates_ownership(owner, dataset, base_model):
    stranger = make_user("eve")
    with pytest.raises(JobRejected) as caught:
        create_job(stranger, dataset, base_model, {})
    assert caught.value.param == "dataset" and not Job.objects.exists()


def test_cancel_ends_a_queued_job_at_once_and_refuses_a_finished_one(job):
    cancel_job(job)
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED and job.finished_at is not None
    assert claim_job(job.pk, "late-worker") is None  # a delivery after the cancel trains nothing

    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED)
    with pytest.raises(JobRejected, match="already succeeded"):
        cancel_job(job)


def test_a_running_job_is_asked_to_stop(job):
    lease = claim_job(job.pk, "w1")
    assert cancel_flag(lease) is False
    cancel_job(job)
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING and job.cancel_requested and cancel_flag(lease) is True


def test_only_one_worker_claims_a_job(job):
    first = claim_job(job.pk, "w1")
    assert first is not None and first.attempt == 1
    assert claim_job(job.pk, "w2") is None  # the second delivery is dropped
    assert renew_lease(first)


def test_a_replayed_step_is_stored_once_and_seq_stays_contiguous(job):
    lease = claim_job(job.pk, "w1")
    points = [{"step": s, "split": "train", "values": {"loss": 1.0 / s}} for s in (1, 2, 3)]
    stored, _ = record_metric_points(lease, points, {"current_step": 3, "total_steps": 10})
    assert [p["seq"] for p in stored] == [1, 2, 3]

    # a resumed attempt replays steps 3 (after its checkpoint at 2) and goes on
    replay = [{"step": s, "split": "train", "values": {"loss": 9.0}} for s in (3, 4)]
    stored, updated = record_metric_points(lease, replay + [{"step": 4, "split": "eval", "values": {}}], None)
    assert [(p["seq"], p["step"], p["split"]) for p in stored] == [(4, 4, "train"), (5, 4, "eval")]
    assert updated.last_seq == 5 and MetricPoint.objects.get(job=job, step=3).values["loss"] == 1.0 / 3


def test_the_reaper_requeues_a_dead_workers_job_and_its_lease_is_lost(job):
    lease = claim_job(job.pk, "dead-worker")
    expire(job)

    assert reap_expired_leases() == {job.pk: "requeued"}
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED and job.lease_owner == ""
    assert not renew_lease(lease)  # the dead worker, if it wakes up, finds it no longer holds the job
    assert cancel_flag(lease) is None
    assert record_metric_points(lease, [{"step": 1, "split": "train", "values": {}}], None) == ([], None)
    assert claim_job(job.pk, "rescuer").attempt == 2


def test_the_reaper_fails_a_job_killed_too_many_times(job, settings):
    settings.JOB_MAX_ATTEMPTS = 2
    for worker in ("w1", "w2"):
        claim_job(job.pk, worker)
        expire(job)
        reap_expired_leases()
    job.refresh_from_db()

    assert job.state == Job.State.FAILED and job.attempt == 2
    assert "stopped responding 2 times" in job.error_message
    assert "lower the micro-batch size (now 4) or the sequence length (now 32)" in job.error_message
    assert reap_expired_leases() == {}


def test_the_reaper_finishes_cancelling_a_dead_workers_job(job):
    claim_job(job.pk, "w1")
    cancel_job(job)
    expire(job)

    assert reap_expired_leases() == {job.pk: "cancelled"}


def _run_info(**fields) -> RunInfo:
    return RunInfo(**{"total_steps": 10, "start_step": 0, "trainable_params": 1, "total_params": 2,
                      "adapter_bytes": 4, "train_rows": 615, "eval_rows": 0, "device": "cpu", **fields})


def test_rows_dropped_from_training_are_a_warning_on_the_job_page(job, owner_client):
    lease = claim_job(job.pk, "w1")
    record_run_info(lease, _run_info(rows=999, skipped_rows=384, max_seq_len=64), "cpu")

    warning = JobEvent.objects.get(job=job, level="warning")
    assert warning.message.startswith("384 of 999 rows (38%) were left out of training")
    assert "max_seq_len 64" in warning.message and "raise max_seq_len" in warning.message
    assert warning.data == {"skipped_rows": 384, "rows": 999, "max_seq_len": 64}
    page = owner_client.get(f"/jobs/{job.id}/").content.decode()
    assert 'class="log-warning"' in page and "384 of 999 rows (38%)" in page


def test_no_warning_when_every_row_is_trained_on(job):
    record_run_info(claim_job(job.pk, "w1"), _run_info(rows=615, skipped_rows=0, max_seq_len=64), "cpu")
    assert JobEvent.objects.filter(job=job, message__startswith="Training started").exists()
    assert not JobEvent.objects.filter(job=job, level="warning").exists()


def test_out_of_memory_failures_tell_people_what_to_lower(job):
    config = RunConfig.from_dict(job.config)
    technical, human = describe_failure(TrainingOutOfMemory("out of memory while training"), config)

    assert "TrainingOutOfMemory" in technical
    assert "out of memory" in human and "micro-batch size (now 4)" in human and "4-bit" in human
    _, internal = describe_failure(KeyError("x"), config)
    assert "internal error (KeyError)" in internal


def test_steps_a_killed_worker_never_wrote_are_restored_from_its_checkpoint(job, tmp_path):
    from lora_engine.checkpoint import COMPLETE_MARKER, checkpoints_dir
    from worker.recorder import JobRecorder

    lease = claim_job(job.pk, "w2")
    record_metric_points(lease, [{"step": 1, "split": "train", "values": {"loss": 3.0, "attempt": 1}}], None)
    checkpoint = checkpoints_dir(tmp_path) / "step-000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE_MARKER).write_text("")
    state = {"step": 3, "losses": [3.0, 2.5, 2.0], "evals": [{"step": 3, "eval_loss": 2.2, "perplexity": 9.0}]}
    (checkpoint / "trainer_state.json").write_text(json.dumps({"state": state}))

    lost = JobRecorder(lease, output_dir=tmp_path)._lost_records(start_step=3)
    stored, _ = record_metric_points(lease, lost, None)

    assert [(p["seq"], p["step"], p["split"]) for p in stored] == [(2, 2, "train"), (3, 3, "train"), (4, 3, "eval")]
    assert MetricPoint.objects.get(job=job, step=2, split="train").values == {"loss": 2.5, "restored": True,
                                                                              "attempt": None}

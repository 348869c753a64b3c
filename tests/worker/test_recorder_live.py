"""The recorder in-process: a step goes live at once, numbered, and is stored later with the very same seq."""

from __future__ import annotations

from django.db import connection

from lora_engine.callbacks import RunInfo, StepMetrics
from tests.support.processes import wait_until
from tests.worker.conftest import TINY_RUN
from webapp.jobs import events
from webapp.jobs.actions import create_job
from webapp.jobs.leases import claim_job, record_metric_points
from webapp.jobs.models import JobEvent, MetricPoint
from worker import recorder as recorder_module
from worker.recorder import JobRecorder


def step_metrics(step: int) -> StepMetrics:
    return StepMetrics(step=step, total_steps=10, epoch=step / 10, loss=1.0 / step, learning_rate=1e-3, grad_norm=1.0,
                       tokens_seen=step * 64, tokens_per_second=100.0, elapsed_seconds=step, eta_seconds=10.0 - step,
                       memory_allocated_bytes=1, memory_peak_bytes=2)


def test_a_resumed_run_pushes_new_steps_before_storing_them_with_the_same_seq(transactional_db, owner, dataset,
                                                                              base_model, monkeypatch):
    job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 10})
    lease = claim_job(job.pk, "w1")
    # an earlier attempt stored steps 1..3 and left a checkpoint at step 2: this run replays step 3
    record_metric_points(lease, [{"step": s, "split": "train", "values": {"loss": 9.0}} for s in (1, 2, 3)], None)
    pushed: list[tuple[int, int, bool]] = []  # (seq, step, already in the database when pushed)

    def emit_metrics(job_id, points) -> bool:
        pushed.extend((p["seq"], p["step"], MetricPoint.objects.filter(job_id=job_id, step=p["step"]).exists())
                      for p in points)
        connection.close()  # this runs in the recorder's live thread
        return True

    monkeypatch.setattr(events, "emit_metrics", emit_metrics)
    monkeypatch.setattr(recorder_module, "WRITE_EVERY_SECONDS", 3600.0)  # the points' batch waits for close()
    recorder = JobRecorder(lease).start()
    recorder.on_train_start(RunInfo(total_steps=10, start_step=2, trainable_params=1, total_params=2,
                                    adapter_bytes=1, train_rows=8, eval_rows=0, device="cpu"))
    # once the start is written, the next batch waits for close(): the steps below are pushed before it
    wait_until(lambda: JobEvent.objects.filter(job=job, message__startswith="Resumed").exists(), timeout=30,
               message="the run's start to be written")
    for step in (3, 4, 5):
        recorder.on_step(step_metrics(step))
    wait_until(lambda: len(pushed) >= 2, timeout=30, message="the new steps to be pushed")
    assert recorder.close()

    assert pushed == [(4, 4, False), (5, 5, False)]  # live before the database, the replayed step not again
    stored = list(MetricPoint.objects.filter(job=job).order_by("seq").values_list("seq", "step"))
    assert stored == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert MetricPoint.objects.get(job=job, step=3).values["loss"] == 9.0
    job.refresh_from_db()
    assert (job.last_seq, job.current_step) == (5, 5)

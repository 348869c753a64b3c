"""The disk fills up: small tmpfs mounts stand in for a full data directory (as root; skipped elsewhere).

What a user would notice: an upload is refused with a message saying the server's disk is full, and nothing of
it is kept (no data set row, no partial file, the space given back); a job whose checkpoint or adapter cannot
be written fails with that message, leaves no half-written checkpoint to resume from nor an adapter to
download, and the worker trains the next job as usual.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from lora_engine.checkpoint import COMPLETE_MARKER, checkpoints_dir
from tests.reliability.results import record
from tests.support.disk import files_under
from tests.support.processes import wait_until
from tests.support.workers import write_text_jsonl
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import job_state
from webapp.adapters.models import Adapter
from webapp.datasets.models import Dataset
from webapp.jobs.actions import create_job
from webapp.jobs.models import Checkpoint, Job

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DISK_FULL = "disk is full"


def test_an_upload_to_a_full_disk_is_refused_and_nothing_is_kept(db, owner, api, owner_client, settings, small_disk,
                                                                  tmp_path):
    disk = small_disk(tmp_path / "disk", 64)
    settings.DATA_DIR, settings.FILE_UPLOAD_TEMP_DIR = disk, disk / "tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    data = write_text_jsonl(tmp_path / "big.jsonl", rows=3000).read_bytes()  # ~200 KB for a 64 KB disk
    answers = {}

    # /v1/files: a file kept in memory while parsing (written by the action) and one Django spools to disk
    answers["/v1/files"] = api.post("/v1/files", {"purpose": "fine-tune",
                                                  "file": SimpleUploadedFile("train.jsonl", data)})
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    answers["/v1/files (spooled)"] = api.post("/v1/files", {"purpose": "fine-tune",
                                                            "file": SimpleUploadedFile("train.jsonl", data)})
    # the pages' chunked upload: the first chunk fits, the second does not
    start = owner_client.post("/datasets/uploads/", json.dumps({"name": "train.jsonl", "size": len(data)}),
                              content_type="application/json").json()
    chunk = 40 * 1024
    first = owner_client.post(f"/datasets/uploads/{start['id']}/chunk?offset=0", data[:chunk],
                              content_type="application/octet-stream")
    assert first.status_code == 200, first.content
    answers["chunked upload"] = owner_client.post(f"/datasets/uploads/{start['id']}/chunk?offset={chunk}",
                                                  data[chunk:2 * chunk], content_type="application/octet-stream")

    for where, response in answers.items():
        assert response.status_code == 507, (where, response.content)
        error = response.json()["error"]
        assert DISK_FULL in error["message"] and "Free space" in error["message"], where
    assert Dataset.objects.count() == 0
    left = files_under(disk)
    assert left == []  # no partial file: the space is given back
    gone = owner_client.post(f"/datasets/uploads/{start['id']}/chunk?offset=0", b"x",
                             content_type="application/octet-stream")
    assert gone.status_code == 404  # the failed upload is forgotten, not left half-done for a resume
    # and the next upload that fits is stored as usual
    small = write_text_jsonl(tmp_path / "small.jsonl", rows=32).read_bytes()
    stored = api.post("/v1/files", {"purpose": "fine-tune", "file": SimpleUploadedFile("small.jsonl", small)})
    assert stored.status_code == 200, stored.content
    assert Dataset.objects.count() == 1
    record("fault_figures", test="test_an_upload_to_a_full_disk_is_refused_and_nothing_is_kept",
           figures={"disk KiB": 64, "upload bytes": len(data), "refused with 507": len(answers),
                    "files left after the refusals": len(left)})


def half_written(job: Job) -> list[Path]:
    """Temp files and directories, and checkpoint directories without their completeness marker."""
    leftovers = [p for p in job.output_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    root = checkpoints_dir(job.output_dir)
    return leftovers + [p for p in (root.iterdir() if root.is_dir() else []) if not (p / COMPLETE_MARKER).is_file()]


def test_a_full_disk_at_checkpoint_or_adapter_save_fails_the_job_cleanly(transactional_db, owner, base_model,
                                                                         dataset, workers, small_disk):
    run = {**TINY_RUN, "max_steps": 4, "save_every": 2}
    at_checkpoint = create_job(owner, dataset, base_model, run, suffix="full-at-checkpoint")
    small_disk(at_checkpoint.output_dir, 8)  # less than one checkpoint
    at_adapter = create_job(owner, dataset, base_model, run, suffix="full-at-adapter")
    small_disk(at_adapter.output_dir, 4)  # less than the adapter ...
    small_disk(checkpoints_dir(at_adapter.output_dir), 1024)  # ... while its checkpoints have room
    healthy = create_job(owner, dataset, base_model, run, suffix="after-the-full-disk")
    worker = workers("w1")  # the three are queued in this order; one worker takes them one by one

    for job in (at_checkpoint, at_adapter, healthy):
        wait_until(lambda j=job: job_state(j).is_terminal, timeout=120, message=f"{job.suffix} to end")
    figures = {}
    for job, what in ((at_checkpoint, "the checkpoint at step 2"), (at_adapter, "the adapter")):
        assert job.state == Job.State.FAILED, job.error
        assert DISK_FULL in job.error_message and what in job.error_message, job.error_message
        assert not Adapter.objects.filter(job=job).exists()  # nothing to download
        left = half_written(job)
        assert left == [], left
        figures[f"{job.suffix}: failed at step"] = job.current_step
        figures[f"{job.suffix}: half-written files left"] = len(left)
    assert not Checkpoint.objects.filter(job=at_checkpoint).exists()  # nothing to resume from
    assert not (at_adapter.output_dir / "adapter_model.safetensors").exists()
    assert set(Checkpoint.objects.filter(job=at_adapter).values_list("step", flat=True)) == {2, 4}

    assert healthy.state == Job.State.SUCCEEDED, healthy.error
    assert worker.alive() and healthy.adapter.sha256
    record("fault_figures", test="test_a_full_disk_at_checkpoint_or_adapter_save_fails_the_job_cleanly",
           figures={**figures, "next job on the same worker": healthy.state})

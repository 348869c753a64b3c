"""A merged model's GGUF export: request (page and API), the export task run in-process, the download (GGUF that
reads back, Range, sha256), one export per merge, the claim and lease reaping, disk full, ownership.

The task runs here in the test process (webapp.adapters.gguf_exports + worker.gguf_tasks.run_gguf_export); the
stack test with a real Celery worker, including a worker killed mid-export, is tests/worker/test_gguf_export_task.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from datetime import timedelta
from pathlib import Path

import gguf
import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from lora_engine.errors import disk_full_message
from webapp.adapters import gguf_exports
from webapp.adapters.merges import merge_root
from webapp.adapters.models import GGUFExport, Merge
from worker.gguf_tasks import run_gguf_export

from ._adapter_analysis_helpers import register, save_tiny_dirs


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_dirs(tmp_path_factory)


def succeeded_merge(adapter, model_dir: Path) -> Merge:
    """A succeeded merge whose merged model directory (a copy of ``model_dir``) is in the data directory."""
    merge = Merge.objects.create(owner=adapter.owner, adapter=adapter, dtype="auto", state=Merge.State.SUCCEEDED,
                                 progress=1.0, attempt=1)
    merged = merge_root(merge) / "model"
    shutil.copytree(model_dir, merged)
    merge.storage_path = str(merged.relative_to(Path(django_settings.DATA_DIR)))
    merge.save()
    return merge


@pytest.fixture
def adapter(owner, tiny_dirs, tmp_path):
    return register(owner, tiny_dirs, tmp_path)


@pytest.fixture
def merge(adapter, tiny_dirs) -> Merge:
    return succeeded_merge(adapter, tiny_dirs["llama"])


@pytest.fixture
def enqueued(monkeypatch, settings) -> list[str]:
    """Export messages sent to the broker (recorded instead of sent); no heartbeat during in-process runs."""
    settings.JOB_HEARTBEAT_SECONDS = 600
    sent: list[str] = []
    monkeypatch.setattr(gguf_exports, "enqueue_gguf_export", lambda export_id: sent.append(str(export_id)) or True)
    return sent


def body(response) -> bytes:
    return b"".join(response.streaming_content) if getattr(response, "streaming", False) else response.content


def request_export(client, merge):
    return client.post(f"/api/merges/{merge.id}/gguf", content_type="application/json")


def gguf_files(merge: Merge) -> list[str]:
    """Every GGUF-related file or directory in the merge's directory (complete, staged or partial)."""
    root = merge_root(merge)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "gguf" in p.name)


def test_it_works(api, merge, enqueued, tmp_path, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = request_export(api, merge)
    assert response.status_code == 202
    queued = response.json()
    assert (queued["object"], queued["state"], queued["stage"], queued["dtype"]) == ("gguf_export", "queued",
                                                                                     "queued", "f16")
    assert queued["merge_id"] == str(merge.id) and queued["download_url"] is None
    assert enqueued == [queued["id"]]  # sent after the commit
    assert api.get(f"/api/merges/{merge.id}").json()["gguf_export"]["state"] == "queued"
    assert api.get(f"/api/merges/{merge.id}/gguf/download").status_code == 409

    assert run_gguf_export(queued["id"]) == "succeeded"

    export = api.get(f"/api/merges/{merge.id}").json()["gguf_export"]
    assert (export["state"], export["stage"], export["progress"], export["attempt"]) == ("succeeded", "done", 1.0, 1)
    assert export["seconds"] is not None and export["error_message"] is None
    download = api.get(export["download_url"])
    data = body(download)
    assert download.status_code == 200 and data[:4] == b"GGUF"
    assert 'filename="lowrank-merged-f16.gguf"' in download["Content-Disposition"]
    assert hashlib.sha256(data).hexdigest() == export["sha256"] and len(data) == export["size_bytes"]
    assert download["ETag"] == f'"{export["sha256"]}"'
    resumed = api.get(export["download_url"], HTTP_RANGE="bytes=100-", HTTP_IF_RANGE=download["ETag"])
    assert resumed.status_code == 206 and data[:100] + body(resumed) == data

    (tmp_path / "model.gguf").write_bytes(data)
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    meta = {name: field.contents() for name, field in reader.fields.items()}
    assert (meta["general.type"], meta["general.architecture"], meta["general.name"]) == ("model", "llama",
                                                                                          "lowrank-merged")
    assert "token_embd.weight" in {t.name for t in reader.tensors}
    assert gguf_files(merge) == ["model-f16.gguf"]  # nothing staged or partial left


def test_the_page_exports_and_offers_the_download(owner_client, merge, enqueued, django_capture_on_commit_callbacks):
    page = owner_client.get(f"/adapters/{merge.adapter_id}/").content.decode()
    assert 'data-testid="gguf-export-button"' in page and "gguf-download" not in page

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/adapters/{merge.adapter_id}/merges/{merge.id}/gguf")
    assert response.status_code == 302 and response["Location"] == f"/adapters/{merge.adapter_id}/"
    export = GGUFExport.objects.get(merge=merge)
    assert (export.state, enqueued) == ("queued", [str(export.id)])
    page = owner_client.get(f"/adapters/{merge.adapter_id}/").content.decode()
    assert 'data-testid="gguf-state">queued' in page and "gguf-export-button" not in page

    assert run_gguf_export(str(export.id)) == "succeeded"
    page = owner_client.get(f"/adapters/{merge.adapter_id}/").content.decode()
    url = f"/adapters/{merge.adapter_id}/merges/{merge.id}/gguf/download"
    assert f'href="{url}"' in page and "gguf-export-button" not in page
    download = owner_client.get(url)
    assert download.status_code == 200 and body(download)[:4] == b"GGUF"


def test_one_export_per_merge(api, owner_client, merge, enqueued, django_capture_on_commit_callbacks):
    first, again = request_export(api, merge), request_export(api, merge)
    assert (first.status_code, again.status_code) == (202, 200)  # a second click returns the same export
    assert first.json()["id"] == again.json()["id"] and GGUFExport.objects.count() == 1
    owner_client.post(f"/adapters/{merge.adapter_id}/merges/{merge.id}/gguf")
    assert GGUFExport.objects.count() == 1

    export = GGUFExport.objects.get()
    assert run_gguf_export(str(export.id)) == "succeeded"
    assert run_gguf_export(str(export.id)) == "dropped"  # a redelivered message does not build it twice
    done = request_export(api, merge)
    assert done.status_code == 200 and done.json()["state"] == "succeeded"

    # a succeeded export whose file is gone is queued again; so is a failed one (fresh attempts, error cleared)
    gguf_exports.gguf_path(export).unlink()
    assert api.get(f"/api/merges/{merge.id}").json()["gguf_export"]["download_url"] is None
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        requeued = request_export(api, merge)
    assert requeued.status_code == 202 and requeued.json()["id"] == str(export.id)
    assert enqueued == [str(export.id)]
    lease = gguf_exports.claim_gguf_export(export.id, "w")
    gguf_exports.fail_gguf_export(lease, "Traceback ...", "The merged model cannot be exported to GGUF: boom")
    retried = request_export(api, merge)
    export.refresh_from_db()
    assert retried.status_code == 202 and (export.state, export.attempt, export.error_message) == ("queued", 0, "")


def test_only_a_succeeded_merge_with_its_files_can_be_exported(api, owner_client, adapter, merge, enqueued):
    running = Merge.objects.create(owner=adapter.owner, adapter=adapter, dtype="fp32", state=Merge.State.RUNNING)
    response = request_export(api, running)
    error = response.json()["error"]
    assert response.status_code == 409 and error["code"] == "merge_not_exportable"
    assert "only a succeeded merge can be exported" in error["message"]
    page = owner_client.post(f"/adapters/{adapter.id}/merges/{running.id}/gguf", follow=True)
    assert "only a succeeded merge can be exported" in page.content.decode()

    shutil.rmtree(merge_root(merge) / "model")
    gone = request_export(api, merge)
    assert gone.status_code == 409 and "merge the adapter again" in gone.json()["error"]["message"]
    assert not GGUFExport.objects.exists()


def test_it_validates_ownership(stranger_client, staff_client, api, merge, enqueued):
    export_id = request_export(api, merge).json()["id"]
    assert run_gguf_export(export_id) == "succeeded"
    adapter_id = merge.adapter_id
    for url in (f"/api/merges/{merge.id}/gguf/download", f"/adapters/{adapter_id}/merges/{merge.id}/gguf/download",
                f"/api/merges/{merge.id}"):
        assert stranger_client.get(url).status_code == 404, url
    assert stranger_client.post(f"/adapters/{adapter_id}/merges/{merge.id}/gguf").status_code == 404
    assert stranger_client.post(f"/api/merges/{merge.id}/gguf", content_type="application/json").status_code == 404
    assert GGUFExport.objects.count() == 1
    assert staff_client.get(f"/api/merges/{merge.id}/gguf/download").status_code == 200


def test_no_download_is_offered_until_the_export_succeeded(api, owner_client, merge, enqueued):
    export, _ = gguf_exports.request_gguf_export(merge)
    lease = gguf_exports.claim_gguf_export(export.id, "worker-a")
    # a worker got as far as writing the complete file, but has not recorded success
    gguf_exports.gguf_path(export).write_bytes(b"GGUF" + b"\0" * 64)
    urls = (f"/api/merges/{merge.id}/gguf/download", f"/adapters/{merge.adapter_id}/merges/{merge.id}/gguf/download")
    for url in urls:
        assert (api if url.startswith("/api") else owner_client).get(url).status_code == 409, url
    running = api.get(f"/api/merges/{merge.id}").json()["gguf_export"]
    assert (running["state"], running["stage"], running["download_url"]) == ("running", "writing", None)
    assert "offered for download once it has succeeded" in api.get(urls[0]).json()["error"]["message"]

    gguf_exports.fail_gguf_export(lease, "boom", "The merged model cannot be exported to GGUF: no tokenizer")
    failed = api.get(urls[0])
    assert failed.status_code == 409 and "no tokenizer" in failed.json()["error"]["message"]
    page = owner_client.get(f"/adapters/{merge.adapter_id}/").content.decode()
    assert "gguf-download" not in page and "no tokenizer" in page and "Export GGUF again" in page


def test_an_export_is_claimed_once_and_a_dead_workers_lease_is_reaped(merge, enqueued, settings,
                                                                      django_capture_on_commit_callbacks):
    export, _ = gguf_exports.request_gguf_export(merge)
    first = gguf_exports.claim_gguf_export(export.id, "worker-a")
    assert first is not None and first.attempt == 1
    assert gguf_exports.claim_gguf_export(export.id, "worker-b") is None
    assert run_gguf_export(str(export.id)) == "dropped"

    GGUFExport.objects.filter(pk=export.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert gguf_exports.reap_expired_gguf_exports() == {export.id: "requeued"}
    assert enqueued == [str(export.id)]
    second = gguf_exports.claim_gguf_export(export.id, "worker-b")
    assert second.attempt == 2
    # the presumed-dead worker can no longer change anything
    assert gguf_exports.fail_gguf_export(first, "late", "late") is None
    assert gguf_exports.finish_gguf_export(first, gguf_exports.gguf_path(export), 1, "0" * 64) is None
    assert not gguf_exports.renew_gguf_lease(first) and gguf_exports.renew_gguf_lease(second)

    settings.JOB_MAX_ATTEMPTS = 2
    GGUFExport.objects.filter(pk=export.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert gguf_exports.reap_expired_gguf_exports() == {export.id: "failed"}
    export.refresh_from_db()
    assert export.state == "failed" and "stopped responding 2 times" in export.error_message


def test_a_retry_removes_what_a_killed_attempt_left(api, merge, enqueued):
    export, _ = gguf_exports.request_gguf_export(merge)
    staged = gguf_exports.staging_dir(export) / "attempt-1"
    staged.mkdir(parents=True)
    (staged / ".model-f16.gguf.partial-1234abcd").write_bytes(b"GGUF half")  # SIGKILL mid-write
    assert run_gguf_export(str(export.id)) == "succeeded"
    assert gguf_files(merge) == ["model-f16.gguf"]


def test_a_full_disk_fails_the_export_with_the_disk_full_message(api, merge, enqueued, monkeypatch):
    real_write = gguf.GGUFWriter.write_tensor_data
    calls = []

    def fills_the_disk(self, tensor, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # some tensors are on disk already: a partial file exists
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, tensor, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fills_the_disk)
    export_id = request_export(api, merge).json()["id"]
    assert run_gguf_export(export_id) == "failed"

    export = api.get(f"/api/merges/{merge.id}").json()["gguf_export"]
    assert export["state"] == "failed" and export["error_message"] == disk_full_message("the GGUF file")
    assert export["download_url"] is None and gguf_files(merge) == []  # no partial file anywhere
    assert api.get(f"/api/merges/{merge.id}/gguf/download").status_code == 409


def test_an_unsupported_architecture_fails_with_the_reason(api, staff_client, owner, tiny_dirs, tmp_path, enqueued):
    gpt2_adapter = register(owner, tiny_dirs, tmp_path, arch="gpt2", targets=("c_attn",))
    merge = succeeded_merge(gpt2_adapter, tiny_dirs["gpt2"])
    export_id = request_export(api, merge).json()["id"]
    assert run_gguf_export(export_id) == "failed"
    export = api.get(f"/api/merges/{merge.id}").json()["gguf_export"]
    assert export["error_message"].startswith("The merged model cannot be exported to GGUF:")
    assert "'gpt2'" in export["error_message"] and "llama, mistral, qwen2" in export["error_message"]
    assert "error" not in export  # the traceback is for staff
    assert "Traceback" in staff_client.get(f"/api/merges/{merge.id}").json()["gguf_export"]["error"]
    assert gguf_files(merge) == []


def test_a_queued_export_whose_message_was_lost_is_sent_again(merge, enqueued):
    from worker.celery import app
    from worker.reconciler import gguf_export_reconciler

    export, _ = gguf_exports.request_gguf_export(merge)  # no message after commit here: as if Redis lost it
    reconciler = gguf_export_reconciler(app)  # looks in the real broker; resends through `enqueued`
    assert reconciler.scan() == []  # first sighting: it may be between its commit and its enqueue
    assert reconciler.scan() == [str(export.id)]
    assert enqueued == [str(export.id)]

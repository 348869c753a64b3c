"""Merges: request (page and API), the merge task run in-process, verification, the .tar download (Range,
manifest), idempotence, the compare-and-set claim and lease reaping, ownership.

The task runs here in the test process (webapp.adapters.merges + worker.merge_tasks.run_merge); the stack test
with a real Celery worker, including a worker killed mid-merge, is tests/worker/test_merge_task.py.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.web._merge_helpers import (
    assert_manifest_matches,
    assert_merged_model_matches_peft,
    extract_archive,
    register_adapter,
    save_tiny_base,
)
from webapp.adapters import merges
from webapp.adapters.merge_archive import archive_path, build_merge_archive
from webapp.adapters.models import Merge
from worker.merge_tasks import run_merge


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("merge-base"))


@pytest.fixture
def adapter(owner, base_dir, tmp_path):
    return register_adapter(owner, base_dir, tmp_path)


@pytest.fixture
def enqueued(monkeypatch, settings) -> list[str]:
    """Merge messages sent to the broker (recorded instead of sent); no heartbeat during in-process runs."""
    settings.JOB_HEARTBEAT_SECONDS = 600
    sent: list[str] = []
    monkeypatch.setattr(merges, "enqueue_merge", lambda merge_id: sent.append(str(merge_id)) or True)
    return sent


def body(data: bytes) -> bytes:
    return data if isinstance(data, bytes) else b"".join(data)


def request_merge_api(client, adapter, dtype="auto"):
    return client.post(f"/api/adapters/{adapter.id}/merge", {"dtype": dtype}, content_type="application/json")


def test_it_works(api, adapter, base_dir, enqueued, tmp_path, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = request_merge_api(api, adapter)
    assert response.status_code == 202
    queued = response.json()
    assert (queued["state"], queued["stage"], queued["download_url"]) == ("queued", "queued", None)
    assert enqueued == [queued["id"]]  # sent after the commit
    assert api.get(f"/api/merges/{queued['id']}/download").status_code == 409

    assert run_merge(queued["id"]) == "succeeded"

    merge = api.get(f"/api/merges/{queued['id']}").json()
    assert (merge["state"], merge["stage"], merge["progress"], merge["attempt"]) == ("succeeded", "done", 1.0, 1)
    assert merge["max_abs_diff"] < 1e-4 and merge["verification"]["max_abs_diff"] == merge["max_abs_diff"]
    assert merge["peak_memory_bytes"] > 0 and merge["size_bytes"] > 0 and merge["seconds"] is not None
    assert merge["started_at"] and merge["finished_at"] and merge["error_message"] is None
    listed = api.get(f"/api/adapters/{adapter.id}/merges").json()["data"]
    assert [m["id"] for m in listed] == [merge["id"]]

    download = api.get(merge["download_url"])
    archive = body(download.getvalue())
    assert download.status_code == 200 and download["Content-Type"] == "application/x-tar"
    assert 'filename="tiny-adapter-merged-auto.tar"' in download["Content-Disposition"]
    assert hashlib.sha256(archive).hexdigest() == merge["archive_sha256"] and len(archive) == merge["archive_bytes"]
    assert download["ETag"] == f'"{merge["archive_sha256"]}"'
    # an interrupted download resumes where it stopped
    resumed = api.get(merge["download_url"], HTTP_RANGE="bytes=1000-", HTTP_IF_RANGE=download["ETag"])
    assert resumed.status_code == 206 and archive[:1000] + body(resumed.getvalue()) == archive

    folder = extract_archive(archive, tmp_path / "extracted")
    assert folder.name == "tiny-adapter-merged-auto"
    assert_manifest_matches(folder)
    assert "config.json" in {p.name for p in folder.iterdir()}
    assert_merged_model_matches_peft(folder, base_dir, adapter.path)


def test_the_page_merges_and_shows_the_result(owner_client, adapter, enqueued, django_capture_on_commit_callbacks):
    page = owner_client.get(f"/adapters/{adapter.id}/").content.decode()
    assert 'data-testid="merge-button"' in page and "Not merged yet" in page

    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/adapters/{adapter.id}/merge", {"dtype": "fp32"})
    assert response.status_code == 302 and response["Location"] == f"/adapters/{adapter.id}/"
    merge = Merge.objects.get(adapter=adapter)
    assert (merge.dtype, merge.state, enqueued) == ("fp32", "queued", [str(merge.id)])
    assert 'data-state="queued"' in owner_client.get(f"/adapters/{adapter.id}/").content.decode()

    assert run_merge(str(merge.id)) == "succeeded"
    page = owner_client.get(f"/adapters/{adapter.id}/").content.decode()
    assert 'data-state="succeeded"' in page
    assert f'href="/adapters/{adapter.id}/merges/{merge.id}/download"' in page
    merge.refresh_from_db()
    assert f"{merge.max_abs_diff:.2e}" in page
    download = owner_client.get(f"/adapters/{adapter.id}/merges/{merge.id}/download")
    assert download.status_code == 200 and body(download.getvalue())[257:262] == b"ustar"


def test_it_is_idempotent(api, adapter, enqueued, django_capture_on_commit_callbacks):
    first = request_merge_api(api, adapter)
    again = request_merge_api(api, adapter)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"] and Merge.objects.count() == 1
    assert request_merge_api(api, adapter, "bf16").json()["id"] != first.json()["id"]

    # a failed merge is queued again (fresh attempts, error cleared), not duplicated
    merge = Merge.objects.get(adapter=adapter, dtype="auto")
    lease = merges.claim_merge(merge.id, "w")
    merges.fail_merge(lease, "Traceback ...", "The merge failed: disk full")
    failed = api.get(f"/api/merges/{merge.id}").json()
    assert (failed["state"], failed["error_message"]) == ("failed", "The merge failed: disk full")
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        retried = request_merge_api(api, adapter)
    assert retried.status_code == 202 and retried.json()["id"] == str(merge.id)
    merge.refresh_from_db()
    assert (merge.state, merge.attempt, merge.error, merge.error_message) == ("queued", 0, "", "")
    assert enqueued == [str(merge.id)] and Merge.objects.count() == 2


def test_a_succeeded_merge_whose_files_are_gone_is_merged_again(api, adapter, enqueued):
    merge, _ = merges.request_merge(adapter)
    Merge.objects.filter(pk=merge.pk).update(state="succeeded", attempt=1, max_abs_diff=1e-7)
    assert api.get(f"/api/merges/{merge.id}/download").status_code == 409  # no archive on disk
    again = request_merge_api(api, adapter)
    assert again.status_code == 202 and again.json()["id"] == str(merge.id) and again.json()["state"] == "queued"


def test_it_validates_the_dtype(api, adapter):
    response = request_merge_api(api, adapter, "int4")
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "dtype" and "auto, fp16, bf16, fp32" in error["message"]
    assert not Merge.objects.exists()


def test_it_validates_ownership(stranger_client, staff, api, adapter, enqueued):
    merge_id = request_merge_api(api, adapter).json()["id"]
    urls = [f"/api/adapters/{adapter.id}/merges", f"/api/merges/{merge_id}", f"/api/merges/{merge_id}/download",
            f"/adapters/{adapter.id}/merges/{merge_id}/download"]
    for url in urls:
        assert stranger_client.get(url).status_code == 404, url
    assert stranger_client.post(f"/adapters/{adapter.id}/merge", {"dtype": "fp16"}).status_code == 404
    forbidden = stranger_client.post(f"/api/adapters/{adapter.id}/merge", {"dtype": "fp16"},
                                     content_type="application/json")
    assert forbidden.status_code == 404 and Merge.objects.count() == 1
    staff_client = type(stranger_client)()
    staff_client.force_login(staff)
    assert staff_client.get(f"/api/merges/{merge_id}").status_code == 200


def test_no_download_is_offered_until_the_merge_succeeded(api, owner_client, adapter, enqueued):
    merge_id = request_merge_api(api, adapter).json()["id"]
    merge = Merge.objects.select_related("adapter").get(pk=merge_id)
    lease = merges.claim_merge(merge.id, "worker-a")
    # a worker got as far as writing the merged model and its archive, but has not recorded success
    model_dir = merges.merge_model_dir(merge)
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    build_merge_archive(merge, model_dir)
    assert archive_path(merge).is_file()
    for url in (f"/api/merges/{merge_id}/download", f"/adapters/{adapter.id}/merges/{merge_id}/download"):
        response = api.get(url) if url.startswith("/api") else owner_client.get(url)
        assert response.status_code == 409, url
    assert "offered for download once it has succeeded" in api.get(f"/api/merges/{merge_id}/download").json()[
        "error"]["message"]
    assert api.get(f"/api/merges/{merge_id}").json()["download_url"] is None
    merges.fail_merge(lease, "boom", "The merge failed: no space left")
    failed = api.get(f"/api/merges/{merge_id}/download")
    assert failed.status_code == 409 and "no space left" in failed.json()["error"]["message"]
    page = owner_client.get(f"/adapters/{adapter.id}/").content.decode()
    assert "merge-download" not in page and "no space left" in page


def test_a_merge_is_claimed_once_and_a_dead_workers_lease_is_reaped(adapter, enqueued, settings,
                                                                    django_capture_on_commit_callbacks):
    merge, _ = merges.request_merge(adapter, "auto")
    first = merges.claim_merge(merge.id, "worker-a")
    assert first is not None and first.attempt == 1
    assert merges.claim_merge(merge.id, "worker-b") is None  # a redelivered message finds nothing to claim
    assert run_merge(str(merge.id)) == "dropped"

    Merge.objects.filter(pk=merge.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    enqueued.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert merges.reap_expired_merges() == {merge.id: "requeued"}
    assert enqueued == [str(merge.id)]
    second = merges.claim_merge(merge.id, "worker-b")
    assert second.attempt == 2
    # the presumed-dead worker can no longer change anything
    assert merges.fail_merge(first, "late", "late") is None
    assert merges.finish_merge(first, merges.merge_model_dir(merge), 1, 1, 0.0) is None
    assert not merges.renew_merge_lease(first) and merges.renew_merge_lease(second)

    settings.JOB_MAX_ATTEMPTS = 2
    Merge.objects.filter(pk=merge.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert merges.reap_expired_merges() == {merge.id: "failed"}
    merge.refresh_from_db()
    assert merge.state == "failed" and "stopped responding 2 times" in merge.error_message


def test_a_failed_merge_says_why(api, staff, adapter, enqueued):
    merge_id = request_merge_api(api, adapter).json()["id"]
    adapter.base_model.local_path = str(Path(adapter.base_model.local_path).parent / "gone")
    adapter.base_model.save()

    assert run_merge(merge_id) == "failed"

    merge = api.get(f"/api/merges/{merge_id}").json()
    assert merge["state"] == "failed" and merge["error_message"].startswith("The merge failed:")
    assert "error" not in merge  # the traceback is for staff
    staff_client = type(api)()
    staff_client.force_login(staff)
    assert "Traceback" in staff_client.get(f"/api/merges/{merge_id}").json()["error"]

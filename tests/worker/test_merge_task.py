"""A merge on real Celery workers (real Redis and PostgreSQL), through a worker killed mid-merge.

What a user would notice: the merge they requested succeeds with a verification, the download is never
offered before that (not even while a merged model already sits on the server), and a worker that dies
mid-merge does not lose it: another worker takes it over and finishes it.
"""

from __future__ import annotations

import pytest
from django.test import Client

from tests.support.processes import wait_until
from tests.web._merge_helpers import (
    assert_manifest_matches,
    assert_merged_model_matches_peft,
    extract_archive,
    register_adapter,
)
from webapp.adapters.merges import merge_model_dir, merge_root
from webapp.adapters.models import Merge
from worker.merge_tasks import PAUSE_VARIABLE

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def test_a_merge_survives_a_killed_worker_and_is_downloadable(transactional_db, owner, tiny_model_dir, tmp_path,
                                                              workers):
    adapter = register_adapter(owner, tiny_model_dir, tmp_path)
    client = Client()
    client.force_login(owner)
    doomed = workers("doomed", **{PAUSE_VARIABLE: "archiving:300"})  # holds the merge after verifying it

    merge_id = client.post(f"/api/adapters/{adapter.id}/merge", {"dtype": "auto"},
                           content_type="application/json").json()["id"]
    merge = Merge.objects.select_related("adapter").get(pk=merge_id)
    wait_until(lambda: Merge.objects.filter(pk=merge_id, state="running", progress__gte=0.6).exists(), timeout=120,
               message="the merge to be verified on the first worker")
    assert (merge_model_dir(merge) / "manifest.sha256.json").is_file()  # a merged model exists on the server ...
    download_url = f"/api/merges/{merge_id}/download"
    assert client.get(download_url).status_code == 409  # ... but it is not offered: the merge has not succeeded

    doomed.kill()  # SIGKILL the worker's whole process group, mid-merge
    assert client.get(download_url).status_code == 409
    rescuer = workers("rescuer")  # its merge reaper queues the expired lease again and it takes the merge
    wait_until(lambda: Merge.objects.filter(pk=merge_id, state__in=["succeeded", "failed"]).exists(), timeout=120,
               message="the merge to end on the second worker")

    state = client.get(f"/api/merges/{merge_id}").json()
    assert (state["state"], state["attempt"]) == ("succeeded", 2), state
    assert state["max_abs_diff"] < 1e-4 and state["peak_memory_bytes"] > 0
    assert "claimed as" in doomed.log() and "reused the complete merge" in rescuer.log()
    assert not [p.name for p in merge_root(merge).iterdir() if p.name.startswith(".")]  # nothing half-written left

    response = client.get(state["download_url"])
    assert response.status_code == 200
    folder = extract_archive(response.getvalue(), tmp_path / "download")
    assert_manifest_matches(folder)
    assert_merged_model_matches_peft(folder, tiny_model_dir, adapter.path)

"""A merged model's GGUF export on real Celery workers (real Redis and PostgreSQL), through a worker killed mid-export.

What a user would notice: after a merge, Export GGUF is answered at once (a second click returns the same
export), the download is never offered while the file is being written (not even while a half-written file
sits on the server), a worker that dies mid-export does not lose it: another worker takes it over, and the
file they download is a GGUF model llama.cpp's reader parses, with the SHA-256 the API reports.
"""

from __future__ import annotations

import hashlib
import time

import gguf
import pytest
from django.test import Client

from tests.support.processes import wait_until
from tests.web._merge_helpers import register_adapter
from webapp.adapters.gguf_exports import staging_dir
from webapp.adapters.merges import merge_root
from webapp.adapters.models import GGUFExport, Merge
from worker.gguf_tasks import PAUSE_VARIABLE

pytestmark = [pytest.mark.stack, pytest.mark.slow]


def partial_files(export: GGUFExport) -> list[str]:
    return [p.name for p in staging_dir(export).rglob("*") if p.is_file()]


def test_a_gguf_export_survives_a_killed_worker_and_downloads_as_gguf(transactional_db, owner, tiny_model_dir,
                                                                      tmp_path, workers):
    adapter = register_adapter(owner, tiny_model_dir, tmp_path)
    client = Client()
    client.force_login(owner)
    doomed = workers("doomed", **{PAUSE_VARIABLE: "writing:300"})  # holds the export after its first tensor

    merge_id = client.post(f"/api/adapters/{adapter.id}/merge", {"dtype": "auto"},
                           content_type="application/json").json()["id"]
    wait_until(lambda: Merge.objects.filter(pk=merge_id, state__in=["succeeded", "failed"]).exists(), timeout=120,
               message="the merge to end")
    assert client.get(f"/api/merges/{merge_id}").json()["state"] == "succeeded"

    requested = client.post(f"/api/merges/{merge_id}/gguf", content_type="application/json")
    again = client.post(f"/api/merges/{merge_id}/gguf", content_type="application/json")
    assert (requested.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == requested.json()["id"]
    export = GGUFExport.objects.select_related("merge__adapter").get(pk=requested.json()["id"])
    wait_until(lambda: GGUFExport.objects.filter(pk=export.pk, state="running", progress__gt=0.05).exists(),
               timeout=60, message="the first worker to be writing the GGUF")
    assert partial_files(export)  # a half-written GGUF is on the server ...
    download_url = f"/api/merges/{merge_id}/gguf/download"
    assert client.get(download_url).status_code == 409  # ... but it is not offered

    doomed.kill()  # SIGKILL the worker's whole process group, mid-export
    killed_at = time.monotonic()
    assert client.get(download_url).status_code == 409
    rescuer = workers("rescuer")  # its reaper queues the expired lease again and it takes the export
    wait_until(lambda: GGUFExport.objects.filter(pk=export.pk, state__in=["succeeded", "failed"]).exists(),
               timeout=120, message="the export to end on the second worker")
    print(f"GGUF export finished {time.monotonic() - killed_at:.1f} s after its worker was killed")

    state = client.get(f"/api/merges/{merge_id}").json()["gguf_export"]
    assert (state["state"], state["attempt"]) == ("succeeded", 2), state
    assert f"GGUF export {export.pk}: claimed as" in doomed.log()
    assert f"GGUF export {export.pk}: succeeded" in rescuer.log()
    assert not staging_dir(export).exists()  # nothing half-written left
    assert not [p.name for p in merge_root(export.merge).iterdir() if p.name.startswith(".")]

    response = client.get(state["download_url"])
    data = b"".join(response.streaming_content)
    assert response.status_code == 200 and hashlib.sha256(data).hexdigest() == state["sha256"]
    (tmp_path / "model.gguf").write_bytes(data)
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    meta = {name: field.contents() for name, field in reader.fields.items()}
    assert (meta["general.type"], meta["general.architecture"]) == ("model", "llama")
    assert meta["llama.block_count"] == 2 and "token_embd.weight" in {t.name for t in reader.tensors}

"""Adapter analysis (ΔW spectra), rank reduction and the adapter's GGUF export: pages, API, ownership.

A merged model's GGUF export (built by a worker) is tests/web/test_merge_gguf.py."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import gguf
import pytest
import torch
from django.test import Client

from lora_engine.errors import disk_full_message
from lora_engine.lora_factors import read_lora_factors
from webapp.adapters.actions import derived_path_for
from webapp.adapters.models import Adapter

from ._adapter_analysis_helpers import RANK, TRUE_RANK, register, save_tiny_dirs


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_dirs(tmp_path_factory)

@pytest.fixture
def adapter(owner, tiny_dirs, tmp_path) -> Adapter:
    return register(owner, tiny_dirs, tmp_path)


def deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return {m: f.delta_weight(torch.float64) for m, f in read_lora_factors(adapter_dir).layers.items()}


def post_json(client: Client, url: str, body) -> object:
    return client.post(url, data=json.dumps(body), content_type="application/json")


def test_it_works(api, adapter, settings):
    response = api.get(f"/api/adapters/{adapter.id}/analysis")
    assert response.status_code == 200
    data = response.json()
    dense = deltas(adapter.path)
    assert [layer["module"] for layer in data["layers"]] == sorted(dense) and len(dense) == 4
    for layer in data["layers"]:
        expected = torch.linalg.svdvals(dense[layer["module"]])[:RANK]
        torch.testing.assert_close(torch.tensor(layer["singular_values"], dtype=torch.float64), expected,
                                   rtol=1e-6, atol=1e-9)
        assert layer["rank"] == RANK and layer["effective_rank_99"] == TRUE_RANK
        assert 1 <= layer["effective_rank_90"] <= TRUE_RANK
        assert layer["singular_values"][TRUE_RANK] < 1e-6 * layer["singular_values"][0]
    summary = data["summary"]
    assert (summary["paid_rank"], summary["suggested_rank"], summary["max_effective_rank_99"]) == (8, 2, 2)
    assert summary["sentence"].startswith("r=8 but layers use ~2 directions for 99% of ΔW")
    assert "adapter_dir" not in data

    # cached in DATA_DIR: answered without the adapter's files once computed
    assert (Path(settings.DATA_DIR) / "derived" / f"adapter-{adapter.id.hex}" / "analysis.json").is_file()
    (adapter.path / "adapter_model.safetensors").rename(adapter.path / "moved-away")
    assert api.get(f"/api/adapters/{adapter.id}/analysis").json()["summary"] == summary


def test_page_shows_the_summary_and_the_tools(owner_client, adapter):
    page = owner_client.get(f"/adapters/{adapter.id}/analysis")
    assert page.status_code == 200
    body = page.content.decode()
    assert "r=8 but layers use ~2 directions for 99% of ΔW" in body
    assert "js/adapter_analysis.js" in body and "vendor/uplot/uPlot.iife.min.js" in body
    assert f'action="/adapters/{adapter.id}/reduce"' in body and "model.layers.1.self_attn.v_proj" in body
    detail = owner_client.get(f"/adapters/{adapter.id}/").content.decode()
    assert f"/adapters/{adapter.id}/analysis" in detail and f"/adapters/{adapter.id}/gguf" in detail


def test_reduce_to_the_effective_rank_keeps_delta_w_exactly(api, adapter):
    response = post_json(api, f"/api/adapters/{adapter.id}/reduce", {"rank": TRUE_RANK})
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["rank"], body["base_model"]) == ("lowrank-r2", 2, "tiny-llama")
    assert body["reduction"]["energy_kept"] == pytest.approx(1.0, abs=1e-9)
    reduced = Adapter.objects.get(pk=body["id"])
    assert reduced.config["lineage"] == f"reduced from {adapter.id} by truncated SVD"
    assert reduced.base_model_id == adapter.base_model_id and reduced.owner_id == adapter.owner_id
    original, smaller = deltas(adapter.path), deltas(reduced.path)
    for module, delta in original.items():
        torch.testing.assert_close(smaller[module], delta, rtol=1e-5, atol=1e-6)
    assert reduced.trainable_params == adapter.trainable_params // 4

    again = post_json(api, f"/api/adapters/{adapter.id}/reduce", {"rank": TRUE_RANK})
    assert again.json()["id"] == body["id"] and Adapter.objects.count() == 2

    lossy = post_json(api, f"/api/adapters/{adapter.id}/reduce", {"rank": 1}).json()
    assert 0 < lossy["reduction"]["energy_kept"] < 0.999


@pytest.mark.parametrize("rank", [8, 0, "two", None])
def test_reduce_rejects_bad_ranks_and_stores_nothing(api, adapter, settings, rank):
    response = post_json(api, f"/api/adapters/{adapter.id}/reduce", {"rank": rank})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "from 1 to 7" in error["message"] and error["param"] == "rank"
    assert Adapter.objects.count() == 1
    assert len(list((Path(settings.DATA_DIR) / "adapters").iterdir())) == 1


def test_reduce_form_writes_the_adapter_and_says_what_it_kept(owner_client, adapter):
    response = owner_client.post(f"/adapters/{adapter.id}/reduce", {"rank": "2"}, follow=True)
    reduced = Adapter.objects.exclude(pk=adapter.pk).get()
    assert response.redirect_chain[-1][0] == f"/adapters/{reduced.id}/"
    assert "keeps 100.00% of ΔW" in response.content.decode()
    bad = owner_client.post(f"/adapters/{adapter.id}/reduce", {"rank": "99"})
    assert bad.status_code == 400 and "from 1 to 7" in bad.content.decode()


def read_gguf(response, tmp_path: Path, name: str) -> gguf.GGUFReader:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    path = tmp_path / name
    path.write_bytes(b"".join(response.streaming_content))
    return gguf.GGUFReader(path)


def test_adapter_gguf_download(owner_client, api, adapter, tmp_path):
    reader = read_gguf(owner_client.get(f"/adapters/{adapter.id}/gguf"), tmp_path, "a.gguf")
    meta = {name: field.contents() for name, field in reader.fields.items()}
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 16.0)
    names = {t.name for t in reader.tensors}
    assert names == {f"blk.{i}.{m}.weight.lora_{ab}" for i in (0, 1) for m in ("attn_q", "attn_v") for ab in "ab"}
    ranged = api.get(f"/api/adapters/{adapter.id}/gguf", HTTP_RANGE="bytes=0-3")
    assert ranged.status_code == 206 and b"".join(ranged.streaming_content) == b"GGUF"


def test_adapter_gguf_on_a_full_disk_says_so_and_keeps_nothing(owner_client, api, adapter, monkeypatch):
    def fills_the_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fills_the_disk)
    response = api.get(f"/api/adapters/{adapter.id}/gguf")
    error = response.json()["error"]
    assert response.status_code == 507 and error["code"] == "disk_full"
    assert error["message"] == disk_full_message("the adapter's GGUF file")
    page = owner_client.get(f"/adapters/{adapter.id}/gguf", follow=True)
    assert page.redirect_chain[-1][0] == f"/adapters/{adapter.id}/" and "disk is full" in page.content.decode()
    assert not [p for p in derived_path_for(adapter).rglob("*") if "gguf" in p.name]


def test_unsupported_architecture_says_which_are_supported(owner, owner_client, api, tiny_dirs, tmp_path):
    adapter = register(owner, tiny_dirs, tmp_path, arch="gpt2", targets=("c_attn",))
    response = api.get(f"/api/adapters/{adapter.id}/gguf")
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "'gpt2'" in message and "llama, mistral, qwen2" in message
    page = owner_client.get(f"/adapters/{adapter.id}/gguf", follow=True)
    assert page.redirect_chain[-1][0] == f"/adapters/{adapter.id}/" and "llama, mistral, qwen2" in page.content.decode()


def test_it_validates_ownership(stranger_client, adapter):
    for url in (f"/adapters/{adapter.id}/analysis", f"/api/adapters/{adapter.id}/analysis",
                f"/adapters/{adapter.id}/gguf", f"/api/adapters/{adapter.id}/gguf"):
        assert stranger_client.get(url).status_code == 404, url
    assert stranger_client.post(f"/adapters/{adapter.id}/reduce", {"rank": "2"}).status_code == 404
    assert post_json(stranger_client, f"/api/adapters/{adapter.id}/reduce", {"rank": 2}).status_code == 404
    assert Adapter.objects.count() == 1
    assert Client().get(f"/api/adapters/{adapter.id}/analysis").status_code == 401
    assert Client().get(f"/adapters/{adapter.id}/analysis").status_code == 302

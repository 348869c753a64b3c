"""Adapter pages and API: upload (PEFT, safetensors only), download (zip, Range, manifest), delete, ownership."""

from __future__ import annotations

import hashlib
import html
import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from lora_engine.tiny import build_tiny_model, save_tiny_model
from webapp.adapters.models import Adapter
from webapp.basemodels.actions import register_local_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", arch="llama")


@pytest.fixture
def base_model(owner, tiny_dir):
    return register_local_model(owner, "tiny", str(tiny_dir))


def peft_adapter_files(tmp_path: Path, hidden_size: int = 64, rank: int = 4) -> dict[str, bytes]:
    """An adapter made by peft itself (an independent producer), as uploaded file contents."""
    import peft

    model = build_tiny_model("llama", hidden_size=hidden_size)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path / f"peft-{hidden_size}-{rank}"
    peft_model.save_pretrained(out)
    return {name: (out / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}


def upload(client: Client, base_model, files: dict[str, bytes], name: str = "my adapter"):
    uploads = [SimpleUploadedFile(file_name, content) for file_name, content in files.items()]
    return client.post("/adapters/upload/", {"name": name, "base_model": str(base_model.id), "files": uploads})


def stored_adapter_dirs(settings) -> list[Path]:
    root = Path(settings.DATA_DIR) / "adapters"
    return [p for p in root.iterdir()] if root.exists() else []


def test_it_uploads_a_peft_adapter(owner_client, base_model, tmp_path, settings):
    response = upload(owner_client, base_model, peft_adapter_files(tmp_path))
    adapter = Adapter.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/adapters/{adapter.id}/"
    assert (adapter.rank, adapter.alpha, adapter.targets) == (4, 8, ["q_proj", "v_proj"])
    assert adapter.trainable_params == 2 * 4 * (64 + 64) + 2 * 4 * (64 + 32)
    assert adapter.path.name != "my adapter" and adapter.path.parent.name == "adapters"
    assert owner_client.get(f"/adapters/{adapter.id}/").status_code == 200


@pytest.mark.parametrize(
    "case, expected",
    [
        ("pickle", "Pickle weights"),
        ("wrong_shape", "does not fit"),
        ("lying_header", "adapter_model.safetensors"),
        ("missing_weights", "missing"),
        ("bad_config_json", "adapter_config.json"),
    ],
)
def test_it_rejects_forged_adapters_and_keeps_nothing(owner_client, base_model, tmp_path, settings, case, expected):
    files = peft_adapter_files(tmp_path)
    if case == "pickle":
        files["adapter_model.bin"] = files.pop("adapter_model.safetensors")
    elif case == "wrong_shape":
        files = peft_adapter_files(tmp_path, hidden_size=32)
    elif case == "lying_header":
        header = json.dumps({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                             {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 10**9]}}).encode()
        files["adapter_model.safetensors"] = struct.pack("<Q", len(header)) + header + b"\0" * 16
    elif case == "missing_weights":
        del files["adapter_model.safetensors"]
    elif case == "bad_config_json":
        files["adapter_config.json"] = b"{not json"
    response = upload(owner_client, base_model, files)
    assert response.status_code == 400
    assert expected in response.content.decode()
    assert not Adapter.objects.exists()
    assert stored_adapter_dirs(settings) == []


def test_download_is_a_zip_with_a_manifest_and_supports_range(owner_client, base_model, tmp_path):
    upload(owner_client, base_model, peft_adapter_files(tmp_path))
    adapter = Adapter.objects.get()
    response = owner_client.get(f"/adapters/{adapter.id}/download")
    assert response.status_code == 200 and response["Accept-Ranges"] == "bytes"
    body = b"".join(response.streaming_content)
    archive = zipfile.ZipFile(io.BytesIO(body))
    names = set(archive.namelist())
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "MANIFEST.sha256"} <= names
    for line in archive.read("MANIFEST.sha256").decode().splitlines():
        digest, name = line.split("  ")
        assert hashlib.sha256(archive.read(name)).hexdigest() == digest
    partial = owner_client.get(f"/adapters/{adapter.id}/download", HTTP_RANGE="bytes=10-99")
    assert partial.status_code == 206
    assert partial["Content-Range"] == f"bytes 10-99/{len(body)}"
    assert b"".join(partial.streaming_content) == body[10:100]
    unsatisfiable = owner_client.get(f"/adapters/{adapter.id}/download", HTTP_RANGE=f"bytes={len(body) + 5}-")
    assert unsatisfiable.status_code == 416


def test_it_validates_ownership(owner_client, stranger_client, base_model, tmp_path):
    upload(owner_client, base_model, peft_adapter_files(tmp_path))
    adapter = Adapter.objects.get()
    for url in (f"/adapters/{adapter.id}/", f"/adapters/{adapter.id}/download", f"/api/adapters/{adapter.id}",
                f"/api/adapters/{adapter.id}/download"):
        assert stranger_client.get(url).status_code == 404, url
    assert stranger_client.post(f"/adapters/{adapter.id}/delete").status_code == 404
    assert stranger_client.get("/api/adapters/").json()["data"] == []
    assert Client().get(f"/adapters/{adapter.id}/").status_code == 302
    assert Client().get(f"/api/adapters/{adapter.id}").status_code == 401


def test_delete_removes_the_row_and_the_files(owner_client, base_model, tmp_path,
                                              django_capture_on_commit_callbacks):
    upload(owner_client, base_model, peft_adapter_files(tmp_path))
    adapter = Adapter.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/adapters/{adapter.id}/delete")
    assert response.status_code == 302
    assert not Adapter.objects.exists()
    assert not adapter.path.exists()


def test_api_lists_and_describes_adapters(api, base_model, owner_client, tmp_path):
    upload(owner_client, base_model, peft_adapter_files(tmp_path))
    listed = api.get("/api/adapters/").json()["data"]
    assert [a["rank"] for a in listed] == [4]
    detail = api.get(f"/api/adapters/{listed[0]['id']}").json()
    assert detail["base_model"] == "tiny" and detail["download_url"].endswith("/download")


def test_the_training_configuration_is_json_without_server_paths(owner_client, base_model, tmp_path):
    from django.conf import settings as django_settings

    upload(owner_client, base_model, peft_adapter_files(tmp_path))
    adapter = Adapter.objects.get()
    adapter.config = {"model": "/srv/models/llama", "output_dir": str(django_settings.DATA_DIR / "jobs" / "x"),
                      "lora": {"rank": 8, "use_dora": False, "targets": ["q_proj", "v_proj"]},
                      "data": {"path": "/srv/data/secret.jsonl", "max_seq_len": 512, "eval_path": None}}
    adapter.save(update_fields=["config"])
    shown = owner_client.get(f"/adapters/{adapter.id}/").content.decode()
    config = html.unescape(shown.split('data-testid="config">')[1].split("</pre>")[0])
    assert '"use_dora": false' in config and '"max_seq_len": 512' in config  # JSON, not Python's repr
    assert "/srv/" not in config and "jobs" not in config and '"model"' not in config


def trained_adapter_dir(root: Path) -> tuple[Path, int]:
    """A trained adapter's directory as the engine leaves it: the adapter files plus resume checkpoints many
    times their size. Returns the directory and the size of the adapter files alone."""
    root.mkdir(parents=True)
    files = {"adapter_config.json": json.dumps({"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]}),
             "adapter_model.safetensors": "w" * 1000, "training_args.json": "{}"}
    for name, text in files.items():
        (root / name).write_text(text)
    checkpoint = root / "checkpoints" / "step-000010"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    (checkpoint / "optimizer.pt").write_bytes(b"\0" * 50_000)
    return root, sum(len(text) for text in files.values())


def test_a_trained_adapters_size_is_its_files_without_checkpoints(owner, owner_client, settings):
    from types import SimpleNamespace

    from tests.web.jobs_factories import make_job
    from webapp.adapters.actions import register_trained_adapter

    job = make_job(owner, suffix="sized")
    adapter_dir, files_size = trained_adapter_dir(Path(settings.DATA_DIR) / "jobs" / str(job.id))
    result = SimpleNamespace(adapter_dir=str(adapter_dir), trainable_params=1234, final_loss=1.0,
                             final_eval_loss=None)
    adapter = register_trained_adapter(job, result)
    assert adapter.size_bytes == files_size
    page = owner_client.get(f"/adapters/{adapter.id}/").content.decode()
    assert "<dd>1.0\xa0KB</dd>" in page  # the adapter files, not the 52 KB the directory holds
    download = owner_client.get(f"/adapters/{adapter.id}/download")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content)))
    downloaded = {"adapter_config.json", "adapter_model.safetensors", "training_args.json"}
    assert sum(archive.getinfo(name).file_size for name in downloaded) == files_size


def test_the_migration_recomputes_sizes_that_counted_checkpoints(owner, base_model, settings):
    import importlib

    from django.apps import apps

    migration = importlib.import_module("webapp.adapters.migrations.0004_adapter_size_without_checkpoints")
    adapter_dir, files_size = trained_adapter_dir(Path(settings.DATA_DIR) / "adapters" / "old-trained")
    inflated = Adapter.objects.create(owner=owner, name="old", storage_path="adapters/old-trained",
                                      base_model=base_model, rank=16, alpha=32, size_bytes=52_034)
    gone = Adapter.objects.create(owner=owner, name="gone", storage_path="adapters/missing",
                                  base_model=base_model, rank=16, alpha=32, size_bytes=777)
    migration.recompute_sizes(apps, None)
    inflated.refresh_from_db()
    gone.refresh_from_db()
    assert (inflated.size_bytes, gone.size_bytes) == (files_size, 777)

"""Shared pieces of the datasets / models page tests: the real peer files, a tiny model, chunked uploads."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

from lora_engine.tiny import save_tiny_model
from tests.support.peers import PEERS
from webapp.basemodels.actions import register_local_model

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "What colour is the sky?"},
                  {"role": "assistant", "content": "Blue, on a clear day."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"},
                  {"role": "assistant", "content": "Four."}]},
]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def peer_file(name: str) -> bytes:
    path = PEERS / name
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    return path.read_bytes()


_tiny_model: list[Path] = []


def tiny_model_dir() -> Path:
    """A tiny Llama with a chat-template tokenizer, saved once per test process (removed at exit)."""
    if not _tiny_model:
        root = Path(tempfile.mkdtemp(prefix="w1-models-"))
        atexit.register(shutil.rmtree, root, True)
        _tiny_model.append(save_tiny_model(root / "tiny-llama", arch="llama", hidden_size=64, layers=2, heads=4))
    return _tiny_model[0]


def register_tiny_model(owner, name: str = "tiny-llama"):
    return register_local_model(owner, name, str(tiny_model_dir()))


def stored_dataset_files() -> list[str]:
    """Every file under DATA_DIR/datasets (incoming included): what a failed upload must not leave behind."""
    root = Path(settings.DATA_DIR) / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def upload_in_chunks(client: Client, name: str, content: bytes, data_format: str = "auto",
                     chunk_bytes: int = 64 * 1024):
    """Drive the page's chunked-upload protocol; returns the last response (start, chunk or finish)."""
    started = client.post("/datasets/uploads/", json.dumps({"name": name, "size": len(content), "format": data_format}),
                          content_type="application/json")
    if started.status_code != 201:
        return started
    upload_id = started.json()["id"]
    for offset in range(0, len(content), chunk_bytes):
        answer = client.post(f"/datasets/uploads/{upload_id}/chunk?offset={offset}",
                             content[offset:offset + chunk_bytes], content_type="application/octet-stream")
        if answer.status_code != 200:
            return answer
    return client.post(f"/datasets/uploads/{upload_id}/finish", "{}", content_type="application/json")

"""Fixtures for the API tests: a tiny registered base model, uploaded files, jobs in any state."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from lora_engine.tiny import save_tiny_model
from tests.support.data import CHAT_ROWS, jsonl  # noqa: F401 - the tests here import them from this module
from webapp.basemodels.actions import register_local_model
from webapp.datasets.actions import create_dataset
from webapp.jobs.models import Job


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture
def base_model(owner, tiny_model_dir):
    return register_local_model(owner, "tiny-llama", str(tiny_model_dir), public=True)


@pytest.fixture
def stranger_api(stranger_key) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {stranger_key}", enforce_csrf_checks=True)


@pytest.fixture
def anonymous() -> Client:
    return Client()


def upload(client: Client, content: bytes = jsonl(CHAT_ROWS), name: str = "train.jsonl", purpose="fine-tune"):
    data = {"file": SimpleUploadedFile(name, content, content_type="application/jsonl")}
    if purpose is not None:
        data["purpose"] = purpose
    return client.post("/v1/files", data)


@pytest.fixture
def dataset(owner):
    return create_dataset(owner, "train.jsonl", [jsonl(CHAT_ROWS)])


def make_job(owner, dataset, base_model, **fields) -> Job:
    """A job row as the worker would leave it (tests of reading; creating goes through the API)."""
    config = {"lora": {"rank": 8, "alpha": 16.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"]},
              "train": {"learning_rate": 4e-4, "epochs": 2.0, "batch_size": 2, "grad_accum": 2, "seed": 7}}
    values = {"rank": 8, "alpha": 16.0, "config": config, **fields}
    return Job.objects.create(owner=owner, dataset=dataset, base_model=base_model, **values)


@pytest.fixture
def job(owner, dataset, base_model) -> Job:
    return make_job(owner, dataset, base_model, suffix="demo")

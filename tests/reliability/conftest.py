"""The reliability suite's shared pieces: a small world of objects one user owns, and the results file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from lora_engine.adapter_io import save_adapter
from lora_engine.config import LoraConfig
from lora_engine.inject import inject_lora
from lora_engine.tiny import build_tiny_model, save_tiny_model
from tests.support.data import CHAT_ROWS, jsonl  # noqa: F401 - the tests here import them from this module
from webapp.adapters.actions import upload_adapter
from webapp.adapters.models import Adapter, Merge
from webapp.basemodels.actions import register_local_model
from webapp.basemodels.models import BaseModel
from webapp.datasets.actions import create_dataset
from webapp.datasets.models import Dataset
from webapp.jobs.models import Job, JobEvent, Sweep

from . import results


def pytest_sessionfinish(session, exitstatus) -> None:
    results.write_all()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """The suite makes three users per test: hashing their passwords with PBKDF2 would dominate its time."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("rel-tiny") / "llama", arch="llama")


@pytest.fixture(scope="session")
def adapter_files(tmp_path_factory) -> dict[str, bytes]:
    """A valid rank-4 adapter for the tiny llama, as the two uploaded files' contents."""
    model = build_tiny_model("llama")
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    inject_lora(model, lora)
    out = save_adapter(model, lora, tmp_path_factory.mktemp("rel-adapter"), base_model_name_or_path="llama")
    return {name: (out / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}


@dataclass
class World:
    """One of every kind of object, all owned by ``owner`` (the base model is private)."""

    base_model: BaseModel
    dataset: Dataset
    job: Job
    adapter: Adapter
    merge: Merge


@pytest.fixture
def world(owner, tiny_model_dir, adapter_files) -> World:
    base_model = register_local_model(owner, "rel-tiny-llama", str(tiny_model_dir), public=False)
    dataset = create_dataset(owner, "train.jsonl", [jsonl(CHAT_ROWS)])
    job = Job.objects.create(
        owner=owner, dataset=dataset, base_model=base_model, state=Job.State.SUCCEEDED, suffix="rel", rank=4,
        alpha=8.0, total_steps=10, current_step=10,
        config={"lora": {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]}, "train": {"max_steps": 10}},
    )
    JobEvent.objects.create(job=job, message="Job created.")
    files = {name: SimpleUploadedFile(name, content) for name, content in adapter_files.items()}
    adapter = upload_adapter(owner, base_model, "rel-adapter", files)
    adapter.job = job
    adapter.save(update_fields=["job"])
    merge = Merge.objects.create(owner=owner, adapter=adapter, dtype="float16", state=Merge.State.QUEUED)
    return World(base_model=base_model, dataset=dataset, job=job, adapter=adapter, merge=merge)


@pytest.fixture
def objects(world, owner, owner_client) -> dict[str, str]:
    """The id of every kind of object the owner has, as a URL would carry it."""
    sweep = Sweep.objects.create(owner=owner, name="rel-sweep", ranks=[4, 8])
    world.job.sweep = sweep
    world.job.save(update_fields=["sweep"])
    ids = {"dataset": str(world.dataset.id), "job": str(world.job.id), "adapter": str(world.adapter.id),
           "merge": str(world.merge.id), "base_model": str(world.base_model.id), "sweep": str(sweep.id)}
    from webapp.playground.models import PlaygroundSession

    session = PlaygroundSession.objects.create(owner=owner, base_model=world.base_model, prompt="hello",
                                               adapter_ids=[str(world.adapter.id)])
    ids["playground"] = str(session.id)
    started = owner_client.post("/datasets/uploads/", {"name": "x.jsonl", "size": 10, "format": "auto"},
                                content_type="application/json")
    ids["upload"] = started.json()["id"]
    from webapp.accounts.keys import create_api_key

    ids["api_key"] = str(create_api_key(owner, name="rel")[0].pk)
    ids["step"] = str(_checkpoint(world).step)
    return ids


def _checkpoint(world: World):
    """A checkpoint of the world's job holding the world adapter's files (an adapter can be made of it)."""
    import shutil

    from django.conf import settings

    from webapp.jobs.models import Checkpoint

    path = Path(settings.DATA_DIR) / "jobs" / str(world.job.id) / "checkpoints" / "step-000010"
    path.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(world.adapter.path / name, path / name)
    return Checkpoint.objects.create(job=world.job, step=10, path=str(path.relative_to(settings.DATA_DIR)),
                                     metrics={"step": 10, "train_loss": 1.0})

"""The official ``openai`` package drives a whole fine-tune against a live server and a real Celery worker.

upload → create job (LoRA settings in ``extra_body``) → the job succeeds → events and checkpoints listed →
the adapter is downloaded as a zip and loaded by peft onto the tiny base model.
"""

from __future__ import annotations

import io
import time
import urllib.request
import zipfile

import openai
import pytest
import torch

from tests.support.processes import start_asgi_server, start_worker, wait_until
from tests.support.workers import wait_for_worker
from webapp.basemodels.actions import register_local_model

from .conftest import CHAT_ROWS, jsonl

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TERMINAL = ("succeeded", "failed", "cancelled")
WORKER_ENV = {"JOB_LEASE_SECONDS": "6", "JOB_HEARTBEAT_SECONDS": "1", "JOB_RECONCILE_SECONDS": "5"}


@pytest.fixture
def small_model_dir(tmp_path):
    from lora_engine.tiny import save_tiny_model

    return save_tiny_model(tmp_path / "tiny-e2e", arch="llama", hidden_size=32, layers=2, heads=4)


@pytest.fixture
def server(transactional_db, tmp_path):
    """The base URL of a live uvicorn server on the test database and DATA_DIR."""
    proc, url = start_asgi_server(tmp_path)
    yield url
    proc.stop()
    print(f"----- {proc.log_path.name} -----\n{proc.log()[-5000:]}")


@pytest.fixture
def stack(server, tmp_path):
    """The server plus a real Celery worker on the same database, Redis and DATA_DIR."""
    worker = start_worker(tmp_path, name="api-e2e", **WORKER_ENV)
    try:
        wait_for_worker(worker)
        yield server
    finally:
        worker.stop()
        print(f"----- {worker.log_path.name} -----\n{worker.log()[-5000:]}")


def wait_for_terminal(client: openai.OpenAI, job_id: str, timeout: float = 240.0):
    def finished():
        job = client.fine_tuning.jobs.retrieve(job_id)
        return job if job.status in TERMINAL else None

    return wait_until(finished, timeout=timeout, interval=1.0, message=f"{job_id} to finish")


def test_the_openai_client_fine_tunes_end_to_end(stack, owner, owner_key, small_model_dir, tmp_path):
    register_local_model(owner, "tiny-e2e", str(small_model_dir))
    client = openai.OpenAI(base_url=f"{stack}/v1", api_key=owner_key, max_retries=0, timeout=60)
    assert "tiny-e2e" in [m.id for m in client.models.list()]

    data = jsonl(CHAT_ROWS)
    uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(data) and uploaded.purpose == "fine-tune"
    assert client.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert client.files.content(uploaded.id).read() == data
    assert uploaded.id in [f.id for f in client.files.list()]

    job = client.fine_tuning.jobs.create(
        model="tiny-e2e", training_file=uploaded.id, suffix="e2e", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 25}}},
        extra_body={"lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj", "v_proj"]},
                    "settings": {"max_steps": 4, "save_every": 2, "max_seq_len": 32}},
    )
    assert job.id.startswith("ftjob-") and job.status in ("queued", "running")
    assert job.hyperparameters.batch_size == 4 and job.seed == 3
    # one worker, one job at a time: this one waits behind the first and is cancelled
    doomed = client.fine_tuning.jobs.create(model="tiny-e2e", training_file=uploaded.id,
                                            extra_body={"settings": {"max_steps": 400, "max_seq_len": 32}})
    assert client.fine_tuning.jobs.cancel(doomed.id).status in ("cancelled", "running")
    assert {job.id, doomed.id} <= {j.id for j in client.fine_tuning.jobs.list(limit=1)}  # auto-paginates

    finished = wait_for_terminal(client, job.id)
    assert finished.status == "succeeded", finished.error
    assert finished.trained_tokens and finished.finished_at >= finished.created_at
    assert finished.fine_tuned_model.startswith("ft:tiny-e2e:e2e:")
    assert wait_for_terminal(client, doomed.id).status == "cancelled"

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))  # several pages, newest first
    assert {"message", "metrics"} <= {e.type for e in events}
    steps = sorted(e.data["step"] for e in events if e.type == "metrics")
    assert steps == [1, 2, 3, 4] and len({e.id for e in events}) == len(events)
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert 4 in [c.step_number for c in checkpoints]
    assert all(c.fine_tuning_job_id == job.id and c.metrics.step == c.step_number for c in checkpoints)

    model = client.models.retrieve(finished.fine_tuned_model)
    assert model.id == finished.fine_tuned_model and model.owned_by == "alice"
    adapter_dir = download_adapter(stack, owner_key, model.model_extra["adapter_id"], tmp_path / "adapter")
    assert_peft_loads(small_model_dir, adapter_dir)


def download_adapter(url: str, key: str, adapter_id: str, out_dir):
    request = urllib.request.Request(f"{url}/api/adapters/{adapter_id}/download",
                                     headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        content = response.read()
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
        archive.extractall(out_dir)
    return out_dir


def assert_peft_loads(model_dir, adapter_dir) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        before = base(ids).logits.clone()
        tuned = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        after = tuned(ids).logits
    assert tuned.peft_config["default"].r == 4
    assert not torch.allclose(before, after), "the trained adapter should change the model's output"


def test_a_wrong_key_is_an_authentication_error(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="lsk-wrong", max_retries=0, timeout=30)
    start = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        client.fine_tuning.jobs.list()
    with pytest.raises(openai.AuthenticationError):
        client.files.list()
    assert time.monotonic() - start < 30

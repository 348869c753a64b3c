"""Adapters made from a job's checkpoints: from the job page and the API, kept when the checkpoint is pruned."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from safetensors.torch import load_file

from lora_engine import train
from lora_engine.checkpoint import checkpoints_dir
from lora_engine.config import DataConfig, LoraConfig, RunConfig, TrainConfig
from lora_engine.tiny import save_tiny_model
from tests.web.jobs_factories import make_job
from webapp.accounts.keys import create_api_key
from webapp.adapters.models import Adapter
from webapp.basemodels.actions import register_local_model
from webapp.jobs.models import Checkpoint, Job


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", arch="llama", hidden_size=32, heads=4)


@pytest.fixture
def trained_job(owner, tiny_dir, tmp_path):
    """A succeeded job whose output directory the real engine wrote: 6 steps, a checkpoint and an evaluation
    every 2, the two newest checkpoints kept (and the one of the lowest eval loss); Checkpoint rows as the worker
    records them (one per checkpoint still on disk)."""
    base_model = register_local_model(owner, "tiny", str(tiny_dir))
    job = make_job(owner, base_model=base_model, state=Job.State.SUCCEEDED, suffix="support-bot")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": f" answer {i % 3}"}) + "\n"
                            for i in range(24)))
    out = Path(settings.DATA_DIR) / "jobs" / str(job.id)
    train(RunConfig(model=str(tiny_dir), output_dir=str(out), lora=LoraConfig(rank=4, alpha=8),
                    data=DataConfig(path=str(data), max_seq_len=32, eval_fraction=0.25),
                    train=TrainConfig(max_steps=6, batch_size=4, learning_rate=5e-3, eval_every=2, save_every=2,
                                      keep_checkpoints=2)).validate())
    for path in sorted(checkpoints_dir(out).iterdir()):
        step = int(path.name.split("-")[1])
        state = json.loads((path / "trainer_state.json").read_text())["state"]
        eval_loss = next(e["eval_loss"] for e in state["evals"] if e["step"] == step)
        Checkpoint.objects.create(job=job, step=step, path=str(path.relative_to(settings.DATA_DIR)),
                                  metrics={"step": step, "train_loss": state["losses"][-1], "valid_loss": eval_loss})
    return job


def test_the_job_page_lists_checkpoints_and_makes_an_adapter_of_one(owner_client, trained_job):
    checkpoints = list(trained_job.checkpoints.order_by("step"))
    assert len(checkpoints) >= 2 and checkpoints[-1].step == 6
    page = owner_client.get(f"/jobs/{trained_job.id}/").content.decode()
    assert 'data-testid="job-checkpoints"' in page and page.count('data-testid="best-checkpoint"') == 1
    for c in checkpoints:
        assert f'data-testid="checkpoint-adapter-{c.step}"' in page

    first = checkpoints[0]
    response = owner_client.post(f"/jobs/{trained_job.id}/checkpoints/{first.step}/adapter")
    adapter = Adapter.objects.get(name=f"support-bot-step{first.step}")
    assert response.status_code == 302 and response["Location"] == f"/adapters/{adapter.id}/"
    source = Path(settings.DATA_DIR) / first.path
    assert adapter.path != source and adapter.owner == trained_job.owner and adapter.job is None
    ours, theirs = (load_file(root / "adapter_model.safetensors") for root in (adapter.path, source))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    assert (adapter.rank, adapter.alpha, adapter.final_eval_loss) == (4, 8.0, first.metrics["valid_loss"])
    assert adapter.config["checkpoint"]["step"] == first.step

    # idempotent, and the adapter outlives its checkpoint (the engine prunes it as newer ones come)
    owner_client.post(f"/jobs/{trained_job.id}/checkpoints/{first.step}/adapter")
    assert Adapter.objects.filter(config__checkpoint__step=first.step).count() == 1
    shutil.rmtree(source)
    assert owner_client.get(f"/adapters/{adapter.id}/download").status_code == 200


def test_the_api_makes_an_adapter_and_says_when_a_checkpoint_is_gone(owner, trained_job):
    api = Client(HTTP_AUTHORIZATION=f"Bearer {create_api_key(owner, name='t')[1]}")
    newest = trained_job.checkpoints.order_by("-step").first()
    made = api.post(f"/api/jobs/{trained_job.id}/checkpoints/{newest.step}/adapter")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["checkpoint"] == {"job_id": str(trained_job.id), "step": newest.step} and body["rank"] == 4
    assert api.post(f"/api/jobs/{trained_job.id}/checkpoints/{newest.step}/adapter").json()["id"] == body["id"]

    missing = api.post(f"/api/jobs/{trained_job.id}/checkpoints/999/adapter")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "step"
    oldest = trained_job.checkpoints.order_by("step").first()
    shutil.rmtree(Path(settings.DATA_DIR) / oldest.path)  # pruned by the engine after the page was drawn
    gone = api.post(f"/api/jobs/{trained_job.id}/checkpoints/{oldest.step}/adapter")
    assert gone.status_code == 409 and "no longer on disk" in gone.json()["error"]["message"]
    assert Adapter.objects.count() == 1  # nothing half-made


def test_other_users_get_404(stranger, stranger_client, trained_job):
    step = trained_job.checkpoints.first().step
    assert stranger_client.post(f"/jobs/{trained_job.id}/checkpoints/{step}/adapter").status_code == 404
    theirs = Client(HTTP_AUTHORIZATION=f"Bearer {create_api_key(stranger, name='t')[1]}")
    assert theirs.post(f"/api/jobs/{trained_job.id}/checkpoints/{step}/adapter").status_code == 404
    assert not Adapter.objects.exists()


@pytest.mark.browser
@pytest.mark.stack
def test_in_the_browser_a_checkpoint_becomes_an_adapter(transactional_db, trained_job, page, tmp_path):
    from tests.conftest import PASSWORD
    from tests.support.browser import log_in
    from tests.support.processes import start_asgi_server

    best = min((c for c in trained_job.checkpoints.all()), key=lambda c: (c.metrics["valid_loss"], c.step))
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, trained_job.owner.username, PASSWORD)
        page.goto(f"{base_url}/jobs/{trained_job.id}/")
        table = page.get_by_test_id("job-checkpoints")
        assert table.is_visible()  # open on a succeeded job
        assert page.get_by_test_id(f"checkpoint-{best.step}").get_by_test_id("best-checkpoint").is_visible()
        page.get_by_test_id(f"checkpoint-adapter-{best.step}").click()
        page.wait_for_url(lambda url: "/adapters/" in url)
        assert f"support-bot-step{best.step}" in page.locator("h1").inner_text()
        assert f"the checkpoint at step {best.step}" in page.locator(".messages").inner_text()
        page.get_by_test_id("from-checkpoint").get_by_role("link").click()  # lineage: back to the job
        page.wait_for_url(f"{base_url}/jobs/{trained_job.id}/")
    finally:
        server.stop()

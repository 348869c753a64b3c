"""Job pages: list (filter, compare), new (defaults, estimate, relaunch), detail, cancel, OOM retry."""

from __future__ import annotations

import pytest
from django.test import Client

from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel
from webapp.jobs.models import Job

from .jobs_factories import make_base_model, make_dataset, make_job


@pytest.fixture(autouse=True)
def no_broker(monkeypatch):
    """Page tests never put training messages on the shared broker."""
    sent = []
    monkeypatch.setattr("webapp.jobs.actions.enqueue_training", lambda job_id: sent.append(str(job_id)) or True)
    return sent


@pytest.fixture
def job(owner):
    return make_job(owner, suffix="my-run", rank=16, alpha=32.0)


def test_list_works(owner_client, job, stranger):
    theirs = make_job(stranger, suffix="not-mine")
    response = owner_client.get("/jobs/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "my-run" in page and "not-mine" not in page
    assert "16 / 32" in page  # rank / alpha
    assert job.dataset.name in page and job.base_model.name in page
    assert 'data-ws-path="/ws/jobs/"' in page and "Compare selected" in page
    assert str(theirs.id) not in page


def test_list_filters_by_state(owner_client, owner, job):
    make_job(owner, suffix="done-run", state=Job.State.SUCCEEDED)
    running = owner_client.get("/jobs/?state=running").content.decode()
    assert "my-run" in running and "done-run" not in running
    done = owner_client.get("/jobs/?state=succeeded").content.decode()
    assert "done-run" in done and "my-run" not in done
    assert "my-run" in owner_client.get("/jobs/?state=bogus").content.decode()  # unknown filter: all


def test_pages_need_a_login(job):
    for url in ("/jobs/", "/jobs/new/", f"/jobs/{job.id}/"):
        response = Client().get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_detail_works(owner_client, job):
    response = owner_client.get(f"/jobs/{job.id}/")
    assert response.status_code == 200
    page = response.content.decode()
    assert f'data-ws-path="/ws/jobs/{job.id}/"' in page
    assert f"/api/jobs/{job.id}/metrics" in page
    assert "uPlot.iife.min.js" in page and "job_detail.js" in page
    assert 'data-estimate-bytes="50000000"' in page
    assert "Cancel" in page and "Launch again with changes" in page


@pytest.mark.parametrize(("device", "config_device", "measure", "label"), [
    ("cpu", "auto", "rss_growth", '"peak-measure">(RSS growth since before the model loaded) </span>'),
    ("", "cpu", "rss_growth", '"peak-measure">(RSS growth since before the model loaded) </span>'),
    ("cuda:0 (NVIDIA A100)", "auto", "cuda", '"peak-measure"></span>'),
    ("", "auto", "", '"peak-measure"></span>'),
])
def test_detail_says_what_the_memory_readings_measure(owner_client, job, device, config_device, measure, label):
    job.device, job.config = device, {**job.config, "device": config_device}
    job.save()
    page = owner_client.get(f"/jobs/{job.id}/").content.decode()
    assert f'data-memory-measure="{measure}"' in page
    assert label in page


def test_detail_validates_ownership(stranger_client, staff, job):
    assert stranger_client.get(f"/jobs/{job.id}/").status_code == 404
    assert stranger_client.get("/jobs/00000000-0000-0000-0000-000000000000/").status_code == 404
    staff_client = Client()
    staff_client.force_login(staff)
    assert staff_client.get(f"/jobs/{job.id}/").status_code == 200


def test_new_form_shows_every_setting_with_defaults(owner_client, owner):
    make_dataset(owner)
    make_base_model(owner)
    page = owner_client.get("/jobs/new/").content.decode()
    assert 'name="rank" value="8"' in page
    assert 'name="alpha" value="16.0"' in page
    assert 'name="targets"' in page and 'value="q_proj,v_proj"' in page
    for name in ("quantization", "learning_rate", "schedule", "batch_size", "grad_accum", "max_seq_len",
                 "eval_fraction", "use_rslora", "gradient_checkpointing", "max_steps"):
        assert f'name="{name}"' in page
    assert "Inner dimension of the low-rank update" in page  # help text
    assert 'data-estimate-url="/api/jobs/estimate"' in page


def test_new_form_creates_a_job(owner_client, owner, no_broker, django_capture_on_commit_callbacks):
    dataset, base_model = make_dataset(owner), make_base_model(owner)
    form = {"dataset": dataset.id, "base_model": base_model.id, "suffix": "from-form", "rank": 4, "alpha": 8,
            "dropout": 0.0, "targets": "q_proj,v_proj", "quantization": "none", "learning_rate": 1e-3,
            "schedule": "constant", "warmup_steps": 0, "epochs": 1, "max_steps": 5, "batch_size": 2,
            "grad_accum": 1, "max_seq_len": 64, "eval_fraction": 0, "eval_every": 0, "save_every": 0, "seed": 1,
            "precision": "fp32", "use_dora": "on"}
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post("/jobs/new/", form)
    job = Job.objects.get(suffix="from-form")
    assert response.status_code == 302 and response["Location"] == f"/jobs/{job.id}/"
    assert (job.rank, job.alpha, job.state, job.owner) == (4, 8.0, "queued", owner)
    assert job.config["train"]["max_steps"] == 5 and job.config["lora"]["use_dora"] is True
    assert no_broker == [str(job.id)]


def test_new_form_shows_problems_and_stores_nothing(owner_client, owner):
    dataset, base_model = make_dataset(owner), make_base_model(owner)
    form = {"dataset": dataset.id, "base_model": base_model.id, "rank": 8, "alpha": 16, "dropout": 0.0,
            "targets": "not_a_layer", "quantization": "none", "learning_rate": 1e-3, "schedule": "cosine",
            "warmup_steps": 0, "epochs": 1, "batch_size": 2, "grad_accum": 1, "max_seq_len": 64,
            "eval_fraction": 0, "eval_every": 0, "save_every": 0, "seed": 1, "precision": "fp32"}
    response = owner_client.post("/jobs/new/", form)
    assert response.status_code == 400
    assert "not_a_layer" in response.content.decode()
    form.update(targets="q_proj", rank="abc")
    response = owner_client.post("/jobs/new/", form)
    assert response.status_code == 400 and "Enter a whole number" in response.content.decode()
    assert Job.objects.count() == 0


def test_new_form_refuses_a_sequence_length_beyond_the_models(owner_client, owner):
    dataset, base_model = make_dataset(owner), make_base_model(owner)  # max_position_embeddings 512
    form = {"dataset": dataset.id, "base_model": base_model.id, "rank": 8, "alpha": 16, "dropout": 0.0,
            "targets": "q_proj", "quantization": "none", "learning_rate": 1e-3, "schedule": "cosine",
            "warmup_steps": 0, "epochs": 1, "batch_size": 2, "grad_accum": 1, "max_seq_len": 2048,
            "eval_fraction": 0, "eval_every": 0, "save_every": 0, "seed": 1, "precision": "fp32"}
    response = owner_client.post("/jobs/new/", form)
    assert response.status_code == 400
    assert response.context["form"].errors["max_seq_len"] == [
        "max_seq_len 2048 is longer than tiny-llama takes (512 positions, its config's max_position_embeddings); "
        "choose a sequence length of at most 512"]
    assert "at most 512" in response.content.decode()
    assert Job.objects.count() == 0


def test_new_form_offers_only_visible_records(owner_client, owner, stranger):
    theirs = make_dataset(stranger, name="secret.jsonl")
    mine = make_base_model(owner)
    response = owner_client.post("/jobs/new/", {"dataset": theirs.id, "base_model": mine.id, "rank": 8})
    assert response.status_code == 400
    assert "secret.jsonl" not in owner_client.get("/jobs/new/").content.decode()
    assert Job.objects.count() == 0


def test_new_form_chooses_the_only_data_set_and_model(owner_client, owner):
    dataset, model = make_dataset(owner), make_base_model(owner)
    page = owner_client.get("/jobs/new/").content.decode()
    assert f'<option value="{dataset.id}" selected>' in page and f'<option value="{model.id}" selected>' in page
    make_dataset(owner, name="second.jsonl")
    assert f'<option value="{dataset.id}" selected>' not in owner_client.get("/jobs/new/").content.decode()


def test_fine_tune_on_a_data_set_preselects_the_model_of_the_latest_job(owner_client, owner, stranger):
    dataset, first, second = make_dataset(owner), make_base_model(owner, name="m1"), make_base_model(owner, name="m2")
    page = owner_client.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert "selected>" in page.split(f'<option value="{dataset.id}"')[1][:20]
    assert f'<option value="{first.id}" selected>' not in page and f'<option value="{second.id}" selected>' not in page
    make_job(owner, dataset=dataset, base_model=second)
    make_job(stranger, base_model=make_base_model(stranger, name="theirs"))  # not the owner's: not a hint
    page = owner_client.get(f"/jobs/new/?dataset={dataset.id}").content.decode()
    assert f'<option value="{second.id}" selected>' in page


def test_launch_again_with_changes_prefills_the_form(owner_client, stranger_client, job):
    page = owner_client.get(f"/jobs/new/?from={job.id}").content.decode()
    assert "Launch again with changes" in page
    assert 'name="rank" value="16"' in page and 'name="alpha" value="32.0"' in page
    assert 'name="suffix" value="my-run-2"' in page  # a distinct name for the new adapter
    assert f'<option value="{job.dataset_id}" selected>' in page
    assert stranger_client.get(f"/jobs/new/?from={job.id}").status_code == 404


def test_launch_again_suggests_a_name_no_job_has(owner_client, owner, stranger, job):
    def suggested(source) -> str:
        page = owner_client.get(f"/jobs/new/?from={source.id}").content.decode()
        return page.split('name="suffix" value="', 1)[1].split('"', 1)[0]

    make_job(stranger, suffix="my-run-2")  # another user's names do not count
    assert suggested(job) == "my-run-2"
    second = make_job(owner, suffix="my-run-2")
    assert suggested(job) == suggested(second) == "my-run-3"
    unnamed = make_job(owner, rank=4)
    assert suggested(unnamed) == f"{unnamed.base_model.name}-r4-2"
    long_name = make_job(owner, suffix="x" * 64)
    assert suggested(long_name) == "x" * 62 + "-2"


def test_cancel_works(owner_client, owner):
    queued = make_job(owner, state=Job.State.QUEUED)
    response = owner_client.post(f"/jobs/{queued.id}/cancel")
    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.state == Job.State.CANCELLED


def test_cancel_of_a_running_job_asks_the_worker(owner_client, job):
    owner_client.post(f"/jobs/{job.id}/cancel")
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING and job.cancel_requested
    assert "Cancelling" in owner_client.get(f"/jobs/{job.id}/").content.decode()


def test_cancel_validates_ownership(stranger_client, job):
    assert stranger_client.post(f"/jobs/{job.id}/cancel").status_code == 404
    job.refresh_from_db()
    assert not job.cancel_requested


def _oom_job(owner, **settings):
    job = make_job(owner, state=Job.State.FAILED, suffix="oom-run", **settings)
    job.error = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    job.error_message = "Training ran out of GPU memory: lower the micro-batch or sequence length, or use 4-bit."
    job.save()
    return job


def test_oom_retry_halves_the_micro_batch(owner_client, owner, no_broker, django_capture_on_commit_callbacks):
    job = _oom_job(owner, batch_size=8, grad_accum=2)
    page = owner_client.get(f"/jobs/{job.id}/").content.decode()
    assert "Retry with half the micro-batch and twice the accumulation" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/jobs/{job.id}/retry-oom")
    retry = Job.objects.exclude(pk=job.pk).get()
    assert response["Location"] == f"/jobs/{retry.id}/"
    assert retry.config["train"]["batch_size"] == 4 and retry.config["train"]["grad_accum"] == 4
    assert (retry.rank, retry.dataset_id, retry.base_model_id, retry.suffix) == (
        job.rank, job.dataset_id, job.base_model_id, "oom-run")
    assert no_broker == [str(retry.id)]


def test_oom_retry_only_for_oom_failures(owner_client, owner, stranger_client, job):
    assert "Retry with half" not in owner_client.get(f"/jobs/{job.id}/").content.decode()
    owner_client.post(f"/jobs/{job.id}/retry-oom")
    assert Job.objects.count() == 1
    tiny_batch = _oom_job(owner, batch_size=1)
    assert "micro-batch is already 1" in owner_client.get(f"/jobs/{tiny_batch.id}/").content.decode()
    assert stranger_client.post(f"/jobs/{tiny_batch.id}/retry-oom").status_code == 404
    assert Job.objects.count() == 2


def make_trained_adapter(job: Job, name: str = "my-run-adapter") -> Adapter:
    return Adapter.objects.create(owner=job.owner, job=job, name=name, storage_path="adapters/x",
                                  base_model=job.base_model, rank=job.rank, alpha=job.alpha, size_bytes=2_000_000,
                                  final_train_loss=1.2345)


def adapter_links(adapter: Adapter) -> list[str]:
    """The entry points a finished job's page offers: the adapter page, its download, merging, the playground."""
    return [f'href="/adapters/{adapter.id}/"', f'href="/adapters/{adapter.id}/download"',
            f'href="/adapters/{adapter.id}/#merges"', f'href="/playground/?adapter={adapter.id}"']


def test_detail_links_a_succeeded_jobs_adapter(owner_client, owner):
    job = make_job(owner, suffix="done-run", state=Job.State.SUCCEEDED)
    adapter = make_trained_adapter(job)
    page = owner_client.get(f"/jobs/{job.id}/").content.decode()
    assert 'data-testid="job-adapter"' in page and "my-run-adapter" in page
    for link in adapter_links(adapter):
        assert link in page, link


def test_detail_has_no_adapter_section_before_the_job_succeeds(owner_client, job):
    make_trained_adapter(job)  # a retried run's adapter row, written before the job is marked succeeded
    assert 'data-testid="job-adapter"' not in owner_client.get(f"/jobs/{job.id}/").content.decode()
    job.state = Job.State.SUCCEEDED
    job.save()
    job.adapter.delete()
    page = owner_client.get(f"/jobs/{job.id}/").content.decode()
    assert 'data-testid="job-adapter"' not in page and "adapter has been deleted" in page


def test_detail_renders_the_live_dot_off_for_an_ended_job(owner_client, owner, job):
    assert '"live updates">offline</span>' in owner_client.get(f"/jobs/{job.id}/").content.decode()
    ended = make_job(owner, state=Job.State.CANCELLED)
    assert '"live updates">ended</span>' in owner_client.get(f"/jobs/{ended.id}/").content.decode()


def test_outcome_works(owner_client, owner):
    job = make_job(owner, suffix="done-run", state=Job.State.SUCCEEDED)
    adapter = make_trained_adapter(job)
    response = owner_client.get(f"/jobs/{job.id}/outcome")
    assert response.status_code == 200
    fragment = response.content.decode()
    assert "<html" not in fragment and 'data-testid="job-adapter"' in fragment
    for link in adapter_links(adapter):
        assert link in fragment, link
    failed = _oom_job(owner, batch_size=8)
    fragment = owner_client.get(f"/jobs/{failed.id}/outcome").content.decode()
    assert "Training ran out of GPU memory" in fragment and "Retry with half the micro-batch" in fragment


def test_outcome_validates_ownership(stranger_client, staff_client, owner):
    job = make_job(owner, state=Job.State.SUCCEEDED)
    make_trained_adapter(job)
    assert stranger_client.get(f"/jobs/{job.id}/outcome").status_code == 404
    assert Client().get(f"/jobs/{job.id}/outcome").status_code == 302  # to the login page
    assert 'data-testid="job-adapter"' in staff_client.get(f"/jobs/{job.id}/outcome").content.decode()


def gpt2_base_model(owner):
    from lora_engine.tiny import tiny_config

    return BaseModel.objects.create(owner=owner, name="tiny-gpt2", source=BaseModel.Source.LOCAL,
                                    local_path="/nowhere", architecture="GPT2LMHeadModel", model_type="gpt2",
                                    config=tiny_config("gpt2").to_dict())


def test_new_form_targets_follow_the_base_model(owner_client, owner, no_broker):
    dataset, llama, gpt2 = make_dataset(owner), make_base_model(owner), gpt2_base_model(owner)
    chosen = owner_client.get(f"/jobs/new/?base_model={gpt2.id}").content.decode()
    assert 'name="targets" value="c_attn"' in chosen
    page = owner_client.get("/jobs/new/").content.decode()
    assert f'"{gpt2.id}": "c_attn"' in page and f'"{llama.id}": "q_proj,v_proj"' in page  # for the script
    form = {"dataset": dataset.id, "base_model": gpt2.id, "suffix": "gpt2-run", "rank": 4, "alpha": 8,
            "dropout": 0.0, "targets": "q_proj,v_proj", "quantization": "none", "learning_rate": 1e-3,
            "schedule": "constant", "warmup_steps": 0, "epochs": 1, "max_steps": 5, "batch_size": 2,
            "grad_accum": 1, "max_seq_len": 64, "eval_fraction": 0, "eval_every": 0, "save_every": 0, "seed": 1,
            "precision": "fp32"}
    response = owner_client.post("/jobs/new/", form)  # left at the generic default (a browser without JS)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Job.objects.get(suffix="gpt2-run").config["lora"]["targets"] == ["c_attn"]
    response = owner_client.post("/jobs/new/", {**form, "suffix": "typed", "targets": "c_fc"})
    assert response.status_code == 302 and Job.objects.get(suffix="typed").config["lora"]["targets"] == ["c_fc"]

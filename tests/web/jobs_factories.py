"""Records for the jobs pages, API and websocket tests, made directly (no worker, no uploads)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.jobs.configs import build_run_config, default_settings
from webapp.jobs.models import Job, MetricPoint

# A tiny Llama's config.json (what BaseModel.config holds): enough for estimates and target checks.
TINY_LLAMA_CONFIG = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512, "hidden_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
    "max_position_embeddings": 512, "tie_word_embeddings": False, "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}


def make_dataset(owner, name: str = "chat.jsonl") -> Dataset:
    return Dataset.objects.create(owner=owner, name=name, storage_path=f"datasets/{name}", format="openai_chat",
                                  rows=64, size_bytes=1234, sha256="0" * 64)


def make_base_model(owner, name: str = "tiny-llama", public: bool = False) -> BaseModel:
    return BaseModel.objects.create(owner=owner, name=name, source=BaseModel.Source.LOCAL, local_path="/nowhere",
                                    architecture="LlamaForCausalLM", model_type="llama", parameter_count=200_000,
                                    hidden_size=64, num_layers=2, config=TINY_LLAMA_CONFIG, public=public)


def make_job(owner, dataset: Dataset | None = None, base_model: BaseModel | None = None,
             state: str = Job.State.RUNNING, suffix: str = "", **settings_overrides: Any) -> Job:
    dataset = dataset or make_dataset(owner, name=f"data-{Job.objects.count()}.jsonl")
    base_model = base_model or make_base_model(owner, name=f"tiny-{Job.objects.count()}-{owner.pk}")
    flat = {**default_settings(), **settings_overrides}
    config = build_run_config(flat, model=base_model.location, data_path=str(dataset.path),
                              output_dir=str(settings.DATA_DIR / "jobs" / "test"))
    return Job.objects.create(owner=owner, dataset=dataset, base_model=base_model, suffix=suffix, state=state,
                              config=config.to_dict(), rank=config.lora.rank, alpha=config.lora.alpha,
                              quantization=config.quant.mode, total_steps=1000,
                              memory_estimate={"selected_total": 50_000_000})


def step_values(step: int, loss: float | None = None) -> dict[str, Any]:
    return {
        "step": step, "total_steps": 1000, "epoch": step / 1000,
        "loss": loss if loss is not None else 3.0 - step * 1e-3,
        "learning_rate": 2e-4, "grad_norm": 1.0 + (step % 7) * 0.1, "tokens_seen": step * 256,
        "tokens_per_second": 5000.0, "elapsed_seconds": step * 0.05, "eta_seconds": (1000 - step) * 0.05,
        "memory_allocated_bytes": 30_000_000, "memory_peak_bytes": 40_000_000,
    }


def add_points(job: Job, steps, split: str = "train", values=None) -> list[dict[str, Any]]:
    """Store one point per step after the job's last seq (as the recorder does); returns them as emitted."""
    points = []
    with transaction.atomic():
        job.refresh_from_db(fields=["last_seq"])
        seq = job.last_seq
        rows = []
        for step in steps:
            seq += 1
            vals = values(step) if values else (
                {"step": step, "eval_loss": 2.5, "perplexity": 12.2, "tokens_seen": step * 256}
                if split == "eval" else step_values(step))
            rows.append(MetricPoint(job=job, step=step, split=split, seq=seq, values=vals))
            points.append({"seq": seq, "step": step, "split": split, "values": vals})
        MetricPoint.objects.bulk_create(rows)
        last_step = max((p["step"] for p in points), default=job.current_step)
        Job.objects.filter(pk=job.pk).update(last_seq=seq, current_step=last_step, progress=last_step / 1000)
        job.last_seq = seq
    return points

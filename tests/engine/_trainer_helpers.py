"""Helpers for the trainer, checkpoint and CLI tests: a tiny saved model and a tiny data file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lora_engine.callbacks import Callback
from lora_engine.config import DataConfig, LoraConfig, QuantConfig, RunConfig, TrainConfig
from lora_engine.tiny import save_tiny_model

SENTENCE = "The quick brown fox jumps over the lazy dog."


def make_model_dir(root: Path, arch: str = "llama", head_scale: float = 30.0) -> Path:
    """A tiny random model + tokenizer saved as a Hugging Face directory.

    The random head's weights are scaled up: with the default init (std 0.02) every logit stays near 0,
    so no adapter on the blocks could make the model confident and the loss could not fall far.
    """
    out = root / f"model-{arch}"
    save_tiny_model(out, arch=arch, hidden_size=32, layers=2, heads=4)
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    model.save_pretrained(out)
    return out


def write_text_jsonl(path: Path, rows: int = 16, text: str = SENTENCE) -> Path:
    """``rows`` identical ``{"text": ...}`` lines: a task a tiny model can learn in a few steps."""
    path.write_text("".join(json.dumps({"text": text}) + "\n" for _ in range(rows)))
    return path


def run_config(model_dir: Path, data_path: Path, out_dir: Path, *, quant: str = "none",
               targets: tuple[str, ...] = ("all-linear",), eval_fraction: float = 0.0, **train) -> RunConfig:
    defaults = dict(max_steps=6, batch_size=4, learning_rate=5e-3, seed=3, schedule="cosine", warmup_steps=1)
    return RunConfig(
        model=str(model_dir), output_dir=str(out_dir), device="cpu",
        lora=LoraConfig(rank=4, alpha=8, targets=targets),
        quant=QuantConfig(mode=quant, compute_dtype="fp32"),
        data=DataConfig(path=str(data_path), max_seq_len=32, eval_fraction=eval_fraction),
        train=TrainConfig(**{**defaults, **train}),
    )


def with_train(config: RunConfig, **changes) -> RunConfig:
    return replace(config, train=replace(config.train, **changes))


class Recorder(Callback):
    """Records everything the trainer reports; asks to stop after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None):
        self.stop_after = stop_after
        self.info = None
        self.steps: list = []
        self.evals: list = []
        self.checkpoints: list = []
        self.result = None

    def on_train_start(self, info) -> None:
        self.info = info

    def on_step(self, metrics) -> None:
        self.steps.append(metrics)

    def on_eval(self, metrics) -> None:
        self.evals.append(metrics)

    def on_checkpoint(self, step, path) -> None:
        self.checkpoints.append((step, Path(path)))

    def on_train_end(self, result) -> None:
        self.result = result

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.steps) >= self.stop_after

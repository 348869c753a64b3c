"""Tiny base models and adapters for the playground's web and stack tests, registered through the real actions."""

from __future__ import annotations

from pathlib import Path

import torch
from django.core.files.uploadedfile import SimpleUploadedFile

TINY = {"hidden_size": 32, "layers": 2, "heads": 4}


def save_base(directory: Path) -> Path:
    from lora_engine.tiny import save_tiny_model

    return save_tiny_model(directory, arch="llama", **TINY)


def make_adapter_dir(base_dir: Path, out_dir: Path, rank: int, targets: tuple[str, ...], seed: int) -> Path:
    """An adapter with a random (non-zero) B, so it visibly changes the base model's answers."""
    from transformers import AutoModelForCausalLM

    from lora_engine.adapter_io import save_adapter
    from lora_engine.config import LoraConfig
    from lora_engine.inject import inject_lora, lora_layers

    model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True)
    lora = LoraConfig(rank=rank, alpha=2.0 * rank, targets=targets)
    inject_lora(model, lora)
    torch.manual_seed(seed)
    for layer in lora_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.5)
    return save_adapter(model, lora, out_dir, str(base_dir))


def upload(owner, base_model, adapter_dir: Path, name: str):
    """Register an adapter directory through the adapters engineer's upload action."""
    from webapp.adapters.actions import upload_adapter

    files = {n: SimpleUploadedFile(n, (adapter_dir / n).read_bytes())
             for n in ("adapter_config.json", "adapter_model.safetensors")}
    return upload_adapter(owner, base_model, name, files)

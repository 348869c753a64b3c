"""Shared by the adapter analysis tests: tiny base models and an r=8 adapter whose ΔW has rank exactly 2."""

from __future__ import annotations

from pathlib import Path

import torch
from django.core.files.uploadedfile import SimpleUploadedFile

from lora_engine.adapter_io import save_adapter
from lora_engine.config import LoraConfig
from lora_engine.inject import inject_lora, lora_layers
from lora_engine.tiny import build_tiny_model, save_tiny_model
from webapp.adapters.actions import upload_adapter
from webapp.adapters.models import Adapter
from webapp.basemodels.actions import register_local_model

RANK = 8
TRUE_RANK = 2  # every layer's ΔW is built with rank exactly 2


def save_tiny_dirs(tmp_path_factory, archs: tuple[str, ...] = ("llama", "gpt2")) -> dict[str, Path]:
    """Tiny llama and gpt2 base model directories (for a module-scoped fixture)."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_model(root / arch, arch=arch) for arch in archs}


def make_adapter_dir(out: Path, arch: str = "llama", targets=("q_proj", "v_proj")) -> Path:
    """An r=8 adapter whose every ΔW = s·B·A has rank 2: B = B₂·C with B₂ (out, 2) and C (2, r)."""
    model = build_tiny_model(arch)
    lora = LoraConfig(rank=RANK, alpha=16.0, targets=targets)
    inject_lora(model, lora)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            out_features = layer.lora_B.shape[0]
            b2 = torch.randn(out_features, TRUE_RANK, generator=generator)
            layer.lora_B.copy_(b2 @ torch.randn(TRUE_RANK, RANK, generator=generator))
    return save_adapter(model, lora, out, base_model_name_or_path=arch)


def register(owner, tiny_dirs, tmp_path, arch: str = "llama", **kwargs) -> Adapter:
    base = register_local_model(owner, f"tiny-{arch}", str(tiny_dirs[arch]))
    adapter_dir = make_adapter_dir(tmp_path / f"adapter-{arch}", arch, **kwargs)
    files = {name: SimpleUploadedFile(name, (adapter_dir / name).read_bytes())
             for name in ("adapter_config.json", "adapter_model.safetensors")}
    return upload_adapter(owner, base, "lowrank", files)

"""Helpers for the mechanics tests (layers, injection, quantization, adapter files)."""

from __future__ import annotations

import torch
from torch import nn

from lora_engine.inject import lora_layers


def sample_ids(batch: int = 2, length: int = 9, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 500, (batch, length), generator=generator)


@torch.no_grad()
def randomize_adapters(model: nn.Module, seed: int = 1) -> None:
    """Give every adapter a non-zero B (and a perturbed DoRA magnitude) so it changes the output."""
    generator = torch.Generator().manual_seed(seed)
    for layer in lora_layers(model).values():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
        magnitude = getattr(layer, "lora_magnitude", None)
        if magnitude is not None:
            magnitude.mul_(0.5 + torch.rand(magnitude.shape, generator=generator))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits

"""A model's layer structure from its config alone: built on the meta device, no weights, no memory.

Lets the web app check target modules and ranks before a job is queued, and check an uploaded adapter's
shapes against a base model, without loading the base model.
"""

from __future__ import annotations

import json
from functools import lru_cache

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from .errors import ModelLoadError


def meta_model(config: dict) -> nn.Module:
    """An uninitialised model (meta tensors) for a ``config.json`` dict.

    Raises:
        ModelLoadError: the config names an architecture transformers does not know.
    """
    config = dict(config)
    model_type = config.pop("model_type", None)
    if not model_type:
        raise ModelLoadError("the model's config.json has no model_type")
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"cannot build a {model_type!r} causal LM from its config: {exc}") from exc


@lru_cache(maxsize=32)
def _linear_shapes(config_json: str) -> dict[str, tuple[int, int]]:
    model = meta_model(json.loads(config_json))
    head = model.get_output_embeddings()
    shapes = {}
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            shapes[name] = (module.weight.shape[0], module.weight.shape[1])  # Conv1D stores (in, out)
    return shapes


def linear_layer_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """``{dotted module name: (in_features, out_features)}`` for every linear layer but the output head."""
    return dict(_linear_shapes(json.dumps(config, sort_keys=True)))

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


# The attention projections a new adapter targets when none are named, most specific first: the query and
# value projections, as in the LoRA paper, where the model has them apart; else its fused query-key-value
# projection. A model with none of these gets every linear layer.
ATTENTION_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),  # Llama, Mistral, Qwen2, Gemma, OPT, GPT-J
    ("c_attn",),  # GPT-2 (a fused Conv1D)
    ("query_key_value",),  # GPT-NeoX, Falcon, BLOOM
    ("qkv_proj",),  # Phi-3
    ("Wqkv",),  # MPT
)


def default_targets(config: dict) -> tuple[str, ...]:
    """The target modules for a model when none are chosen: its attention's query and value projections.

    Args:
        config: the model's ``config.json`` as a dict.

    Returns:
        The first of :data:`ATTENTION_TARGETS` whose names are all linear layers of the model (``("q_proj",
        "v_proj")`` for Llama-like models, ``("c_attn",)`` for GPT-2), else ``("all-linear",)``.

    Raises:
        ModelLoadError: the config names an architecture transformers does not know.
    """
    layer_names = {name.rsplit(".", 1)[-1] for name in linear_layer_shapes(config)}
    for targets in ATTENTION_TARGETS:
        if layer_names.issuperset(targets):
            return targets
    return ("all-linear",)

"""A model's layer structure from its config alone: built on the meta device, no weights, no memory.

Lets the web app check target modules, ranks and the sequence length before a job is queued, and check an
uploaded adapter's shapes against a base model, without loading the base model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from .errors import ConfigError, ModelLoadError

# The config.json fields that declare how many positions a model takes, by the families that use them.
POSITION_LIMIT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx",
                         "max_seq_len")


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


def max_positions(config: Mapping[str, Any]) -> tuple[int, str] | None:
    """The longest sequence a model declares it takes, and the config field that says so.

    The first positive integer among :data:`POSITION_LIMIT_FIELDS` (also looked for in a nested
    ``text_config``). A model with learned position embeddings (GPT-2's ``n_positions``) cannot go past it at
    all: a longer row indexes past the embedding table. A model with rotary embeddings could run longer, but
    only what it was trained on is reliable, and this engine applies no rope scaling of its own (a model whose
    config carries ``rope_scaling`` already declares its extended length in the same field), so the declared
    value is the limit for both kinds. A config declaring none of these fields has no known limit.

    Args:
        config: a ``config.json`` dict (or a transformers ``PretrainedConfig``'s ``to_dict()``).

    Returns:
        ``(limit, field name)``, or None when the config declares no limit.
    """
    for source in (config, config.get("text_config")):
        if not isinstance(source, Mapping):
            continue
        for field in POSITION_LIMIT_FIELDS:
            value = source.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value, field
    return None


def sequence_length_problem(config: Mapping[str, Any], max_seq_len: int,
                            model_name: str = "the base model") -> str | None:
    """Why ``max_seq_len`` is too long for the model ``config`` describes, or None when it fits.

    The message starts with ``max_seq_len`` (callers map a problem to the setting it names).
    """
    limit = max_positions(config)
    if limit is None or max_seq_len <= limit[0]:
        return None
    positions, field = limit
    return (f"max_seq_len {max_seq_len} is longer than {model_name} takes ({positions} positions, its config's "
            f"{field}); choose a sequence length of at most {positions}")


def check_sequence_length(config: Mapping[str, Any], max_seq_len: int, model_name: str = "the base model") -> None:
    """Raise a clear error before training when rows could be longer than the model takes.

    Raises:
        ConfigError: ``max_seq_len`` is beyond the model's declared maximum (see :func:`max_positions`).
    """
    problem = sequence_length_problem(config, max_seq_len, model_name)
    if problem is not None:
        raise ConfigError([problem])


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

"""Loading the base model and tokenizer, optionally quantized to 4-bit NF4 (QLoRA) or 8-bit.

Quantization goes through transformers' ``BitsAndBytesConfig`` passed as ``quantization_config=``; the
non-quantized parts (embeddings, norms, output head) load in ``dtype=`` (transformers 5 spells it
``dtype``, not ``torch_dtype``). bitsandbytes runs on CPU too, so QLoRA works without a GPU (slowly).

A local directory is loaded with ``local_files_only=True`` so it never touches the network; anything
else is treated as a hub id.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import QuantConfig
from .errors import ConfigError, ModelLoadError
from .layers import keep_model_nf4_trainable

_COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _source_kwargs(model: str, revision: str | None, trust_remote_code: bool) -> dict:
    """Where to load from: a local directory (offline) or a hub id. Raises ModelLoadError for a bad path."""
    path = Path(model).expanduser()
    if path.is_dir():
        return {"pretrained_model_name_or_path": str(path), "local_files_only": True,
                "trust_remote_code": trust_remote_code}
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path or path.exists():
        raise ModelLoadError(f"model directory {model!r} does not exist (or is not a directory); "
                             "give the path of a Hugging Face model directory or a hub id like 'org/name'")
    return {"pretrained_model_name_or_path": model, "revision": revision, "trust_remote_code": trust_remote_code}


def load_tokenizer(
    model: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load the base model's tokenizer; when it has no pad token, the eos token doubles as padding.

    Args:
        model: a local model directory or a hub id.
        revision: hub revision (ignored for local directories).
        trust_remote_code: allow the repository's own tokenizer code.

    Returns:
        The tokenizer.

    Raises:
        ModelLoadError: the directory does not exist, or the tokenizer cannot be loaded.
    """
    kwargs = _source_kwargs(model, revision, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {model!r}: {exc}. Check that the directory holds "
                             "tokenizer files (tokenizer.json or tokenizer.model) or that the hub id is right") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {model!r} has neither a pad nor an eos token; add one to it")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def bnb_config(quant: QuantConfig):
    """The transformers ``BitsAndBytesConfig`` for ``quant``, or None for ``mode="none"``.

    Raises:
        ConfigError: ``quant`` is invalid.
    """
    problems = quant.problems()
    if problems:
        raise ConfigError(problems)
    if quant.mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quant.mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=_COMPUTE_DTYPES[quant.compute_dtype],
    )


def _device_map(device: torch.device) -> dict[str, str | int]:
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    return {"": device.type}


def load_base_model(
    model: str,
    quant: QuantConfig,
    device: torch.device,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Load a causal LM onto ``device``, quantized as ``quant`` says, in eval mode with frozen weights.

    Args:
        model: a local model directory or a hub id.
        quant: ``none``, ``nf4`` (double quant and compute dtype from ``quant``) or ``int8``.
        device: where the weights go.
        revision: hub revision (ignored for local directories).
        trust_remote_code: allow the repository's own model code.
        dtype: dtype of every non-quantized weight.

    Returns:
        The model. Every parameter has ``requires_grad=False``.

    Raises:
        ConfigError: ``quant`` is invalid.
        ModelLoadError: the directory does not exist, is not a causal LM, or bitsandbytes cannot load it.
    """
    kwargs = _source_kwargs(model, revision, trust_remote_code)
    quantization = bnb_config(quant)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    try:
        loaded = AutoModelForCausalLM.from_pretrained(**kwargs, dtype=dtype, device_map=_device_map(device))
    except ImportError as exc:
        raise ModelLoadError(f"cannot load {model!r} with {quant.mode} quantization: {exc}. Install bitsandbytes "
                             "or choose quantization 'none'") from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load the model {model!r}: {exc}. Check that it is a Hugging Face causal "
                             "language model directory (config.json + safetensors weights) or a valid hub id") from exc
    for param in loaded.parameters():
        param.requires_grad_(False)
    if quantization is not None:
        keep_model_nf4_trainable(loaded)
    return loaded.eval()


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in the backward pass (non-reentrant, so frozen inputs are fine)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def prepare_for_kbit_training(model: nn.Module, gradient_checkpointing: bool) -> None:
    """Get a 4/8-bit model ready for adapter training: frozen base, optional gradient checkpointing.

    Unlike PEFT's function of the same name this does not up-cast the non-quantized weights to fp32:
    they were loaded in the run's dtype on purpose, and the up-cast costs memory the run may not have.
    The adapter weights are fp32 anyway.

    Args:
        model: the model from :func:`load_base_model`.
        gradient_checkpointing: turn gradient (activation) checkpointing on.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)

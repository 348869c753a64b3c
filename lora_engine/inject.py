"""Putting LoRA layers into a model: find the linear layers, pick targets by name, freeze, wrap in place.

Target patterns follow PEFT's rules so the same list means the same layers here and in PEFT:

- a plain name matches a dotted module name that equals it or ends with ``"." + name``
  (``q_proj`` matches ``model.layers.0.self_attn.q_proj``; ``self_attn.q_proj`` works too);
- a pattern holding regex characters (``* + ? [ ] ( ) { } | ^ $ \\``) must match the whole dotted name;
- ``all-linear`` is every linear layer except the output head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .config import LoraConfig
from .errors import ConfigError, LoraEngineError, TargetModulesError
from .layers import LoRALinear, keep_model_nf4_trainable, layer_kind

ALL_LINEAR = "all-linear"
_REGEX_CHARS = re.compile(r"[*+?\[\](){}|^$\\]")


@dataclass(frozen=True)
class InjectionReport:
    """What :func:`inject_lora` did."""

    wrapped: list[str]
    """Dotted names of the wrapped layers, in model order."""
    trainable_params: int
    """Adapter parameters: Σ r·(in + out) over the wrapped layers (+ out per layer for DoRA)."""
    total_params: int
    """Every parameter of the model including the adapter (4-bit weights counted as unpacked values)."""
    adapter_bytes: int
    """Size of the adapter weights as saved (fp32: 4 bytes per parameter)."""

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0


def _output_head(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if callable(getter) else None


def find_linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every linear layer LoRA can wrap (Linear, Conv1D, bitsandbytes 4/8-bit), except the output head.

    Layers already wrapped by LoRA are listed under their wrapper's name (pointing at the base layer), so
    the names are the same before and after :func:`inject_lora`.

    Args:
        model: any torch module; a transformers model's output head is found with ``get_output_embeddings``.

    Returns:
        ``{dotted name: base layer}`` in model order.
    """
    head = _output_head(model)
    found: dict[str, nn.Module] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if isinstance(child, LoRALinear):
                found[name] = child.base_layer
            elif layer_kind(child) is not None:
                if child is not head:
                    found[name] = child
            else:
                visit(name, child)

    visit("", model)
    return found


def _leaf_names(names: list[str]) -> list[str]:
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in names))


def _matcher(pattern: str, available: list[str]):
    if _REGEX_CHARS.search(pattern):
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise TargetModulesError(f"target pattern {pattern!r} is not a valid regular expression ({exc})",
                                     available) from None
        return lambda name: compiled.fullmatch(name) is not None
    return lambda name: name == pattern or name.endswith("." + pattern)


def resolve_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The dotted names of the linear layers the target patterns select.

    Args:
        model: the model.
        targets: module-name patterns (see the module docstring), or ``("all-linear",)``.

    Returns:
        Matching linear layer names, in model order.

    Raises:
        TargetModulesError: a pattern matches no linear layer (the message lists the model's linear layer
            names), or a regex pattern does not compile.
    """
    names = list(find_linear_layers(model))
    available = _leaf_names(names)
    if not names:
        raise TargetModulesError("this model has no linear layers LoRA can wrap", available)
    patterns = [t.strip() for t in targets]
    if any(p.lower() == ALL_LINEAR for p in patterns):
        return names
    selected: set[str] = set()
    unmatched = []
    for pattern in patterns:
        matches_pattern = _matcher(pattern, available)
        matches = {name for name in names if matches_pattern(name)}
        if not matches:
            unmatched.append(pattern)
        selected |= matches
    if unmatched:
        raise TargetModulesError(
            f"target pattern(s) {', '.join(repr(p) for p in unmatched)} matched no linear layer; use the names "
            f"listed at the end (a name matches the end of a dotted module name such as {names[0]!r}) "
            f"or '{ALL_LINEAR}'",
            available,
        )
    return [name for name in names if name in selected]


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """``{dotted name: LoRA layer}`` for every LoRA (and DoRA) layer in ``model``."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)


def _logical_numel(param: torch.Tensor) -> int:
    quant_state = getattr(param, "quant_state", None)  # bitsandbytes packs two 4-bit values per byte
    return quant_state.shape.numel() if quant_state is not None else param.numel()


def build_report(model: nn.Module) -> InjectionReport:
    """Count the model's adapter and total parameters (see :class:`InjectionReport`)."""
    layers = lora_layers(model)
    adapter_params = [p for layer in layers.values() for n, p in layer.named_parameters() if n.startswith("lora_")]
    return InjectionReport(
        wrapped=list(layers),
        trainable_params=sum(p.numel() for p in adapter_params),
        total_params=sum(_logical_numel(p) for p in model.parameters()),
        adapter_bytes=sum(p.numel() * p.element_size() for p in adapter_params),
    )


def wrap_layers(model: nn.Module, names: list[str], lora: LoraConfig) -> None:
    """Wrap the named linear layers in place with LoRA (or DoRA) layers built from ``lora``.

    Each new layer takes the train/eval mode of the layer it wraps: a fresh ``nn.Module`` starts in training
    mode, so without this an adapter loaded into an eval-mode model would run its LoRA dropout at inference
    (and every forward would give different logits).
    """
    from .dora import DoRALinear

    layer_class = DoRALinear if lora.use_dora else LoRALinear
    keep_model_nf4_trainable(model)
    for name in names:
        base = model.get_submodule(name)
        wrapped = layer_class(base, lora.rank, lora.alpha, dropout=lora.dropout, use_rslora=lora.use_rslora)
        wrapped.train(base.training)
        _replace_module(model, name, wrapped)


def inject_lora(model: nn.Module, lora: LoraConfig) -> InjectionReport:
    """Freeze every base parameter and wrap the target linear layers with LoRA layers, in place.

    The adapters are fp32 master weights on their base layer's device; with B at zero the model's output
    is unchanged until the first optimizer step.

    Args:
        model: a transformers causal LM (plain, fp16/bf16, or 4/8-bit bitsandbytes).
        lora: rank, alpha, dropout, targets, rsLoRA and DoRA settings.

    Returns:
        The :class:`InjectionReport` (wrapped names, trainable and total parameters, adapter bytes).

    Raises:
        ConfigError: ``lora`` is invalid.
        TargetModulesError: a target pattern matches no linear layer.
        LoraEngineError: the model already holds LoRA layers.
    """
    problems = lora.problems()
    if problems:
        raise ConfigError(problems)
    if lora_layers(model):
        raise LoraEngineError("this model already has LoRA layers; call unwrap_lora(model) before injecting again")
    names = resolve_targets(model, tuple(lora.targets))
    for param in model.parameters():
        param.requires_grad_(False)
    wrap_layers(model, names, lora)
    return build_report(model)


def unwrap_lora(model: nn.Module) -> None:
    """Put the base layers back in place of the LoRA layers (unmerging merged ones first).

    Base parameters stay frozen.
    """
    for name, layer in lora_layers(model).items():
        if layer.merged:
            layer.unmerge()
        _replace_module(model, name, layer.base_layer)

"""Answering one prompt with a base model and several adapters, hot-swapped on ONE loaded copy of the base.

Each adapted linear layer of the base is put in an :class:`AdapterSlot`. A slot keeps the base layer once and,
for every adapter that adapts it, a LoRA (or DoRA) layer wrapping that same base layer with the adapter's
A/B weights loaded. :meth:`MultiAdapterModel.activate` only points each slot at the chosen adapter's layer
(or at none, for the base model's answer), so switching costs nothing and the base weights are never copied::

    slot.forward(x) = base(x)                       no adapter active (or the active one does not adapt it)
                    = base(x) + s·B_k·(A_k·x)        adapter k active (DoRA: PEFT's DoRA forward)

Generation is an explicit loop over the model with its KV cache (one new token per forward), so the caller
gets each token as soon as it exists: greedy when ``temperature`` is 0, otherwise temperature + top-p (nucleus)
sampling from a seeded generator, so the same settings and seed give the same answer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .adapter_io import check_adapter_fits, group_tensors, read_adapter
from .config import LoraConfig, QuantConfig
from .data.render import PLAIN_ROLE_NAMES
from .errors import ConfigError, LoraEngineError
from .inject import find_linear_layers, lora_layers
from .layers import LoRALinear, keep_model_nf4_trainable

MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class GenerationSettings:
    """How an answer is generated."""

    max_new_tokens: int = 128
    """Stop after this many new tokens (or earlier at an end-of-sequence token)."""
    temperature: float = 0.7
    """Softmax temperature; 0 picks the most likely token every time (greedy)."""
    top_p: float = 0.9
    """Nucleus sampling: sample among the most likely tokens whose probabilities add up to ``top_p``."""
    seed: int = 0
    """Seed of the sampling generator; every answer to one prompt uses the same seed, for a fair comparison."""

    def problems(self) -> list[str]:
        out = []
        if not _is_int(self.max_new_tokens) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            out.append(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS} (got {self.max_new_tokens!r})")
        if not _is_number(self.temperature) or not 0 <= self.temperature <= 5:
            out.append(f"temperature must be a number from 0 (greedy) to 5 (got {self.temperature!r})")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            out.append(f"top_p must be a number above 0 and at most 1 (got {self.top_p!r})")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            out.append(f"seed must be a non-negative integer (got {self.seed!r})")
        return out

    def validate(self) -> GenerationSettings:
        """Return self. Raises: ConfigError listing every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------- the prompt


def render_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a one-turn conversation ready for the assistant's answer (see :func:`render_messages`)."""
    return render_messages(tokenizer, [{"role": "user", "content": prompt}])


def render_messages(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of a conversation ready for the assistant's next answer.

    With a chat template: the template with ``add_generation_prompt=True``. Without one, the plain layout
    the data renderer trains on, tokenized in the same pieces
    (``[bos]User: {user}\\n\\nAssistant: {answer}[eos]\\n\\nUser: {user}\\n\\nAssistant: ``), so an adapter
    trained on chat data here sees the same frame.

    Args:
        tokenizer: the base model's tokenizer (:func:`lora_engine.quant.load_tokenizer`).
        messages: ``{"role": "user" | "assistant" | "system", "content": str}`` in order, the user's last.

    Returns:
        The prompt's token ids.

    Raises:
        LoraEngineError: no messages, or the last one is not the user's.
    """
    if not messages or messages[-1]["role"] != "user":
        raise LoraEngineError("a conversation to answer must end with the user's message")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                             add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids = [bos] if bos is not None and bos != eos else []
    pending = ""  # text up to the next answer, tokenized in one piece as the data renderer does
    for message in messages:
        name = PLAIN_ROLE_NAMES[message["role"]]
        if message["role"] != "assistant":
            pending += f"{name}: {message['content']}\n\n"
            continue
        ids += _encode(tokenizer, f"{pending}{name}: ") + _encode(tokenizer, message["content"])
        ids += [eos] if eos is not None else []
        pending = "\n\n"
    return ids + _encode(tokenizer, f"{pending}{PLAIN_ROLE_NAMES['assistant']}: ")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def stop_token_ids(tokenizer: Any, model: nn.Module | None = None) -> set[int]:
    """End-of-sequence ids: the tokenizer's eos and the model's generation config eos id(s)."""
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        stops |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return stops


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces, holding back an incomplete multi-byte character.

    Decodes a small window (the last piece already sent plus the new tokens) instead of the whole answer each
    time, so streaming stays linear in the answer's length.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add a token; return the new text it completes ('' while a character is incomplete)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix_offset:self._read_offset])
        after = self._decode(self.ids[self._prefix_offset:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end shows as U+FFFD)."""
        before = self._decode(self.ids[self._prefix_offset:self._read_offset])
        after = self._decode(self.ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self.ids)
        return after[len(before):]

    @property
    def text(self) -> str:
        """The whole answer so far."""
        return self._decode(self.ids)


# ------------------------------------------------------------------------------------------------ sampling


def sample_next_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Pick the next token from one position's logits (vocab,).

    Greedy (argmax) when ``temperature`` is 0; otherwise softmax(logits / temperature) restricted to the
    smallest set of most likely tokens whose probabilities reach ``top_p`` (always at least one token).
    """
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.detach().float().cpu() / temperature, dim=-1)  # the generator lives on the CPU
    if top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
        sorted_probs = sorted_probs * (mass_before < top_p)
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


# ----------------------------------------------------------------------------------------- the swappable base


class AdapterSlot(nn.Module):
    """One base linear layer plus the LoRA layers of every adapter that adapts it (all wrap the same layer).

    Args:
        base_layer: the model's linear layer (kept once; the LoRA layers hold references to it).
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.active is None:
            return self.base_layer(x)
        return self.adapters[self.active](x)


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter held by a :class:`MultiAdapterModel`."""

    adapter_id: str
    lora: LoraConfig
    modules: tuple[str, ...]
    """The dotted names of the base layers it adapts."""


def _build_layer(base_layer: nn.Module, lora: LoraConfig, parts: Mapping[str, Tensor]) -> LoRALinear:
    from .dora import DoRALinear

    layer_class = DoRALinear if lora.use_dora else LoRALinear
    layer = layer_class(base_layer, lora.rank, lora.alpha, dropout=0.0, use_rslora=lora.use_rslora)
    with torch.no_grad():
        layer.lora_A.copy_(parts["A"])
        layer.lora_B.copy_(parts["B"])
        if "magnitude" in parts:
            layer.lora_magnitude.copy_(parts["magnitude"])
    layer.requires_grad_(False)
    return layer.eval()


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)


class MultiAdapterModel:
    """A base causal LM loaded once, with several adapters that can be switched per answer.

    Args:
        model: a plain base model (no LoRA layers), e.g. from :func:`lora_engine.quant.load_base_model`.
            It is changed in place: the adapted layers are put into :class:`AdapterSlot` s.
        adapters: ``{adapter id: adapter directory}`` (PEFT layout, ours or PEFT's), in display order.

    Raises:
        AdapterFormatError: an adapter is invalid or does not fit this base model.
        LoraEngineError: the model already holds LoRA layers.
    """

    def __init__(self, model: nn.Module, adapters: Mapping[str, str | Path]):
        if lora_layers(model):
            raise LoraEngineError("the base model already has LoRA layers; give the playground a plain base model")
        linear = find_linear_layers(model)
        loaded: list[tuple[str, LoraConfig, dict[str, dict[str, Tensor]]]] = []
        for adapter_id, adapter_dir in adapters.items():
            lora, tensors = read_adapter(adapter_dir)
            modules = group_tensors(tensors)
            check_adapter_fits(modules, linear, label=f"adapter {adapter_id}")
            loaded.append((str(adapter_id), lora, modules))
        for param in model.parameters():
            param.requires_grad_(False)
        keep_model_nf4_trainable(model)
        union = [name for name in linear if any(name in modules for _, _, modules in loaded)]
        self.slots: dict[str, AdapterSlot] = {}
        for name in union:  # inject one slot per adapted layer (the union of every adapter's targets)
            slot = AdapterSlot(linear[name])
            _replace_module(model, name, slot)
            self.slots[name] = slot
        self.adapters: dict[str, LoadedAdapter] = {}
        self._keys: dict[str, str] = {}
        for index, (adapter_id, lora, modules) in enumerate(loaded):
            key = f"adapter{index}"  # ModuleDict keys cannot hold '.', and ids might
            for name, parts in modules.items():
                slot = self.slots[name]
                slot.adapters[key] = _build_layer(slot.base_layer, lora, parts)
            self.adapters[adapter_id] = LoadedAdapter(adapter_id, lora, tuple(n for n in union if n in modules))
            self._keys[adapter_id] = key
        self.model = model.eval()
        self._active: str | None = None

    @classmethod
    def from_pretrained(cls, base: str, adapters: Mapping[str, str | Path], device: torch.device | None = None,
                        quant: QuantConfig | None = None, revision: str | None = None,
                        trust_remote_code: bool = False, dtype: torch.dtype = torch.float32) -> MultiAdapterModel:
        """Load the base model once (see :func:`lora_engine.quant.load_base_model`) and attach ``adapters``.

        Raises:
            ModelLoadError: the base model cannot be loaded.
            AdapterFormatError: an adapter is invalid or does not fit the base model.
        """
        from .quant import load_base_model

        model = load_base_model(base, quant or QuantConfig(), device or torch.device("cpu"), revision=revision,
                                trust_remote_code=trust_remote_code, dtype=dtype)
        return cls(model, adapters)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def active(self) -> str | None:
        """The active adapter's id, or None while the base model answers."""
        return self._active

    def activate(self, adapter_id: str | None) -> None:
        """Answer with ``adapter_id`` from now on (None: the plain base model).

        Raises:
            LoraEngineError: ``adapter_id`` is not one of this model's adapters.
        """
        if adapter_id is not None and adapter_id not in self.adapters:
            raise LoraEngineError(f"unknown adapter {adapter_id!r}; this playground holds "
                                  f"{', '.join(self.adapters) or 'no adapters'}")
        key = None if adapter_id is None else self._keys[adapter_id]
        for slot in self.slots.values():
            slot.active = key if key in slot.adapters else None
        self._active = adapter_id

    def context_length(self) -> int | None:
        """The base model's maximum sequence length, when its config says."""
        config = getattr(self.model, "config", None)
        for field in ("max_position_embeddings", "n_positions"):
            value = getattr(config, field, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, stop_ids: set[int] | frozenset[int] = frozenset()) -> Iterator[int]:
        """Generate an answer with the active adapter, one token at a time (a stop token ends it unyielded).

        Args:
            prompt_ids: the rendered prompt (:func:`render_prompt`).
            max_new_tokens: at most this many tokens (fewer when the context would overflow).
            temperature: 0 for greedy decoding.
            top_p: nucleus sampling mass.
            seed: seed of the sampling generator.
            stop_ids: token ids that end the answer (:func:`stop_token_ids`).

        Yields:
            Token ids, as each is generated.

        Raises:
            ConfigError: invalid settings.
            LoraEngineError: an empty prompt, a prompt that fills the context, or :meth:`activate` called
                while this answer was being generated.
        """
        GenerationSettings(max_new_tokens, temperature, top_p, seed).validate()
        if not prompt_ids:
            raise LoraEngineError("the prompt is empty; write something for the model to answer")
        budget = max_new_tokens
        limit = self.context_length()
        if limit is not None:
            if len(prompt_ids) >= limit:
                raise LoraEngineError(f"the prompt is {len(prompt_ids)} tokens but the model reads at most {limit}; "
                                      "shorten it (or start a new chat)")
            budget = min(budget, limit - len(prompt_ids))
        adapter_id = self._active
        generator = torch.Generator(device="cpu").manual_seed(seed)
        input_ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)  # (1, T)
        past = None
        for _ in range(budget):
            if self._active != adapter_id:
                raise LoraEngineError("the active adapter changed during generation; finish one answer first")
            output = self.model(input_ids=input_ids, past_key_values=past, use_cache=True)
            past = output.past_key_values  # the cache holds every earlier position: feed one token next
            token = sample_next_token(output.logits[0, -1], temperature, top_p, generator)
            if token in stop_ids:
                return
            yield token
            input_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)  # (1, 1)

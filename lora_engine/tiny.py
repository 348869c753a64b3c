"""Tiny random-initialised models and tokenizers, built offline.

Used by the tests, the benchmarks and the demo model that ``make run`` creates. Nothing here
downloads anything: the tokenizer is a byte-level BPE trained on a few sentences in memory, and the
model weights are random.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox")

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]

# A Jinja chat template in the style of ChatML, using the tokenizer's own special tokens. It marks the
# assistant turns with {% generation %} so transformers can return the assistant mask.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% else %}<|user|>{{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Low-rank adaptation freezes the pretrained weights and learns a small update.",
    "Question: what is two plus two? Answer: four.",
    "Instruction: translate to French. Input: hello. Output: bonjour.",
    "def add(a, b):\n    return a + b\n",
    "0123456789 !?.,;:'\"()[]{}<>-_=+*/\\@#$%^&|~`",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def build_tiny_tokenizer(vocab_size: int = 512, chat_template: bool = True,
                         corpus: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a built-in corpus (and ``corpus``).

    Args:
        vocab_size: target vocabulary size (byte alphabet + merges + special tokens).
        chat_template: attach :data:`CHAT_TEMPLATE` so chat data renders through it.
        corpus: more texts to learn merges from: a data set's own texts give it about as many tokens per
            word as a real tokenizer would (the built-in corpus alone leaves most words a few bytes each).

    Returns:
        A fast tokenizer with pad/bos/eos tokens set.
    """
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator([*_CORPUS * 4, *corpus], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(
    arch: str = "llama",
    vocab_size: int = 512,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
):
    """A transformers config for a tiny model of the given architecture."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    intermediate = intermediate_size or hidden_size * 2
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if arch == "gpt2":
        return AutoConfig.for_model(
            "gpt2", vocab_size=vocab_size, n_embd=hidden_size, n_layer=layers, n_head=heads,
            n_inner=intermediate, n_positions=max_positions, **ids,
        )
    if arch == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox", vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=intermediate,
            max_position_embeddings=max_positions, **ids,
        )
    return AutoConfig.for_model(
        arch, vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        intermediate_size=intermediate, max_position_embeddings=max_positions,
        tie_word_embeddings=False, **ids,
    )


def build_tiny_model(arch: str = "llama", seed: int = 0, **config_overrides) -> PreTrainedModel:
    """A random-initialised causal LM (fp32, eval mode) of the given architecture."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **config_overrides))
    return model.eval()


def save_tiny_model(
    out_dir: str | Path, arch: str = "llama", seed: int = 0, chat_template: bool = True,
    corpus: Sequence[str] = (), **config_overrides
) -> Path:
    """Build a tiny model and tokenizer (trained on ``corpus`` too) and save them as a Hugging Face model directory.

    Returns:
        The directory, loadable with ``from_pretrained``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(vocab_size=config_overrides.get("vocab_size", 512), chat_template=chat_template,
                                     corpus=corpus)
    model = build_tiny_model(arch, seed=seed, **config_overrides)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

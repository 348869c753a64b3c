"""Shared fixtures for the engine tests: tiny offline models and tokenizers (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# The engine must never reach for the hub in tests; PEFT looks up base_model_name_or_path otherwise.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Callable[[str], Path]:
    """A factory: ``tiny_model_dir(arch)`` -> a saved tiny model + tokenizer directory (built once per arch).

    Architectures: llama, qwen2, mistral, gpt2, gpt_neox (see :mod:`lora_engine.tiny`). Treat the
    directories as read-only; they are shared by every test in the session.
    """
    from lora_engine.tiny import save_tiny_model

    built: dict[str, Path] = {}

    def make(arch: str = "llama") -> Path:
        if arch not in built:
            built[arch] = save_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}"), arch)
        return built[arch]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_dir) -> Path:
    """A saved tiny Llama model directory with its tokenizer (chat template included)."""
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny byte-level BPE tokenizer with pad/bos/eos and a chat template (do not mutate it)."""
    from lora_engine.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()

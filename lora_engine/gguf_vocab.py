"""The tokenizer of a Hugging Face model directory as llama.cpp's GGUF metadata (byte-level BPE only).

Written the way llama.cpp's ``convert_hf_to_gguf.py`` writes a GPT-2-style BPE vocabulary
(``_set_vocab_gpt2``): ``tokenizer.ggml.model = "gpt2"``, a ``tokenizer.ggml.pre`` name for the pre-tokenizer,
one token string and one token type per id up to the model's ``vocab_size`` (``[PAD{i}]`` / UNUSED for holes),
then the merges, the special token ids, the add-BOS/EOS flags and the chat template through
``gguf.SpecialVocab``.
"""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from .errors import LoraEngineError


class GGUFExportError(LoraEngineError):
    """A model or adapter cannot be written as GGUF; the message says why and what to do instead."""


# The text llama.cpp's converter tokenizes to recognise a pre-tokenizer: the sha256 of the token ids
# identifies it. A few common ones are listed; anything else is named from tokenizer.json (or "default").
_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_KNOWN_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
}


def _tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise GGUFExportError(
            f"{model_dir} has no tokenizer.json; GGUF export needs a fast (byte-level BPE) tokenizer saved with the "
            "model (tokenizer.save_pretrained)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GGUFExportError(f"{path} cannot be read ({exc}); re-save the tokenizer") from exc


def _is_byte_level(node: Any) -> bool:
    """Whether a tokenizer.json pre-tokenizer/decoder node is (or contains) ByteLevel."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(child) for child in node.get("pretokenizers") or node.get("decoders") or [])


def check_byte_level_bpe(model_dir: Path) -> dict[str, Any]:
    """The parsed tokenizer.json, after checking it is a byte-level BPE tokenizer llama.cpp reads as "gpt2".

    Raises:
        GGUFExportError: no tokenizer.json, or a SentencePiece-style (Metaspace / byte-fallback) or non-BPE one.
    """
    tokenizer = _tokenizer_json(model_dir)
    model_type = (tokenizer.get("model") or {}).get("type")
    if model_type != "BPE" or not (_is_byte_level(tokenizer.get("pre_tokenizer"))
                                   or _is_byte_level(tokenizer.get("decoder"))):
        raise GGUFExportError(
            f"the tokenizer in {model_dir} is not a byte-level BPE tokenizer (model {model_type!r}); this exporter "
            "writes GPT-2-style BPE vocabularies only. Convert this model with llama.cpp's convert_hf_to_gguf.py")
    return tokenizer


def pre_tokenizer_name(tokenizer: Any, tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a transformers tokenizer.

    Known check-text hashes give their llama.cpp name; a plain ByteLevel pre-tokenizer (GPT-2's regex) is
    "gpt-2"; anything else is "default" (llama.cpp's GPT-2-like fallback).
    """
    digest = sha256(str(tokenizer.encode(_CHECK_TEXT)).encode()).hexdigest()
    if digest in _KNOWN_PRE_TOKENIZERS:
        return _KNOWN_PRE_TOKENIZERS[digest]
    pre = tokenizer_json.get("pre_tokenizer")
    if isinstance(pre, dict) and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    return "default"


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def vocab_tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """(token strings, gguf token types) for ids 0..vocab_size-1, as llama.cpp's ``get_vocab_base``."""
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise GGUFExportError(
            f"the tokenizer has token id {max(vocab.values())} but the model's vocab_size is {vocab_size}; "
            "resize the model's embeddings to the tokenizer before exporting")
    by_id = {token_id: token for token, token_id in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(vocab_size):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            special = getattr(decoder.get(token_id), "special", False) or _looks_special(token)
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_bpe_vocab(writer: gguf.GGUFWriter, model_dir: Path, vocab_size: int) -> int:
    """Write the tokenizer metadata of ``model_dir`` to ``writer``. Returns the number of tokens written.

    Raises:
        GGUFExportError: the tokenizer is missing, not byte-level BPE, or larger than the embeddings.
    """
    from transformers import AutoTokenizer

    tokenizer_json = check_byte_level_bpe(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise GGUFExportError(f"the tokenizer in {model_dir} cannot be loaded ({exc})") from exc
    tokens, types = vocab_tokens(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer, tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)
    return len(tokens)

"""Helpers for the data tests: the real peer data sets and small file writers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.peers import PEERS


def peer(name: str) -> Path:
    return PEERS / name


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def trained_ids(example) -> list[int]:
    return [label for label in example.labels if label != -100]


class SlowView:
    """A tokenizer proxy that reports ``is_fast = False`` (exercises the path without offset mappings)."""

    is_fast = False

    def __init__(self, tokenizer):
        self._tok = tokenizer

    def __getattr__(self, name):
        return getattr(self._tok, name)

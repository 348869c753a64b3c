"""A small synthetic chat data set for the demo (made here, so nothing non-commercial is shipped)."""

from __future__ import annotations

import json

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
ANIMALS = ["cat", "dog", "fox", "owl", "bee", "cow", "elk", "yak"]


def demo_rows() -> list[dict]:
    """64 OpenAI-chat rows: 'What colour is the <animal>?' -> a fixed, learnable answer."""
    rows = []
    for i, animal in enumerate(ANIMALS):
        for j, colour in enumerate(COLOURS):
            answer = COLOURS[(i + j) % len(COLOURS)]
            rows.append({"messages": [
                {"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": f"What colour is the {colour} {animal}'s hat?"},
                {"role": "assistant", "content": answer},
            ]})
    return rows


def demo_jsonl() -> bytes:
    return "".join(json.dumps(row) + "\n" for row in demo_rows()).encode("utf-8")

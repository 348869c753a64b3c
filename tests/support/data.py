"""Small data sets tests build in memory."""

from __future__ import annotations

import json

# Eight short chat rows a tiny model can train on in a few steps.
CHAT_ROWS = [
    {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]}
    for i in range(8)
]


def jsonl(rows: list[dict]) -> bytes:
    """Rows as JSON Lines bytes."""
    return "".join(json.dumps(row) + "\n" for row in rows).encode()

"""The adapter page's "Training configuration": the job's RunConfig as JSON, without the server's own paths."""

from __future__ import annotations

import json

from django import template

register = template.Library()

SERVER_PATHS = {("model",), ("output_dir",), ("data", "path"), ("data", "eval_path"), ("resume",)}
"""Where the configuration holds paths on the server's disk: meaningless to the reader and not theirs to see."""


@register.filter
def training_config_json(config: dict) -> str:
    """``config`` as indented JSON (what the API and a script would send), server paths left out."""
    shown = json.loads(json.dumps(config or {}))  # a deep copy
    for path in SERVER_PATHS:
        *parents, key = path
        node = shown
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return json.dumps(shown, indent=2, sort_keys=True)

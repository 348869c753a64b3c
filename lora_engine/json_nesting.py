"""A ceiling on how deeply JSON may nest, for JSON that comes from people (data files, request bodies).

Python's parser recurses once per level: ``[[[[...]]]]`` 100,000 levels deep raises RecursionError (not a
ValueError) from ``json.loads``, and a value a few hundred levels deep that did parse can still raise it later,
in ``json.dumps``, a template or any recursive walk that runs deeper in the stack. Nothing people train on or
send nests more than a handful of levels, so such input is refused up front, with a message that says so,
instead of failing somewhere later as a server error.

:func:`loads` is ``json.loads`` with that ceiling, for request bodies and small files. Its check costs two
``str.count`` calls for ordinary text: a value cannot nest deeper than it has opening brackets, so only text
with more than :data:`MAX_JSON_DEPTH` of them has its parsed value measured (without recursion).

Data files are read on a hot path where even that count is a third of the parse time, so the readers only
turn the parser's RecursionError into :class:`JsonTooDeepError` (the line then nests hundreds of levels deep,
well past the ceiling), and the places that recurse into a parsed record's values (``json.dumps`` of ``tools``
and ``tool_calls`` in :mod:`lora_engine.data.formats`) check :func:`nests_deeper_than` first. A record that
parsed with a deep value in a field nobody reads is used as it is.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 100
"""Arrays and objects may nest this many levels (a chat record needs about four)."""


class JsonTooDeepError(ValueError):
    """The JSON nests more than :data:`MAX_JSON_DEPTH` levels. A ValueError, as malformed JSON is."""

    def __init__(self, limit: int = MAX_JSON_DEPTH):
        super().__init__(f"the JSON is nested more than {limit} levels deep; flatten it (no field needs "
                         "more than a few levels)")
        self.limit = limit


def nests_deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests more than ``limit`` arrays/objects (measured without recursion).

    Args:
        value: what ``json.loads`` returned.
        limit: the number of levels allowed (a bare list or dict is one level).

    Returns:
        True when some container lies deeper than ``limit`` levels.
    """
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def may_nest_deeper_than(text: str | bytes, limit: int = MAX_JSON_DEPTH, start: int = 0,
                         end: int | None = None) -> bool:
    """False when ``text[start:end]`` has too few opening brackets to nest more than ``limit`` levels."""
    end = len(text) if end is None else end
    if isinstance(text, bytes):
        return text.count(b"[", start, end) + text.count(b"{", start, end) > limit
    return text.count("[", start, end) + text.count("{", start, end) > limit


def check_nesting(text: str | bytes, value: Any, limit: int = MAX_JSON_DEPTH, start: int = 0,
                  end: int | None = None) -> None:
    """Raise :class:`JsonTooDeepError` when ``value``, parsed from ``text[start:end]``, nests too deeply."""
    if may_nest_deeper_than(text, limit, start, end) and nests_deeper_than(value, limit):
        raise JsonTooDeepError(limit)


def loads(text: str | bytes, limit: int = MAX_JSON_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` for JSON from people: the same result, or a ValueError for anything nested too deeply.

    Args:
        text: the JSON text.
        limit: the levels allowed.
        **kwargs: passed to ``json.loads`` (e.g. ``parse_constant``).

    Returns:
        The parsed value.

    Raises:
        JsonTooDeepError: the value nests more than ``limit`` levels (whether or not Python could parse it).
        ValueError: malformed JSON (``json.JSONDecodeError``), or undecodable bytes (``UnicodeDecodeError``).
    """
    try:
        value = json.loads(text, **kwargs)
    except RecursionError:
        raise JsonTooDeepError(limit) from None
    check_nesting(text, value, limit)
    return value

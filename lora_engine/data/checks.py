"""Check-only fast path of validation: does a record normalise with no problem? (No :class:`Example` built.)

:func:`lora_engine.data.formats.normalise` builds turns, field names and problem messages for every record;
validation without a tokenizer only needs to know that a record is fine. Each check here answers True only
when :func:`normalise` would return an example without raising, and answers False (never raises) for
anything else, including shapes it does not bother to handle (OpenAI content parts, ``tool_calls``,
non-string ``tools``...). False is not a verdict: the caller then runs the full :func:`normalise`, which
finds the problems, with their line, field and wording, or accepts the record after all. So a check may be
conservative, never lenient; ``tests/engine/test_data_checks.py`` pins both paths to the same reports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..json_nesting import loads as json_loads
from .formats import SHAREGPT_ROLES

RecordCheck = Callable[[dict[str, Any]], bool]


def _filled(value: Any) -> bool:
    """A required string field without a problem: a string with a non-whitespace character."""
    return type(value) is str and value != "" and not value.isspace()


def _plain_extras(record: dict[str, Any]) -> bool:
    """Not preference data, and the optional ``system`` and ``tools`` columns in their common forms."""
    system, tools = record.get("system"), record.get("tools")
    return (not ("chosen" in record and "rejected" in record)
            and (system is None or type(system) is str) and (tools is None or type(tools) is str))


def _text(record: dict[str, Any]) -> bool:
    return _filled(record.get("text")) and not ("chosen" in record and "rejected" in record)


def _prompt_completion(record: dict[str, Any]) -> bool:
    return (_filled(record.get("prompt")) and _filled(record.get("completion"))
            and not ("chosen" in record and "rejected" in record))


def _alpaca(record: dict[str, Any]) -> bool:
    extra = record.get("input")
    if not (_filled(record.get("instruction")) and _filled(record.get("output"))
            and (extra is None or type(extra) is str) and _plain_extras(record)):
        return False
    history = record.get("history")
    if not history:
        return True
    return type(history) is list and all(
        type(pair) is list and len(pair) == 2 and _filled(pair[0]) and _filled(pair[1]) for pair in history)


def _turns_from_text(value: Any) -> list | None:
    """The list of turns a CSV or Parquet cell holds as JSON text, or None."""
    if type(value) is str and value.lstrip().startswith("["):
        try:
            value = json_loads(value)
        except ValueError:
            return None
    return value if type(value) is list else None


# The conversation rules of formats.check_turn_order as the (previous role, role) pairs they allow (None: no
# turn yet): a system turn only comes first, the first other turn is a user turn, a tool result follows an
# assistant turn or another result. The last turn being an assistant answer is checked at the end.
_ALLOWED_STEPS = frozenset({
    (None, "system"), (None, "user"), ("system", "user"),
    ("user", "user"), ("user", "assistant"),
    ("assistant", "user"), ("assistant", "assistant"), ("assistant", "tool"),
    ("tool", "user"), ("tool", "assistant"), ("tool", "tool"),
})


def _openai_chat(record: dict[str, Any]) -> bool:
    messages = record.get("messages")
    if type(messages) is not list:
        messages = _turns_from_text(messages)
    if not messages or not _plain_extras(record):
        return False
    previous, trained = None, False
    for message in messages:
        if type(message) is not dict:
            return False
        role, content = message.get("role"), message.get("content")
        if type(role) is not str or type(content) is not str or (previous, role) not in _ALLOWED_STEPS:
            return False
        if role != "system" and (not content or content.isspace()):
            return False
        if "weight" in message:
            weight = message["weight"]
            if weight not in (0, 1):
                return False
            trained = trained or (role == "assistant" and weight != 0)
        else:
            trained = trained or role == "assistant"
        previous = role
    return previous == "assistant" and trained


def _sharegpt(record: dict[str, Any]) -> bool:
    conversations = record.get("conversations")
    if type(conversations) is not list:
        conversations = _turns_from_text(conversations)
    if not conversations or not _plain_extras(record):
        return False
    previous = None
    for message in conversations:
        if type(message) is not dict:
            return False
        source = message["from"] if "from" in message else message.get("role")
        role = SHAREGPT_ROLES.get(source) if type(source) is str else None
        content = message["value"] if "value" in message else message.get("content")
        if type(content) is not str or (previous, role) not in _ALLOWED_STEPS:
            return False
        if role != "system" and (not content or content.isspace()):
            return False
        previous = role
    return previous == "assistant"  # every assistant turn of ShareGPT is trained


RECORD_CHECKS: dict[str, RecordCheck] = {
    "text": _text, "prompt_completion": _prompt_completion, "alpaca": _alpaca,
    "openai_chat": _openai_chat, "sharegpt": _sharegpt,
}
"""Per format: True when the record normalises with no problem (see the module docstring)."""

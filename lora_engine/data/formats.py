"""Data formats: detect them, and normalise each record to an :class:`Example` (a list of turns).

Formats (the names of :data:`lora_engine.config.DATA_FORMATS`):

- ``text``: ``{"text": ...}``; also every line of a ``.txt`` file. Trained on every token.
- ``prompt_completion``: ``{"prompt": ..., "completion": ...}``. Not a chat: the prompt and completion
  are concatenated as raw text (no chat template), and the loss is on the completion.
- ``alpaca``: ``{"instruction", "input", "output"[, "system"][, "history"]}``. The user turn is the
  instruction, then a blank line and the input when the input is not empty.
- ``openai_chat``: ``{"messages": [{"role", "content"[, "weight"]}]}``. Assistant turns with
  ``"weight": 0`` are context, not trained.
- ``sharegpt``: ``{"conversations": [{"from", "value"}]}`` with ``human``/``user``, ``gpt``/``assistant``,
  ``system``, ``function_call`` (an assistant turn, trained) and ``observation`` (a tool result, not trained).

A ``tools`` column (a JSON string or list, as in ShareGPT tool-calling data) is appended to the system
prompt. A ``system`` column is the system prompt.

Conversation rules (each broken rule is a problem with the record's line and the field):
a system turn may only come first; the first other turn is a user turn; a tool turn must follow an
assistant turn; the last turn is an assistant answer; every turn but the system has non-empty content.
Consecutive user turns (or assistant turns) are allowed: they are rendered as they are.

Preference data (``chosen``/``rejected``) raises :class:`~lora_engine.errors.UnsupportedDataError`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import DATA_FORMATS
from ..errors import DataError, DataProblem, UnsupportedDataError
from ..json_nesting import JsonTooDeepError, nests_deeper_than
from ..json_nesting import loads as json_loads

FORMATS = tuple(f for f in DATA_FORMATS if f != "auto")
PREFERENCE_MESSAGE = "preference data is not supported (yet)"
CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
    "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool",
}
_FORMAT_KEYS = (  # detection order: the first format whose keys are all present wins
    ("openai_chat", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("text", ("text",)),
)


class Turn(NamedTuple):
    """One turn: ``role`` (system, user, assistant, tool; or prompt/completion/text for raw examples)."""

    role: str
    content: str
    trainable: bool


@dataclass(frozen=True)
class Example:
    """A record in normalised form.

    ``chat`` examples go through the chat template; raw examples (text, prompt/completion) are the
    concatenation of their turns' contents. ``line`` is where the record is in its file.
    """

    turns: tuple[Turn, ...]
    chat: bool
    line: int | None = None

    @property
    def text(self) -> str | None:
        """The text of a plain-text example, else None."""
        if not self.chat and len(self.turns) == 1 and self.turns[0].role == "text":
            return self.turns[0].content
        return None


class RecordError(ValueError):
    """A record does not fit its format; ``problems`` has one entry per broken rule."""

    def __init__(self, problems: list[DataProblem]):
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


def is_preference(record: dict[str, Any]) -> bool:
    return "chosen" in record and "rejected" in record


def preference_error(line: int | None) -> UnsupportedDataError:
    return UnsupportedDataError(
        [DataProblem(line, "this record has 'chosen' and 'rejected' answers (DPO/preference pairs)", "chosen")],
        PREFERENCE_MESSAGE + "; upload supervised data (text, prompt/completion, Alpaca, chat) instead",
    )


def format_of_record(record: dict[str, Any], line: int | None = None) -> str | None:
    """The format a record looks like, or None.

    Raises:
        UnsupportedDataError: preference data.
    """
    if is_preference(record):
        raise preference_error(line)
    for name, keys in _FORMAT_KEYS:
        if all(key in record for key in keys):
            return name
    return None


def detect_from_records(items: Iterable[tuple[int | None, dict[str, Any]]]) -> str:
    """The format of the first record that has a recognisable shape.

    Raises:
        UnsupportedDataError: preference data. DataError: no record has a known shape.
    """
    first: tuple[int | None, list[str]] | None = None
    for line, record in items:
        name = format_of_record(record, line)
        if name:
            return name
        if first is None:
            first = (line, sorted(record))
    if first is None:
        raise DataError([DataProblem(None, "the file has no records")], "no data to detect a format from")
    line, keys = first
    raise DataError([DataProblem(line, f"unrecognised fields {keys}: expected 'text', 'prompt'+'completion', "
                                       "'instruction'+'output' (Alpaca), 'messages' (OpenAI chat) or "
                                       "'conversations' (ShareGPT); or choose the format explicitly")],
                    "cannot detect the data format")


def normalise(record: dict[str, Any], fmt: str, line: int | None = None) -> Example:
    """Turn a record of format ``fmt`` into an :class:`Example`.

    Raises:
        UnsupportedDataError: preference data. RecordError: the record breaks its format's rules.
    """
    if is_preference(record):
        raise preference_error(line)
    try:
        normaliser = _NORMALISERS[fmt]
    except KeyError:
        raise DataError([DataProblem(None, f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")]) from None
    problems: list[DataProblem] = []
    example = normaliser(record, line, problems)
    if problems:
        raise RecordError(problems)
    return example


def _string(record: dict[str, Any], key: str, line: int | None, problems: list[DataProblem],
            required: bool = True, field: str | None = None) -> str:
    value = record.get(key)
    field = field or key
    if value is None:
        if required:
            problems.append(DataProblem(line, "missing (required for this format)", field))
        return ""
    if not isinstance(value, str):
        problems.append(DataProblem(line, f"must be a string, found {type(value).__name__}", field))
        return ""
    if required and not value.strip():
        problems.append(DataProblem(line, "is empty", field))
    return value


def _text(record: dict[str, Any], line: int | None, problems: list[DataProblem]) -> Example:
    text = record.get("text")
    if type(text) is str and text and not text.isspace():  # the hot path: no copy of the text
        return Example((Turn("text", text, True),), chat=False, line=line)
    _string(record, "text", line, problems)
    return Example((), chat=False, line=line)


def _prompt_completion(record: dict[str, Any], line: int | None, problems: list[DataProblem]) -> Example:
    prompt = _string(record, "prompt", line, problems)
    completion = _string(record, "completion", line, problems)
    return Example((Turn("prompt", prompt, False), Turn("completion", completion, True)), chat=False, line=line)


def _system_turn(record: dict[str, Any], line: int | None, problems: list[DataProblem],
                 system: str = "") -> list[Turn]:
    system = system or _string(record, "system", line, problems, required=False)
    tools = record.get("tools")
    if tools not in (None, "", []):
        if not isinstance(tools, str):
            tools = _as_json_text(tools, "tools", line, problems)
        intro = "You can call the following tools (JSON schema):\n" + tools
        system = f"{system}\n\n{intro}" if system.strip() else intro
    return [Turn("system", system, False)] if system.strip() else []


def _as_json_text(value: Any, key: str, line: int | None, problems: list[DataProblem]) -> str:
    """A parsed JSON value as text for the prompt (``json.dumps`` recurses per level: refuse deep values first)."""
    if nests_deeper_than(value):
        problems.append(DataProblem(line, str(JsonTooDeepError()), key))
        return ""
    return json.dumps(value, ensure_ascii=False)


def _alpaca(record: dict[str, Any], line: int | None, problems: list[DataProblem]) -> Example:
    turns = _system_turn(record, line, problems)
    history = record.get("history") or []
    if not isinstance(history, list):
        problems.append(DataProblem(line, "must be a list of [question, answer] pairs", "history"))
        history = []
    for i, pair in enumerate(history):
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or not all(isinstance(x, str) and x.strip() for x in pair)):
            problems.append(DataProblem(line, "must be a [question, answer] pair of non-empty strings",
                                        f"history[{i}]"))
            continue
        turns += [Turn("user", pair[0], False), Turn("assistant", pair[1], True)]
    instruction = _string(record, "instruction", line, problems)
    extra = _string(record, "input", line, problems, required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns += [Turn("user", prompt, False), Turn("assistant", _string(record, "output", line, problems), True)]
    return Example(tuple(turns), chat=True, line=line)


def _message_list(record: dict[str, Any], key: str, line: int | None, problems: list[DataProblem]) -> list:
    value = record.get(key)
    if isinstance(value, str) and value.lstrip().startswith("["):  # CSV/Parquet cells hold JSON text
        try:
            value = json_loads(value)
        except JsonTooDeepError as exc:
            problems.append(DataProblem(line, str(exc), key))
            return []
        except ValueError:
            problems.append(DataProblem(line, "is not valid JSON", key))
            return []
    if not isinstance(value, list) or not value:
        problems.append(DataProblem(line, "must be a non-empty list of turns", key))
        return []
    return value


def _content(value: Any) -> str | None:
    """Message content: a string, or OpenAI content parts (their text is joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return None


def _openai_chat(record: dict[str, Any], line: int | None, problems: list[DataProblem]) -> Example:
    turns: list[Turn] = []
    for i, message in enumerate(_message_list(record, "messages", line, problems)):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            problems.append(DataProblem(line, "must be an object with 'role' and 'content'", field))
            continue
        role = message.get("role")
        if role not in CHAT_ROLES:
            problems.append(DataProblem(line, f"unknown role {role!r}; use one of {', '.join(CHAT_ROLES)}",
                                        f"{field}.role"))
            continue
        content = _content(message.get("content"))
        if content is None and role == "assistant" and message.get("tool_calls"):
            content = _as_json_text(message["tool_calls"], f"{field}.tool_calls", line, problems)
        if content is None:
            problems.append(DataProblem(line, "must be a string", f"{field}.content"))
            continue
        weight = message.get("weight", 1)
        if weight not in (0, 1):
            problems.append(DataProblem(line, f"must be 0 or 1 (got {weight!r})", f"{field}.weight"))
        turns.append(Turn(role, content, role == "assistant" and weight != 0))
    return _chat_example(record, turns, "messages", line, problems)


def _sharegpt(record: dict[str, Any], line: int | None, problems: list[DataProblem]) -> Example:
    turns: list[Turn] = []
    for i, message in enumerate(_message_list(record, "conversations", line, problems)):
        field = f"conversations[{i}]"
        if not isinstance(message, dict):
            problems.append(DataProblem(line, "must be an object with 'from' and 'value'", field))
            continue
        source = message.get("from", message.get("role"))
        role = SHAREGPT_ROLES.get(source) if isinstance(source, str) else None
        if role is None:
            problems.append(DataProblem(line, f"unknown speaker {source!r}; use one of "
                                              f"{', '.join(SHAREGPT_ROLES)}", f"{field}.from"))
            continue
        content = message.get("value", message.get("content"))
        if not isinstance(content, str):
            problems.append(DataProblem(line, "must be a string", f"{field}.value"))
            continue
        turns.append(Turn(role, content, role == "assistant"))
    return _chat_example(record, turns, "conversations", line, problems)


def _chat_example(record: dict[str, Any], turns: list[Turn], key: str, line: int | None,
                  problems: list[DataProblem]) -> Example:
    system = ""
    if turns and turns[0].role == "system":
        system, turns = turns[0].content, turns[1:]
    if not problems:
        check_turn_order(turns, key, line, problems, offset=1 if system else 0)
    turns = _system_turn(record, line, problems, system) + turns
    return Example(tuple(turns), chat=True, line=line)


def check_turn_order(turns: list[Turn], key: str, line: int | None, problems: list[DataProblem],
                     offset: int = 0) -> None:
    """Apply the conversation rules (see the module docstring) to the turns after the system turn."""
    for i, turn in enumerate(turns):
        field = f"{key}[{i + offset}]"
        if turn.role == "system":
            problems.append(DataProblem(line, "a system turn may only be the first turn", field))
        elif i == 0 and turn.role != "user":
            article = "an" if turn.role[:1] in "aeiou" else "a"
            problems.append(DataProblem(line, f"the conversation starts with {article} {turn.role} turn; "
                                              "it must start with a user turn (after an optional system turn)", field))
        elif turn.role == "tool" and turns[i - 1].role not in ("assistant", "tool"):
            problems.append(DataProblem(line, "a tool result must follow an assistant (function call) turn", field))
        if turn.role != "system" and not turn.content.strip():
            problems.append(DataProblem(line, "the content is empty", field))
    if not turns:
        problems.append(DataProblem(line, "the conversation has no user and assistant turns", key))
    elif turns[-1].role != "assistant":
        last = f"{key}[{len(turns) - 1 + offset}]"
        problems.append(DataProblem(line, f"the last turn is a {turns[-1].role} turn with no answer; "
                                          "end the conversation with an assistant turn", last))
    elif not any(t.trainable for t in turns):
        problems.append(DataProblem(line, "no assistant turn is trained (all have weight 0)", key))


_NORMALISERS = {
    "text": _text, "prompt_completion": _prompt_completion, "alpaca": _alpaca,
    "openai_chat": _openai_chat, "sharegpt": _sharegpt,
}

"""Render an :class:`~lora_engine.data.formats.Example` to token ids and a per-token "trained" mask.

Three ways, chosen in this order:

1. **Chat template with ``{% generation %}`` markers.** ``apply_chat_template(...,
   return_assistant_tokens_mask=True)`` marks the assistant tokens; each marked run is matched to its
   assistant turn so turns that are not trained (OpenAI ``weight: 0``) are unmarked again. If the runs
   do not line up one-to-one with the assistant turns, method 2 is used.
2. **Chat template without markers.** The conversation is rendered as text once, and each assistant
   answer's character span is found by rendering prefixes: the answer of turn *i* starts where
   ``messages[:i]`` rendered with ``add_generation_prompt=True`` ends and stops where ``messages[:i+1]``
   ends. Tokens starting inside a trained span are trained (offsets from a fast tokenizer; a slow
   tokenizer tokenizes the spans one by one).
3. **Plain fallback, when the tokenizer has no chat template.** The documented layout is::

       [bos]System: {system}\\n\\nUser: {user}\\n\\nAssistant: {answer}[eos]\\n\\nUser: ...

   Roles are ``System``, ``User``, ``Assistant`` and ``Tool``. Only ``{answer}[eos]`` is trained.

Raw examples (plain text, prompt/completion) never use a template: ``[bos] + prompt + completion + [eos]``
with the loss on the completion (or on everything for plain text). ``[bos]`` is added when the tokenizer
has a BOS token distinct from its EOS token (GPT-2 style tokenizers have none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import DataProblem
from .formats import Example, RecordError, Turn

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
PLAIN_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


@dataclass(frozen=True)
class Rendered:
    """Token ids and, for each, whether the loss is computed on it."""

    ids: list[int]
    trained: list[bool]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_example(example: Example, tokenizer: Any, train_on_all: bool = False) -> Rendered:
    """Token ids and trained mask of one example (no truncation).

    Args:
        example: a normalised example.
        tokenizer: a Hugging Face tokenizer.
        train_on_all: mark every token as trained (prompts, system and tool turns too).

    Returns:
        A :class:`Rendered`.

    Raises:
        RecordError: the chat template rejects the conversation.
    """
    if not example.chat:
        rendered = _render_raw(example, tokenizer)
    elif has_chat_template(tokenizer):
        rendered = _render_with_template(example, tokenizer)
    else:
        rendered = _render_plain(example, tokenizer)
    if train_on_all:
        return Rendered(rendered.ids, [True] * len(rendered.ids))
    return rendered


def _bos(tokenizer: Any) -> list[int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [bos] if bos is not None and bos != eos else []


def _eos(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def _from_segments(tokenizer: Any, segments: list[tuple[str | list[int], bool]]) -> Rendered:
    """Tokenize (text or ids, trained) segments one by one, merging neighbours with the same flag."""
    merged: list[tuple[str | list[int], bool]] = []
    for part, trained in segments:
        if merged and isinstance(part, str) and isinstance(merged[-1][0], str) and merged[-1][1] == trained:
            merged[-1] = (merged[-1][0] + part, trained)
        else:
            merged.append((part, trained))
    ids: list[int] = []
    mask: list[bool] = []
    for part, trained in merged:
        part_ids = _encode(tokenizer, part) if isinstance(part, str) else part
        ids += part_ids
        mask += [trained] * len(part_ids)
    return Rendered(ids, mask)


def _render_raw(example: Example, tokenizer: Any) -> Rendered:
    segments: list[tuple[str | list[int], bool]] = [(_bos(tokenizer), False)]
    segments += [(turn.content, turn.trainable) for turn in example.turns]
    segments.append((_eos(tokenizer), True))
    return _from_segments(tokenizer, segments)


def _render_plain(example: Example, tokenizer: Any) -> Rendered:
    segments: list[tuple[str | list[int], bool]] = [(_bos(tokenizer), False)]
    last = len(example.turns) - 1
    for i, turn in enumerate(example.turns):
        name = PLAIN_ROLE_NAMES[turn.role]
        if turn.role == "assistant":
            segments += [(f"{name}: ", False), (turn.content, turn.trainable), (_eos(tokenizer), turn.trainable)]
            if i != last:
                segments.append(("\n\n", False))
        else:
            segments.append((f"{name}: {turn.content}\n\n", False))
    return _from_segments(tokenizer, segments)


def _messages(turns: tuple[Turn, ...] | list[Turn], tool_as_user: bool) -> list[dict[str, str]]:
    return [{"role": "user" if tool_as_user and t.role == "tool" else t.role, "content": t.content} for t in turns]


def _render_with_template(example: Example, tokenizer: Any) -> Rendered:
    """Try the template as is; templates that reject a 'tool' role get tool results as user turns."""
    uses_tool = any(t.role == "tool" for t in example.turns)
    error: Exception | None = None
    for tool_as_user in ((False, True) if uses_tool else (False,)):
        try:
            return _render_template_once(example, tokenizer, tool_as_user)
        except Exception as exc:  # noqa: BLE001 - jinja raises many kinds (TemplateError, TypeError, ...)
            error = exc
    raise RecordError([DataProblem(example.line, f"the model's chat template rejected this conversation ({error}); "
                                                 "check the turn order or use a model with a different template")])


def _render_template_once(example: Example, tokenizer: Any, tool_as_user: bool) -> Rendered:
    messages = _messages(example.turns, tool_as_user)
    if _GENERATION_TAG.search(tokenizer.chat_template):
        rendered = _render_generation_mask(example, tokenizer, messages)
        if rendered is not None:
            return rendered
    return _render_prefix_spans(example, tokenizer, messages)


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, flag in enumerate(mask + [0]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _render_generation_mask(example: Example, tokenizer: Any, messages: list[dict[str, str]]) -> Rendered | None:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids = list(out["input_ids"])
    runs = _runs(list(out["assistant_masks"]))
    answers = [t for t in example.turns if t.role == "assistant"]
    if len(runs) != len(answers):
        return None
    trained = [False] * len(ids)
    for (start, end), turn in zip(runs, answers, strict=True):
        if turn.trainable:
            trained[start:end] = [True] * (end - start)
    return Rendered(ids, trained)


def _answer_spans(example: Example, tokenizer: Any, messages: list[dict[str, str]]
                  ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its trained answers."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, turn in enumerate(example.turns):
        if turn.role != "assistant" or not turn.trainable:
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(before)):
            raise ValueError("the chat template does not render conversations prefix by prefix, so the answer "
                             "tokens cannot be located")
        spans.append((len(before), len(upto)))
    return full, spans


def _render_prefix_spans(example: Example, tokenizer: Any, messages: list[dict[str, str]]) -> Rendered:
    full, spans = _answer_spans(example, tokenizer, messages)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        trained = [any(lo <= start < hi for lo, hi in spans) for start, _ in enc["offset_mapping"]]
        return Rendered(ids, trained)
    segments: list[tuple[str | list[int], bool]] = []
    pos = 0
    for lo, hi in spans:
        segments += [(full[pos:lo], False), (full[lo:hi], True)]
        pos = hi
    segments.append((full[pos:], False))
    return _from_segments(tokenizer, [s for s in segments if s[0]])

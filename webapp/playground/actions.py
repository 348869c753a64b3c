"""Every change to a playground session: create (and enqueue), start, record each answer, finish or fail.

Each write is followed, after commit, by a push of the session to its page (:mod:`webapp.playground.events`).
The worker is the only writer of a running session, one answer after the other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from lora_engine.playground import GenerationSettings
from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel
from webapp.lib.delivery_cap import DeliveryCap
from webapp.lib.leased_work import send_task_best_effort

from . import events
from .models import MAX_ADAPTERS, PlaygroundSession

PLAYGROUND_TASK = "worker.tasks.playground"
MAX_PROMPT_CHARS = 20_000
DEFAULT_SETTINGS: dict[str, Any] = {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9, "seed": 0}


class PlaygroundRejected(ValueError):  # noqa: N818 - named like the other areas' *Rejected errors
    """The request cannot become a session. ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def parse_settings(raw: Any) -> dict[str, Any]:
    """Generation settings with defaults filled in.

    Raises:
        PlaygroundRejected: not an object, an unknown setting, or a value out of range (every problem named).
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PlaygroundRejected("settings must be an object such as {\"max_new_tokens\": 128}.", param="settings")
    unknown = sorted(set(raw) - set(DEFAULT_SETTINGS))
    if unknown:
        raise PlaygroundRejected(f"Unknown setting(s) {', '.join(unknown)}; the settings are "
                                 f"{', '.join(DEFAULT_SETTINGS)}.", param="settings")
    values = {**DEFAULT_SETTINGS, **raw}
    if isinstance(values["temperature"], int) and not isinstance(values["temperature"], bool):
        values["temperature"] = float(values["temperature"])
    if isinstance(values["top_p"], int) and not isinstance(values["top_p"], bool):
        values["top_p"] = float(values["top_p"])
    problems = GenerationSettings(**values).problems()
    if problems:
        raise PlaygroundRejected("Invalid settings: " + "; ".join(problems) + ".", param="settings")
    return values


def check_adapter_count(count: int) -> None:
    """Raises PlaygroundRejected when more adapters are asked for than one prompt is answered by."""
    if count > MAX_ADAPTERS:
        raise PlaygroundRejected(f"Pick at most {MAX_ADAPTERS} adapters (got {count}); the base model answers "
                                 "too, beside them.", param="adapters")


def _answer(key: str, label: str) -> dict[str, Any]:
    return {"key": key, "label": label, "state": "pending", "text": "", "tokens": 0, "finish_reason": None,
            "seconds": None}


def create_session(owner, base_model: BaseModel, adapters: Sequence[Adapter], prompt: str,
                   settings: Any = None, parent: PlaygroundSession | None = None) -> PlaygroundSession:
    """Record a playground session and queue it for a worker (after commit).

    Args:
        owner: the user asking (the caller has checked they may see ``base_model``, ``adapters`` and ``parent``).
        base_model: the base model that answers.
        adapters: up to four adapters of ``base_model``, in display order.
        prompt: the user's message (rendered with the base model's chat template by the worker).
        settings: generation settings (defaults for the missing ones; a follow-up's default is its parent's).
        parent: the session this one follows up: each column then answers its own conversation so far.

    Raises:
        PlaygroundRejected: an empty or huge prompt, too many or repeated adapters, an adapter of another base
            model, invalid settings, or a parent that has not succeeded or has another base model or adapters.
            Nothing is stored then.
    """
    prompt = prompt if isinstance(prompt, str) else ""
    if not prompt.strip():
        raise PlaygroundRejected("Write a prompt for the models to answer.", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PlaygroundRejected(f"The prompt is {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.",
                                 param="prompt")
    check_adapter_count(len(adapters))
    if len({a.pk for a in adapters}) != len(adapters):
        raise PlaygroundRejected("Each adapter can be picked once.", param="adapters")
    for adapter in adapters:
        if adapter.base_model_id != base_model.pk:
            raise PlaygroundRejected(f"Adapter {adapter.name!r} was trained on another base model, not "
                                     f"{base_model.name!r}; pick adapters of the chosen base model.", param="adapters")
    history = _history_after(parent, base_model, adapters) if parent is not None else []
    values = parse_settings(parent.settings if parent is not None and settings is None else settings)
    outputs = [_answer("base", f"{base_model.name} (base)")] + [_answer(str(a.pk), a.name) for a in adapters]
    with transaction.atomic():
        session = PlaygroundSession.objects.create(
            owner=owner, base_model=base_model, adapter_ids=[str(a.pk) for a in adapters], prompt=prompt,
            settings=values, outputs=outputs, parent=parent, history=history)
        transaction.on_commit(lambda: enqueue_session(session.id))
    return session


def _history_after(parent: PlaygroundSession, base_model: BaseModel, adapters: Sequence[Adapter]) -> list[dict]:
    """The parent's conversation with its own turn added (each column's answer by key)."""
    if parent.state != PlaygroundSession.State.SUCCEEDED:
        raise PlaygroundRejected(f"That session is {parent.state}; follow up once every answer has arrived (or start "
                                 "a new chat).", param="parent")
    if parent.base_model_id != base_model.pk or parent.adapter_ids != [str(a.pk) for a in adapters]:
        raise PlaygroundRejected("A follow-up is answered by its parent's base model and adapters; start a new chat "
                                 "to change them.", param="parent")
    answers = {output["key"]: output["text"] for output in parent.outputs}
    return [*parent.history, {"prompt": parent.prompt, "answers": answers}]


def enqueue_session(session_id: uuid.UUID | str) -> bool:
    """Send the Celery message that wakes a worker. Never raises (the session then stays queued)."""
    return send_task_best_effort(PLAYGROUND_TASK, session_id, "playground session")


# ---------------------------------------------------------------------------------------------------------
# The worker's writes


def _update(session_id: Any, change: Callable[[PlaygroundSession], None]) -> PlaygroundSession:
    with transaction.atomic():
        session = PlaygroundSession.objects.select_for_update().select_related("base_model").get(pk=session_id)
        change(session)
        session.save()
        events.on_commit_emit(session)
    return session


def start_session(session_id: Any) -> PlaygroundSession | None:
    """Claim a queued session for this worker (compare-and-set); None when it is not queued (a second delivery)."""
    claimed = PlaygroundSession.objects.filter(pk=session_id, state=PlaygroundSession.State.QUEUED).update(
        state=PlaygroundSession.State.RUNNING, started_at=timezone.now(), unclaimed_deliveries=0)
    if not claimed:
        return None
    return _update(session_id, lambda s: None)


def record_prompt_tokens(session_id: Any, count: int) -> PlaygroundSession:
    def change(session: PlaygroundSession) -> None:
        session.prompt_tokens = count

    return _update(session_id, change)


def _set_answer(session: PlaygroundSession, key: str, **fields: Any) -> None:
    for output in session.outputs:
        if output["key"] == key:
            output.update(fields)
            return
    raise KeyError(f"session {session.pk} has no answer {key!r}")


def start_answer(session_id: Any, key: str) -> PlaygroundSession:
    return _update(session_id, lambda s: _set_answer(s, key, state="running", text="", tokens=0))


def record_answer(session_id: Any, key: str, text: str, tokens: int, finish_reason: str,
                  seconds: float) -> PlaygroundSession:
    """Store one finished answer (the page gets the whole session, so a missed token piece is repaired)."""
    return _update(session_id, lambda s: _set_answer(s, key, state="done", text=text, tokens=tokens,
                                                     finish_reason=finish_reason, seconds=round(seconds, 3)))


def finish_session(session_id: Any) -> PlaygroundSession:
    def change(session: PlaygroundSession) -> None:
        session.state = PlaygroundSession.State.SUCCEEDED
        session.finished_at = timezone.now()

    return _update(session_id, change)


def touch_session(session_id: Any) -> None:
    """Say the worker is still answering (generating one long answer writes nothing else for a while)."""
    PlaygroundSession.objects.filter(pk=session_id, state=PlaygroundSession.State.RUNNING).update(
        updated_at=timezone.now())


STALLED_MESSAGE = ("The worker answering this prompt stopped (it was restarted, or ran out of memory). Answers "
                   "that finished are kept; run the prompt again for the others.")


def reap_stalled_sessions() -> list[uuid.UUID]:
    """Fail every running session its worker stopped writing to PLAYGROUND_STALL_SECONDS ago (a dead worker:
    its message is not redelivered before the broker's visibility timeout, and a redelivery would be dropped).

    Returns:
        The ids of the sessions failed.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.PLAYGROUND_STALL_SECONDS)
    stalled = list(PlaygroundSession.objects.filter(state=PlaygroundSession.State.RUNNING, updated_at__lt=cutoff)
                   .values_list("pk", flat=True)[:100])
    technical = f"no write from the worker for {settings.PLAYGROUND_STALL_SECONDS}s"

    def fail_if_still_stalled(session: PlaygroundSession) -> None:
        if session.state == PlaygroundSession.State.RUNNING and session.updated_at < cutoff:  # re-checked, locked
            _mark_failed(session, technical, STALLED_MESSAGE)

    for session_id in stalled:
        _update(session_id, fail_if_still_stalled)
    return stalled


def _mark_failed(session: PlaygroundSession, technical: str, message: str) -> None:
    session.state = PlaygroundSession.State.FAILED
    session.finished_at = timezone.now()
    session.error, session.error_message = technical, message
    for output in session.outputs:
        if output["state"] != "done":
            output["state"] = "failed"


def fail_session(session_id: Any, technical: str, message: str) -> PlaygroundSession:
    """End the session as failed; answers still pending or running are marked failed, finished ones are kept."""
    return _update(session_id, lambda session: _mark_failed(session, technical, message))


def _fail_unstarted(session: PlaygroundSession, technical: str, message: str) -> None:
    _mark_failed(session, technical, message)
    session.save()
    events.on_commit_emit(session)


# Deliveries that fail before they start the session (see webapp.lib.delivery_cap): a running session whose worker
# died is failed by reap_stalled_sessions instead.
SESSION_DELIVERIES = DeliveryCap(PlaygroundSession, "playground session", "running the prompt again",
                                 fail=_fail_unstarted)

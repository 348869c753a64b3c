"""What the playground pushes to its page, through the one emitter (:func:`webapp.jobs.events.emit_to_group`).

Best-effort like every push: never raises, and the page catches up from the session snapshot (sent on
connect and after every answer) when a token message is lost. Group: ``playground-<session id>``.

Messages::

    {"type": "session", "session": <serializers.session_json>}          state changes, each finished answer
    {"type": "tokens", "key": "base" | <adapter id>, "offset": int, "text": str, "tokens": int}
        new text of the answer being generated; ``offset`` is where ``text`` starts in that answer (a page
        whose answer is shorter than ``offset`` missed a piece and waits for the next snapshot)
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from webapp.jobs.events import emit_to_group

from .models import PlaygroundSession
from .serializers import session_json


def session_group(session_id: Any) -> str:
    """Channel group of one playground session's page(s)."""
    return f"playground-{session_id}"


def emit_session(session: PlaygroundSession) -> bool:
    """Push the session's state and answers so far."""
    try:
        payload = {"type": "session", "session": session_json(session)}
    except Exception:  # noqa: BLE001 - a push must never break the write that caused it
        return False
    return emit_to_group(session_group(session.id), payload)


def emit_tokens(session_id: Any, key: str, offset: int, text: str, tokens: int) -> bool:
    """Push a piece of the answer ``key`` as it is generated."""
    return emit_to_group(session_group(session_id),
                         {"type": "tokens", "key": key, "offset": offset, "text": text, "tokens": tokens})


def on_commit_emit(session: PlaygroundSession) -> None:
    """Push the session once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: emit_session(session))

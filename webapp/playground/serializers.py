"""The one JSON shape of a playground session: API answers, the page's first render and websocket snapshots."""

from __future__ import annotations

from typing import Any

from .models import PlaygroundSession


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def session_json(session: PlaygroundSession) -> dict[str, Any]:
    """A session with its answers so far (``outputs``: base first, then each adapter in the order chosen) and,
    for a follow-up, the session it continues and the earlier turns (``history``, oldest first)."""
    return {
        "id": str(session.id),
        "object": "playground.session",
        "base_model": {"id": str(session.base_model_id), "name": session.base_model.name},
        "adapters": [{"id": o["key"], "name": o["label"]} for o in session.outputs if o["key"] != "base"],
        "prompt": session.prompt,
        "parent": str(session.parent_id) if session.parent_id else None,
        "history": session.history,
        "settings": session.settings,
        "state": session.state,
        "outputs": session.outputs,
        "prompt_tokens": session.prompt_tokens,
        "error_message": session.error_message,
        "created_at": _iso(session.created_at),
        "started_at": _iso(session.started_at),
        "finished_at": _iso(session.finished_at),
    }

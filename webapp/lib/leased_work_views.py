"""How views show a row of leased work (webapp.lib.leased_work: merges, GGUF exports): the lifecycle fields of
its JSON, and why its output cannot be downloaded yet."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value else None


def lifecycle_json(row: Any, stage: str, user: Any = None) -> dict[str, Any]:
    """The fields every leased row's JSON has: state, ``stage`` (its name for people), progress, attempt, the
    message for people, times and duration; the technical error only for staff."""
    seconds = (row.finished_at - row.started_at).total_seconds() if row.finished_at and row.started_at else None
    data = {
        "state": row.state,
        "stage": stage,
        "progress": round(row.progress, 4),
        "attempt": row.attempt,
        "error_message": row.error_message or None,
        "created_at": timestamp(row.created_at),
        "started_at": timestamp(row.started_at),
        "finished_at": timestamp(row.finished_at),
        "seconds": round(seconds, 3) if seconds is not None else None,
    }
    if user is not None and user.is_staff:
        data["error"] = row.error or None
    return data


def not_ready_message(row: Any, what: str, stage: str, output: str, output_missing: str) -> str:
    """Why the ``output`` of ``row`` (a ``what``: "merge") is not offered for download; ``output_missing`` is what
    to say when the row succeeded but its output is gone."""
    if row.state == row.State.FAILED:
        return (f"This {what} failed ({row.error_message or 'no details'}), so there is nothing to download. "
                "Request it again to retry.")
    if row.state == row.State.SUCCEEDED:
        return output_missing
    return f"This {what} is {row.state} ({stage}); {output} is offered for download once it has succeeded."

"""The one emitter: every push to a browser (channel_layer.group_send) goes through this module.

The database is the truth; the websocket is only the fast path. So every function here is best-effort:
it never raises (Redis down, a slow network, a full channel) — it logs and drops, and the page catches up
from the database (a gap in ``seq`` makes it refetch). Call the ``emit_*`` functions after the write has
committed (``transaction.on_commit`` or :func:`on_commit`). One exception: a training job's lease holder pushes
its metric points as they happen, numbered by itself, and stores them with those numbers within a second or
so (worker.live); a page that saw a point the database does not have yet refetches until it does.

Groups:
- ``job-<id>``: everyone watching one job (the job page): metric points, state, events.
- ``jobs-user-<id>``: the owner's jobs list page (state and progress of each of their jobs).
- ``jobs-staff``: staff jobs list pages (every job).
- ``sockets-user-<id>``: every open socket of a user; told to close on logout or deactivation.

On Redis these names are prefixed with the install's Redis database number (the live layer's prefix, see
webapp.lib.channel_layers): pub/sub is server-wide, and two installs must not hear each other.

Messages sent to a group carry the browser's JSON already encoded (``text``), so a hundred watchers cost
one encode, not a hundred.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from django.db import transaction

from .estimates import memory_measure

logger = logging.getLogger(__name__)

STAFF_GROUP = "jobs-staff"
LIVE_LAYER_ALIAS = "live"
SEND_TIMEOUT_SECONDS = 2.0
_WARN_EVERY_SECONDS = 30.0


def live_layer_alias() -> str:
    """The channel layer for live pushes: ``CHANNEL_LAYERS["live"]`` when configured, else ``"default"``.

    A Redis pub/sub layer (channels_redis.pubsub.RedisPubSubChannelLayer) suits this fan-out best: a group
    send is one PUBLISH that each web process receives once and hands to all its local sockets, instead of
    one Redis list push and pop per watcher.
    """
    from django.conf import settings

    return LIVE_LAYER_ALIAS if LIVE_LAYER_ALIAS in getattr(settings, "CHANNEL_LAYERS", {}) else "default"


def job_group(job_id: Any) -> str:
    """Channel group of one job's watchers."""
    return f"job-{job_id}"


def user_jobs_group(user_id: Any) -> str:
    """Channel group of one user's jobs list pages."""
    return f"jobs-user-{user_id}"


def user_sockets_group(user_id: Any) -> str:
    """Channel group of every socket a user has open (to close them on logout)."""
    return f"sockets-user-{user_id}"


# ---------------------------------------------------------------------------------------------------------
# What is sent (one schema for the emitter, the consumers' first message and the API)


def point_dict(point: Any) -> dict[str, Any]:
    """A MetricPoint (or a dict shaped like one) as ``{"seq", "step", "split", "values"}``."""
    if isinstance(point, dict):
        return {"seq": point["seq"], "step": point["step"], "split": point.get("split", "train"),
                "values": point.get("values", {})}
    return {"seq": point.seq, "step": point.step, "split": point.split, "values": point.values}


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def job_state(job) -> dict[str, Any]:
    """What a watcher needs to draw a job's header: state, progress, ETA, peak memory, the newest seq."""
    estimate = job.memory_estimate or {}
    return {
        "id": str(job.id),
        "state": job.state,
        "progress": job.progress,
        "current_step": job.current_step,
        "total_steps": job.total_steps,
        "eta_seconds": job.eta_seconds,
        "tokens_seen": job.tokens_seen,
        "error_message": job.error_message,
        "peak_memory_bytes": job.peak_memory_bytes,
        # known once a worker has the job: a page opened while it was queued relabels its memory chart
        "memory_measure": memory_measure(job),
        "estimated_memory_bytes": estimate.get("selected_total"),
        "last_seq": job.last_seq,
        "cancel_requested": job.cancel_requested,
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempt": job.attempt,
    }


def event_dict(event) -> dict[str, Any]:
    """A JobEvent for the page's log tail."""
    return {"id": event.id, "level": event.level, "message": event.message, "created_at": _iso(event.created_at)}


# ---------------------------------------------------------------------------------------------------------
# Public emitters (sync; safe from the worker's recorder thread, actions and views)


def emit_metrics(job_id: Any, points: Iterable[Any]) -> bool:
    """Push newly stored metric points to the job's watchers. Returns False when it could not (never raises).

    Args:
        job_id: the job.
        points: dicts ``{"seq", "step", "split", "values"}`` (or MetricPoint rows), in seq order, committed to
            the database or about to be stored with exactly those numbers by the job's lease holder.
    """
    try:
        payload = [point_dict(p) for p in points]
    except (KeyError, AttributeError, TypeError):
        logger.exception("emit_metrics: malformed points for job %s", job_id)
        return False
    if not payload:
        return True
    text = _dumps_lenient({"type": "points", "points": payload})
    return _send([(job_group(job_id), {"type": "job.push", "text": text})])


def emit_state(job) -> bool:
    """Push a job's state and progress to its page and to the owner's (and staff) jobs lists."""
    try:
        text = _dumps_lenient({"type": "state", "job": job_state(job)})
        owner_id = job.owner_id
    except Exception:  # a half-built job must not break the caller
        logger.exception("emit_state: cannot describe job %s", getattr(job, "id", None))
        return False
    message = {"type": "job.push", "text": text}
    return _send([(job_group(job.id), message), (user_jobs_group(owner_id), message), (STAFF_GROUP, message)])


def emit_job_event(event) -> bool:
    """Push a new JobEvent (a line of the worker's log) to the job's page."""
    try:
        text = _dumps_lenient({"type": "event", "event": event_dict(event)})
        job_id = event.job_id
    except Exception:
        logger.exception("emit_job_event: cannot describe event")
        return False
    return _send([(job_group(job_id), {"type": "job.push", "text": text})])


def close_user_sockets(user_id: Any, session_key: str | None = None, reason: str = "logged out") -> bool:
    """Ask a user's open sockets to close: those of one browser session, or all of them (``None``)."""
    return _send([(user_sockets_group(user_id), {"type": "sockets.close", "session_key": session_key,
                                                 "reason": reason})])


def emit_to_group(group: str, payload: dict[str, Any]) -> bool:
    """Push one JSON message to every socket of ``group`` (any consumer forwarding ``job.push`` messages, such
    as the playground's). For areas without an emitter of their own; never raises."""
    try:
        text = _dumps_lenient(payload)
    except (TypeError, ValueError):
        logger.exception("emit_to_group: payload for %s is not JSON", group)
        return False
    return _send([(group, {"type": "job.push", "text": text})])


def on_commit(emit: Callable[..., Any], *args: Any) -> None:
    """Run ``emit(*args)`` once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: emit(*args))


# ---------------------------------------------------------------------------------------------------------
# Sending: one background event loop per process, so connections to Redis are reused and a caller never
# waits longer than SEND_TIMEOUT_SECONDS.


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None  # NaN/inf are not JSON; the chart shows a gap
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _dumps_lenient(message: dict[str, Any]) -> str:
    return json.dumps(_clean(message), separators=(",", ":"), default=str)


class _SenderLoop:
    """An asyncio loop in a daemon thread, restarted after a fork (Celery's prefork children)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="jobs-events-sender", daemon=True)
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop


_sender = _SenderLoop()
_last_warning = 0.0


async def _group_send_all(messages: list[tuple[str, dict[str, Any]]]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer(live_layer_alias())
    if layer is None:
        return
    for group, message in messages:
        await layer.group_send(group, message)


def _warn(exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARN_EVERY_SECONDS:  # one line per 30 s while Redis is down, not per step
        _last_warning = now
        logger.warning("live update dropped (the page will catch up from the database): %r", exc)


def _send(messages: list[tuple[str, dict[str, Any]]]) -> bool:
    """group_send each (group, message); True when all were handed to the layer. Never raises."""
    try:
        future: Future = asyncio.run_coroutine_threadsafe(_group_send_all(messages), _sender.loop())
    except Exception as exc:  # noqa: BLE001 - best effort by design
        _warn(exc)
        return False
    try:
        asyncio.get_running_loop()
        in_async_context = True
    except RuntimeError:
        in_async_context = False
    if in_async_context:
        # Called from async code: do not block its loop; report failures through the log.
        future.add_done_callback(lambda f: f.exception() and _warn(f.exception()))
        return True
    try:
        future.result(timeout=SEND_TIMEOUT_SECONDS)
        return True
    except Exception as exc:  # noqa: BLE001 - Redis down, timeout, channel full: the DB is the truth
        future.cancel()
        _warn(exc)
        return False

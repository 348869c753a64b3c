"""Websockets for live training curves: ``ws/jobs/<id>/`` (one job) and ``ws/jobs/`` (the jobs list).

Thin: authenticate (scope user from the session or an API key), authorize (owner or staff, before joining
any group), then forward what :mod:`webapp.jobs.events` sends. Group sends are at-most-once, so the job
socket also answers ``{"type": "resume", "after_seq": N}`` with the stored points after N (the page sends
it after every (re)connect), and re-joins its groups before channels_redis forgets them (group expiry).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from lora_engine import json_nesting

from . import events
from .models import Job, MetricPoint

logger = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401  # not logged in, logged out, or deactivated: the page should not reconnect
CLOSE_FORBIDDEN = 4403
RESUME_MAX_POINTS = 20_000  # beyond this the page refetches a downsampled history from the API instead
RESUME_CHUNK = 2_000
LIST_SNAPSHOT_MAX = 200


def rejoin_interval_seconds(layer) -> float:
    """How often a long-lived socket re-joins its groups: well inside channels_redis' group expiry."""
    configured = getattr(settings, "JOBS_WS_REJOIN_SECONDS", None)
    if configured:
        return float(configured)
    expiry = float(getattr(layer, "group_expiry", 86400) or 86400)
    return max(1.0, min(expiry / 3, 3600.0))


class _StudioSocket(AsyncWebsocketConsumer):
    """Shared plumbing: the user's socket group, periodic re-join, closing on logout."""

    groups_joined: list[str]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.channel_layer_alias = events.live_layer_alias()
        self.groups_joined = []
        self._rejoin_task: asyncio.Task | None = None

    @property
    def user(self):
        return self.scope.get("user")

    def session_key(self) -> str | None:
        session = self.scope.get("session")
        return getattr(session, "session_key", None) if session is not None else None

    async def join(self, *groups: str) -> None:
        for group in groups:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)

    async def start_rejoining(self) -> None:
        self._rejoin_task = asyncio.ensure_future(self._rejoin_forever())

    async def _rejoin_forever(self) -> None:
        interval = rejoin_interval_seconds(self.channel_layer)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await database_sync_to_async(_still_active)(self.user.pk):
                    await self.close(code=CLOSE_UNAUTHORIZED)
                    return
                for group in self.groups_joined:
                    await self.channel_layer.group_add(group, self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis or the DB blipped: try again next round
                logger.warning("re-joining websocket groups failed", exc_info=True)

    async def disconnect(self, code: int) -> None:
        if self._rejoin_task is not None:
            self._rejoin_task.cancel()
        for group in self.groups_joined:
            try:
                await self.channel_layer.group_discard(group, self.channel_name)
            except Exception:  # the expiry cleans up after a Redis outage
                logger.debug("group_discard failed", exc_info=True)
        self.groups_joined = []

    # Messages from the emitter ---------------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Forward pushes without Channels' per-message close_old_connections: that hop through the one
        thread-sensitive sync thread would serialise every watcher of every job behind it."""
        if message.get("type") == "job.push":
            await self.job_push(message)
        else:
            await super().dispatch(message)

    async def job_push(self, message: dict[str, Any]) -> None:
        """A pre-encoded browser message (points, state or event)."""
        await self.send(text_data=message["text"])

    async def sockets_close(self, message: dict[str, Any]) -> None:
        """Logout (one session) or deactivation (every socket of the user)."""
        wanted = message.get("session_key")
        if wanted is None or wanted == self.session_key():
            await self.close(code=CLOSE_UNAUTHORIZED)

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":"), default=str))


class JobConsumer(_StudioSocket):
    """``ws/jobs/<uuid:job_id>/``: one job's live points, state and log lines, for its owner or staff."""

    async def connect(self) -> None:
        user = self.user
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        job_id = self.scope["url_route"]["kwargs"]["job_id"]
        job = await database_sync_to_async(_visible_job)(user, job_id)
        if job is None:  # someone else's job answers exactly like a missing one
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.job_id = job.id
        await self.join(events.job_group(job.id), events.user_sockets_group(user.pk))
        await self.accept()
        await self.send_json({"type": "state", "job": events.job_state(job)})
        await self.start_rejoining()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            message = json_nesting.loads(text_data or "")
        except ValueError:
            await self.send_json({"type": "error", "message": 'send JSON, e.g. {"type": "resume", "after_seq": 0}'})
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "resume":
            await self.resume(message.get("after_seq", 0))
        elif kind == "ping":
            await self.send_json({"type": "pong"})
        else:
            await self.send_json({"type": "error", "message": f"unknown message type {kind!r}"})

    async def resume(self, after_seq: Any) -> None:
        """Send the stored points after ``after_seq`` (the ones a reconnecting page missed), then the state."""
        if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
            await self.send_json({"type": "error", "message": "after_seq must be an integer >= 0"})
            return
        points, job = await database_sync_to_async(_points_after)(self.job_id, after_seq)
        if points is None:
            await self.send_json({"type": "resync", "reason": "too many points missed; reload the history"})
        else:
            last_seq = points[-1]["seq"] if points else after_seq
            for start in range(0, max(len(points), 1), RESUME_CHUNK):
                chunk = points[start:start + RESUME_CHUNK]
                final = start + RESUME_CHUNK >= len(points)
                # last_seq on the final chunk tells the page that everything up to it has been sent
                reply: dict[str, Any] = {"type": "points", "points": chunk, "resumed": True}
                if final:
                    reply["last_seq"] = last_seq
                await self.send_json(reply)
        if job is not None:
            await self.send_json({"type": "state", "job": events.job_state(job)})


class JobListConsumer(_StudioSocket):
    """``ws/jobs/``: state and progress of every job the user may see, for the live jobs list."""

    async def connect(self) -> None:
        user = self.user
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        jobs_group = events.STAFF_GROUP if user.is_staff else events.user_jobs_group(user.pk)
        await self.join(jobs_group, events.user_sockets_group(user.pk))
        await self.accept()
        for state in await database_sync_to_async(_active_job_states)(user):
            await self.send_json({"type": "state", "job": state})
        await self.start_rejoining()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data and '"ping"' in text_data:
            await self.send_json({"type": "pong"})


# Database helpers (run in a thread by database_sync_to_async) --------------------------------------------


def _visible_job(user, job_id) -> Job | None:
    return Job.objects.visible_to(user).filter(pk=job_id).first()


def _still_active(user_id) -> bool:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(pk=user_id, is_active=True).exists()


def _points_after(job_id, after_seq: int) -> tuple[list[dict[str, Any]] | None, Job | None]:
    """(points with seq > after_seq in seq order, or None if there are too many; the job's current row)."""
    rows = list(
        MetricPoint.objects.filter(job_id=job_id, seq__gt=after_seq)
        .order_by("seq")
        .values("seq", "step", "split", "values")[: RESUME_MAX_POINTS + 1]
    )
    job = Job.objects.filter(pk=job_id).first()
    if len(rows) > RESUME_MAX_POINTS:
        return None, job
    return [events.point_dict(row) for row in rows], job


def _active_job_states(user) -> list[dict[str, Any]]:
    jobs = Job.objects.visible_to(user).exclude(state__in=Job.TERMINAL)[:LIST_SNAPSHOT_MAX]
    return [events.job_state(job) for job in jobs]

"""Work queued in the database whose Celery message is gone (Redis lost it, or the enqueue after commit failed).

The broker is looked at directly: the task's queue (every priority list) and kombu's ``unacked`` hash
(messages a worker holds: reserved or running). A row missing from both in two scans in a row is sent
again; the second scan keeps the tiny window between a row's commit and its enqueue from causing a
duplicate (a duplicate would be harmless anyway: the claim drops it). One reconciler per kind of work
(training jobs, merges, GGUF exports, playground sessions), each given how to list its queued ids and how to
send one again.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery

if TYPE_CHECKING:
    from webapp.lib.leased_work import LeasedWork

logger = logging.getLogger(__name__)


def _task_target_id(raw: bytes | str, task_name: str) -> str | None:
    """The id (first argument) a raw kombu/redis message of ``task_name`` is about, or None for others."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash stores [message, exchange, routing_key]
            message = message[0]
        if (message.get("headers") or {}).get("task") != task_name:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def task_queue(app: Celery, task_name: str) -> str:
    route = (app.conf.task_routes or {}).get(task_name) or {}
    return route.get("queue") or app.conf.task_default_queue


def ids_in_broker(app: Celery, task_name: str) -> set[str]:
    """Ids with a ``task_name`` message waiting in its queue or held by a worker."""
    queue = task_queue(app, task_name)
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        client = channel.client
        raw: list[bytes] = []
        for key in {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}:
            raw.extend(client.lrange(key, 0, -1))
        raw.extend(client.hvals(channel.unacked_key))
    return {target for target in (_task_target_id(r, task_name) for r in raw) if target}


class Reconciler:
    """Re-sends the message of queued rows missing from the broker in two consecutive scans."""

    def __init__(self, app: Celery, task_name: str, queued_ids: Callable[[], set[str]],
                 resend: Callable[[str], object], what: str):
        self.app = app
        self.task_name = task_name
        self.queued_ids = queued_ids
        self.resend = resend
        self.what = what
        self._missing_last_scan: set[str] = set()

    def scan(self) -> list[str]:
        """One scan. Returns the ids sent again."""
        queued = self.queued_ids()
        if not queued:
            self._missing_last_scan = set()
            return []
        missing = queued - ids_in_broker(self.app, self.task_name)
        resend = sorted(missing & self._missing_last_scan)
        self._missing_last_scan = missing - set(resend)
        for target in resend:
            logger.warning("%s %s is queued but its message is not in the broker; sending it again", self.what, target)
            self.resend(target)
        return resend


def leased_work_reconciler(app: Celery, work: LeasedWork) -> Reconciler:
    """The reconciler of a kind of leased work: its queued rows (``work.queued_ids``), sent by ``work.enqueue``."""
    return Reconciler(app, work.task_name, work.queued_ids, work.enqueue, work.what)


def job_reconciler(app: Celery) -> Reconciler:
    from webapp.jobs.actions import JOBS

    return leased_work_reconciler(app, JOBS)


def merge_reconciler(app: Celery) -> Reconciler:
    from webapp.adapters.merges import MERGES

    return leased_work_reconciler(app, MERGES)


def gguf_export_reconciler(app: Celery) -> Reconciler:
    from webapp.adapters.gguf_exports import GGUF_EXPORTS

    return leased_work_reconciler(app, GGUF_EXPORTS)


def playground_reconciler(app: Celery) -> Reconciler:
    from webapp.playground.actions import PLAYGROUND_TASK, enqueue_session
    from webapp.playground.models import PlaygroundSession

    def queued_sessions() -> set[str]:
        rows = PlaygroundSession.objects.filter(state=PlaygroundSession.State.QUEUED).values_list("pk", flat=True)
        return {str(pk) for pk in rows}

    return Reconciler(app, PLAYGROUND_TASK, queued_sessions, enqueue_session, "playground session")

"""The merge timer every worker runs next to the job maintenance (no Celery beat needed).

- Reaper: a running merge whose lease expired belongs to a dead worker; it is queued again (or failed after
  JOB_MAX_ATTEMPTS attempts) by webapp.adapters.merges.reap_expired_merges, every third of a lease.
- Reconciler: a queued merge whose message is in neither the merge queue nor kombu's ``unacked`` hash in two
  scans in a row (Redis lost it, or the enqueue after commit failed) is sent again. A duplicate would be
  harmless anyway: the claim drops it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Any

from celery import Celery
from django.conf import settings

from webapp.lib.env import env_int

from .db import drop_connection

logger = logging.getLogger(__name__)


def _merge_id_of(raw: bytes | str, task_name: str) -> str | None:
    """The merge id a raw kombu/redis message is about, or None for other messages."""
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


def merge_ids_in_broker(app: Celery) -> set[str]:
    """Ids of the merges with a message waiting in their queue or held by a worker."""
    from webapp.adapters.merges import MERGE_TASK

    queue = ((app.conf.task_routes or {}).get(MERGE_TASK) or {}).get("queue") or app.conf.task_default_queue
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        client = channel.client
        raw: list[bytes] = []
        for key in {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}:
            raw.extend(client.lrange(key, 0, -1))
        raw.extend(client.hvals(channel.unacked_key))
    return {merge_id for merge_id in (_merge_id_of(r, MERGE_TASK) for r in raw) if merge_id}


class MergeReconciler:
    def __init__(self, app: Celery):
        self.app = app
        self._missing_last_scan: set[str] = set()

    def scan(self) -> list[str]:
        """One scan. Returns the ids of the merges sent again."""
        from webapp.adapters.merges import enqueue_merge
        from webapp.adapters.models import Merge

        queued = {str(pk) for pk in Merge.objects.filter(state=Merge.State.QUEUED).values_list("pk", flat=True)}
        if not queued:
            self._missing_last_scan = set()
            return []
        missing = queued - merge_ids_in_broker(self.app)
        resend = sorted(missing & self._missing_last_scan)
        self._missing_last_scan = missing - set(resend)
        for merge_id in resend:
            logger.warning("merge %s is queued but its message is not in the broker; sending it again", merge_id)
            enqueue_merge(merge_id)
        return resend


class MergeMaintenance:
    def __init__(self, app: Celery):
        self.reconciler = MergeReconciler(app)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="merge-maintenance", daemon=True)

    def start(self) -> MergeMaintenance:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _safely(self, what: str, fn) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - PostgreSQL or Redis restarting: try again on the next tick
            logger.warning("merge maintenance: %s failed; retrying later", what, exc_info=True)
            drop_connection()

    def _run(self) -> None:
        from webapp.adapters.merges import reap_expired_merges

        reap_every = max(1.0, min(15.0, settings.JOB_LEASE_SECONDS / 3))
        reconcile_every = float(getattr(settings, "JOB_RECONCILE_SECONDS", env_int("JOB_RECONCILE_SECONDS", 60)))
        next_reap = next_reconcile = time.monotonic()
        rescans_left = 1  # a second scan soon after start confirms what the first found missing
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_reap:
                    self._safely("reaping expired merge leases", reap_expired_merges)
                    next_reap = now + reap_every
                if now >= next_reconcile:
                    self._safely("reconciling merges with the broker", self.reconciler.scan)
                    next_reconcile = now + (2.0 if rescans_left else reconcile_every)
                    rescans_left = max(0, rescans_left - 1)
                self._stop.wait(max(0.05, min(next_reap, next_reconcile) - time.monotonic()))
        finally:
            drop_connection()


_maintenance: MergeMaintenance | None = None


def start_maintenance(app: Celery) -> None:
    global _maintenance
    if _maintenance is None:
        _maintenance = MergeMaintenance(app).start()
        logger.info("merge maintenance started")


def stop_maintenance() -> None:
    global _maintenance
    if _maintenance is not None:
        _maintenance.stop()
        _maintenance = None

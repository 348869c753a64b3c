"""Jobs queued in the database whose Celery message is gone (Redis lost it, or the enqueue after commit failed).

The broker is looked at directly: the training queue's Redis lists (every priority) and kombu's ``unacked``
hash (messages a worker holds: reserved or running). A job missing from both in two scans in a row is sent
again; the second scan keeps the tiny window between a job's commit and its enqueue from causing a
duplicate (a duplicate would be harmless anyway: the claim drops it).
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from celery import Celery

from webapp.jobs.actions import TRAIN_TASK, enqueue_training
from webapp.jobs.models import Job

logger = logging.getLogger(__name__)


def _job_id_of(raw: bytes | str) -> str | None:
    """The job id a raw kombu/redis message is about, or None for other messages."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # the unacked hash stores [message, exchange, routing_key]
            message = message[0]
        headers = message.get("headers") or {}
        if headers.get("task") != TRAIN_TASK:
            return None
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def train_queue(app: Celery) -> str:
    route = (app.conf.task_routes or {}).get(TRAIN_TASK) or {}
    return route.get("queue") or app.conf.task_default_queue


def job_ids_in_broker(app: Celery) -> set[str]:
    """Ids of the jobs with a training message waiting in the queue or held by a worker."""
    queue = train_queue(app)
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        client = channel.client
        raw: list[bytes] = []
        for key in {channel._q_for_pri(queue, pri) for pri in channel.priority_steps}:
            raw.extend(client.lrange(key, 0, -1))
        raw.extend(client.hvals(channel.unacked_key))
    return {job_id for job_id in map(_job_id_of, raw) if job_id}


class Reconciler:
    """Re-sends the training message of queued jobs missing from the broker in two consecutive scans."""

    def __init__(self, app: Celery):
        self.app = app
        self._missing_last_scan: set[str] = set()

    def scan(self) -> list[str]:
        """One scan. Returns the ids of the jobs sent again."""
        queued = {str(pk) for pk in Job.objects.filter(state=Job.State.QUEUED, cancel_requested=False)
                  .values_list("pk", flat=True)}
        if not queued:
            self._missing_last_scan = set()
            return []
        missing = queued - job_ids_in_broker(self.app)
        resend = sorted(missing & self._missing_last_scan)
        self._missing_last_scan = missing - set(resend)
        for job_id in resend:
            logger.warning("job %s is queued but its message is not in the broker; sending it again", job_id)
            enqueue_training(job_id)
        return resend

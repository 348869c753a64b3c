"""Keeps a lease alive from a background thread: a training job's (Heartbeat), a merge's or a GGUF export's
(LeaseHeartbeat)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings

from webapp.jobs.leases import Lease, renew_lease

from .db import CONNECTION_ERRORS, drop_connection

logger = logging.getLogger(__name__)


class Heartbeat:
    """Renews ``lease`` every JOB_HEARTBEAT_SECONDS. ``lost`` is set once the lease is gone for good (the
    job was reaped and given to another worker, or ended): the holder must then stop and record nothing."""

    def __init__(self, lease: Lease, interval: float | None = None):
        self.lease = lease
        self.interval = float(interval if interval is not None else settings.JOB_HEARTBEAT_SECONDS)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{lease.job_id}", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not renew_lease(self.lease):
                        logger.error("job %s: lease lost (reaped or ended); stopping", self.lease.job_id)
                        self.lost.set()
                        return
                except CONNECTION_ERRORS as exc:
                    # PostgreSQL restarting: keep training; renew as soon as it is back (the lease is longer
                    # than several heartbeats for this reason).
                    logger.warning("job %s: cannot renew the lease yet: %s", self.lease.job_id, exc)
                    drop_connection()
        finally:
            drop_connection()


class LeaseHeartbeat:
    """A context manager renewing a row's lease every JOB_HEARTBEAT_SECONDS through ``renew`` (False: the
    lease is gone). ``lost`` is set once it is gone: the holder must then stop and record nothing.
    Used for merges and GGUF exports; ``label`` names the row in the log ("merge <id>")."""

    def __init__(self, renew: Callable[[], bool], label: str):
        self.renew = renew
        self.label = label
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{label}", daemon=True)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(float(settings.JOB_HEARTBEAT_SECONDS)):
                try:
                    if not self.renew():
                        logger.error("%s: lease lost (reaped, ended or deleted)", self.label)
                        self.lost.set()
                        return
                except CONNECTION_ERRORS as exc:  # PostgreSQL restarting: renew once it is back
                    logger.warning("%s: cannot renew the lease yet: %s", self.label, exc)
                    drop_connection()
        finally:
            drop_connection()

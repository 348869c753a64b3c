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


class LeaseHeartbeat:
    """Renews a row's lease every JOB_HEARTBEAT_SECONDS (or ``interval``) from a thread through ``renew`` (False:
    the lease is gone). ``lost`` is set once it is gone for good (the row was reaped and given to another worker,
    ended or deleted): the holder must then stop and record nothing. ``label`` names the row in the log
    ("merge <id>"). Use it as a context manager, or start() and stop() it."""

    def __init__(self, renew: Callable[[], bool], label: str, interval: float | None = None):
        self.renew = renew
        self.label = label
        self.interval = float(interval if interval is not None else settings.JOB_HEARTBEAT_SECONDS)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{label}", daemon=True)

    def start(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> LeaseHeartbeat:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not self.renew():
                        logger.error("%s: lease lost (reaped, ended or deleted); stopping", self.label)
                        self.lost.set()
                        return
                except CONNECTION_ERRORS as exc:
                    # PostgreSQL restarting: keep working; renew as soon as it is back (the lease is longer
                    # than several heartbeats for this reason).
                    logger.warning("%s: cannot renew the lease yet: %s", self.label, exc)
                    drop_connection()
        finally:
            drop_connection()


class Heartbeat(LeaseHeartbeat):
    """A training job's heartbeat (``lease`` from webapp.jobs.leases.claim_job)."""

    def __init__(self, lease: Lease, interval: float | None = None):
        super().__init__(lambda: renew_lease(lease), f"job {lease.row_id}", interval)
        self.lease = lease

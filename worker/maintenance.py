"""The maintenance timer every worker runs (no Celery beat needed): reapers and reconcilers for jobs, merges, GGUF
exports and playground sessions.

Started on ``worker_ready`` in the worker's main process, in a daemon thread: reaps expired leases every
third of JOB_LEASE_SECONDS (so a dead worker's job is queued again within about 1⅓ lease lengths), and
reconciles the broker with the database at start and every JOB_RECONCILE_SECONDS. Any number of workers
may run it at once.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from django.conf import settings

from .db import CONNECTION_ERRORS, drop_connection

logger = logging.getLogger(__name__)

RESCAN_AFTER_START_SECONDS = 2.0


def reap_interval() -> float:
    return max(1.0, min(15.0, settings.JOB_LEASE_SECONDS / 3))


def reconcile_interval() -> float:
    return float(settings.JOB_RECONCILE_SECONDS)


class Maintenance:
    """One daemon thread: every reaper every reap_interval(), every reconciler every reconcile_interval()."""

    def __init__(self, app: Celery):
        from webapp.adapters.gguf_exports import reap_expired_gguf_exports
        from webapp.adapters.merges import reap_expired_merges
        from webapp.jobs.reaper import reap_expired_leases
        from webapp.playground.actions import reap_stalled_sessions

        from .reconciler import gguf_export_reconciler, job_reconciler, merge_reconciler, playground_reconciler

        self.reapers = [("expired job leases", reap_expired_leases), ("expired merge leases", reap_expired_merges),
                        ("expired GGUF export leases", reap_expired_gguf_exports),
                        ("stalled playground sessions", reap_stalled_sessions)]
        self.reconcilers = [job_reconciler(app), merge_reconciler(app), gguf_export_reconciler(app),
                            playground_reconciler(app)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-maintenance", daemon=True)

    def start(self) -> Maintenance:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _safely(self, what: str, fn) -> None:
        try:
            fn()
        except CONNECTION_ERRORS as exc:  # PostgreSQL restarting: try again next tick
            logger.warning("job maintenance: %s failed (%s); retrying later", what, exc)
            drop_connection()
        except Exception:  # noqa: BLE001 - Redis restarting, or a bug: log it and keep the timer alive
            logger.exception("job maintenance: %s failed; retrying later", what)
            drop_connection()

    def _run(self) -> None:
        now = time.monotonic()
        next_reap, next_reconcile = now, now
        rescans_left = 1  # a second scan soon after start confirms what the first found missing
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_reap:
                    for what, reap in self.reapers:
                        self._safely(f"reaping {what}", reap)
                    next_reap = now + reap_interval()
                if now >= next_reconcile:
                    for reconciler in self.reconcilers:
                        self._safely(f"reconciling {reconciler.what}s with the broker", reconciler.scan)
                    delay = RESCAN_AFTER_START_SECONDS if rescans_left else reconcile_interval()
                    rescans_left = max(0, rescans_left - 1)
                    next_reconcile = now + delay
                self._stop.wait(max(0.05, min(next_reap, next_reconcile) - time.monotonic()))
        finally:
            drop_connection()


_maintenance: Maintenance | None = None


def start_maintenance(app: Celery) -> None:
    global _maintenance
    if _maintenance is None:
        _maintenance = Maintenance(app).start()
        logger.info("job maintenance started: reaping every %.0fs, reconciling every %.0fs",
                    reap_interval(), reconcile_interval())


def stop_maintenance() -> None:
    global _maintenance
    if _maintenance is not None:
        _maintenance.stop()
        _maintenance = None

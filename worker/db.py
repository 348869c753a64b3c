"""Database writes that outlive a PostgreSQL restart: retry on connection errors with a fresh connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")
CONNECTION_ERRORS = (OperationalError, InterfaceError)


def drop_connection() -> None:
    """Forget this thread's (probably broken) connection; the next query opens a new one."""
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail too; it is gone either way
        pass


def retry_db(fn: Callable[[], T], what: str, deadline_seconds: float = 300.0, first_delay: float = 0.5) -> T:
    """Call ``fn`` until it succeeds or ``deadline_seconds`` pass, retrying only on connection errors.

    Raises:
        The last connection error once the deadline has passed; any other error at once.
    """
    deadline = time.monotonic() + deadline_seconds
    delay = first_delay
    while True:
        try:
            return fn()
        except CONNECTION_ERRORS as exc:
            drop_connection()
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

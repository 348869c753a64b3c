"""Encoded API answers kept by one web process, each sent again only while the rows it was made from are unchanged.

A hot read (the jobs list, a job's drawn metrics) mostly answers the same bytes again, and making them through
the ORM cost several times more CPU than the request's other work (docs/BENCHMARKS.md, api-load). So a web
process keeps an answer together with the *versions* of the rows it was made from, and on every request reads
those versions again with one small query: the kept answer is sent only when they are all the same.

A row's version is PostgreSQL's ``xmin``, the id of the transaction that wrote the row version: every write to
a row (``save()``, a queryset ``update()``, raw SQL) makes a new row version with a new ``xmin``, and a deleted
or inserted row changes which rows a query returns. So whatever wrote, a changed answer is rebuilt; the check
needs no cooperation from the writers. Read the versions *before* making the answer: a write committed in
between then leaves an answer newer than its versions, which the next request rebuilds (never stale, at worst
rebuilt once more than needed). Inside a transaction block nothing is kept or sent: a transaction that writes
a row twice leaves the same ``xmin`` on both versions, and an answer made between the two would match the
second. Outside one (web requests run in autocommit) only committed, final row versions are ever read. Other
databases have no ``xmin``: there nothing is kept either.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

from django.db import connection


def versions_supported() -> bool:
    """Whether answers can be checked by row versions here: PostgreSQL (``xmin``), outside a transaction block."""
    return connection.vendor == "postgresql" and not connection.in_atomic_block


def read_versions(sql: str, params: Sequence[Any]) -> tuple[tuple[Any, ...], ...]:
    """The rows of ``sql`` (which selects ``xmin::text`` of the rows an answer is made from) as a tuple."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return tuple(cursor.fetchall())


class KeptAnswers:
    """Encoded answers by key, each with the row versions it was made from; the least recently used go first."""

    def __init__(self, entries: int):
        self.entries = entries
        self._answers: OrderedDict[Hashable, tuple[tuple, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, versions: tuple) -> bytes | None:
        """The answer kept for ``key`` if it was made from exactly these row versions."""
        with self._lock:
            kept = self._answers.get(key)
            if kept is None or kept[0] != versions:
                return None
            self._answers.move_to_end(key)
            return kept[1]

    def put(self, key: Hashable, versions: tuple, answer: bytes) -> None:
        """Keep ``answer`` for ``key``, made from rows read at ``versions`` (read before the answer was made)."""
        with self._lock:
            self._answers[key] = (versions, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self.entries:
                self._answers.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()

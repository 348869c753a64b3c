"""Reading a long metric history thinned for drawing, without loading every point's values.

``GET /api/jobs/{id}/metrics?max_points=N`` used to read every point's full ``values`` (15 keys of JSON) into
Python before thinning: about 2 s for a 100,000-step job. Here the database sends only what the thinning
looks at (seq, step, split and the watched metrics as plain floats), :func:`~webapp.jobs.downsample.
downsample_by_split` chooses the same points as before, and only those are read in full. The answer of a
given history is kept in a small per-process cache keyed by the job's ``last_seq`` (which the recorder
raises in the same transaction as it stores points), so many pages opening the same job share one read. The
cache holds the thinned points already JSON-encoded (:class:`DrawnHistory`): encoding a thousand points of
fifteen values each was about half of a cached request's CPU, and every request for that history sends the
same bytes. One request per process reads a given history; the others asking for it meanwhile wait for its
answer (:func:`drawn_history`): fifty clients opening a job at once used to make fifty full reads of 100,000
points, competing for the same two cores, and every one of them took seconds.

The whole answer of ``max_points`` (the drawn points with the job's state) is also kept, in
:data:`drawn_answers`, with the version of the job's row (:mod:`webapp.lib.kept_answers`): the row changes
whenever the job's state or its ``last_seq`` does, so while it has not, the answer is the same bytes, and a
request costs one small query instead of reading the job through the ORM.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.db.models import QuerySet
from django.db.models.expressions import RawSQL

from webapp.lib.kept_answers import KeptAnswers, read_versions, versions_supported

from .downsample import EVAL_KEYS, TRAIN_KEYS, downsample_by_split
from .models import Job

WATCHED_KEYS = tuple(dict.fromkeys(TRAIN_KEYS + EVAL_KEYS))
FIELDS = ("seq", "step", "split", "values")
CACHE_ENTRIES = 32



@dataclass(frozen=True)
class DrawnHistory:
    """A history thinned for drawing, its points encoded as the API sends them."""

    points_json: bytes  # the drawn points as a JSON array, encoded as JsonResponse would (DjangoJSONEncoder)
    drawn: int  # how many points are drawn
    total: int  # how many points they were thinned from
    highest_seq: int | None  # the highest seq read (None when there are none)


drawn_answers = KeptAnswers(CACHE_ENTRIES)
"""Whole ``max_points`` answers, by (job id, user, the request's parameters), valid for a version of the job row."""

_cache: OrderedDict[tuple, DrawnHistory] = OrderedDict()
_cache_lock = threading.Lock()
_reading: dict[tuple, threading.Lock] = {}  # cache key -> held by the one request reading that history


def job_version(user: Any, job_id: Any) -> tuple | None:
    """The version of job ``job_id`` if ``user`` may see it (staff see every job, as ``Job.objects.visible_to``
    says); ``()`` when not; None when answers cannot be checked by row versions here."""
    if not versions_supported():
        return None
    sql = f"SELECT xmin::text FROM {Job._meta.db_table} WHERE id = %s"
    if user.is_staff:
        return read_versions(sql, [job_id])
    return read_versions(sql + " AND owner_id = %s", [job_id, user.pk])


def _number_sql(key: str) -> RawSQL:
    # A JSON number as float8, anything else (string, bool, null, missing) as NULL: what downsample() skips.
    return RawSQL("""CASE WHEN jsonb_typeof("values" -> %s) = 'number' THEN ("values" ->> %s)::float8 END""",
                  (key, key))


def _light_points(rows: QuerySet) -> tuple[list[dict[str, Any]], bool]:
    """Every point of ``rows`` with only the watched metrics in ``values`` (PostgreSQL), or in full
    (other databases); and whether they are the light kind."""
    if connections[rows.db].vendor != "postgresql":
        return list(rows.values(*FIELDS)), False
    annotated = rows.annotate(**{f"m_{key}": _number_sql(key) for key in WATCHED_KEYS})
    names = [f"m_{key}" for key in WATCHED_KEYS]
    return [{"seq": seq, "step": step, "split": split, "values": dict(zip(WATCHED_KEYS, metrics, strict=True))}
            for seq, step, split, *metrics in annotated.values_list("seq", "step", "split", *names)], True


def downsampled_points(rows: QuerySet, max_points: int) -> tuple[list[dict[str, Any]], int, int | None]:
    """The points of ``rows`` (ordered by seq) thinned to ``max_points``, the number of points they thin,
    and the highest seq read (None when there are none).

    Args:
        rows: the job's MetricPoint queryset with its filters, ordered by seq.
        max_points: the drawing budget.
    """
    light, is_light = _light_points(rows)
    drawn = downsample_by_split(light, max_points)
    if is_light and drawn:  # read the chosen points in full (they are committed: they were just read)
        full = {p["seq"]: p for p in rows.filter(seq__in=[p["seq"] for p in drawn]).values(*FIELDS)}
        drawn = [full[p["seq"]] for p in drawn]
    return drawn, len(light), light[-1]["seq"] if light else None


def drawn_history(rows: QuerySet, max_points: int, cache_key: tuple | None = None) -> DrawnHistory:
    """:func:`downsampled_points`, its points JSON-encoded, from the per-process cache when ``cache_key`` was seen.

    Args:
        rows: the job's MetricPoint queryset with its filters, ordered by seq.
        max_points: the drawing budget.
        cache_key: identifies this exact history (job id, its last_seq, the filters, max_points); None: no cache.
    """
    if cache_key is None:
        return _read_history(rows, max_points)
    hit = _cached(cache_key)
    if hit is not None:
        return hit
    with _cache_lock:
        reading = _reading.setdefault(cache_key, threading.Lock())
    with reading:  # the first request reads; the others wait here, then find its answer in the cache
        hit = _cached(cache_key)
        if hit is not None:
            return hit
        try:
            history = _read_history(rows, max_points)
            with _cache_lock:
                _cache[cache_key] = history
                while len(_cache) > CACHE_ENTRIES:
                    _cache.popitem(last=False)
        finally:
            with _cache_lock:
                _reading.pop(cache_key, None)
    return history


def _cached(cache_key: tuple) -> DrawnHistory | None:
    with _cache_lock:
        hit = _cache.get(cache_key)
        if hit is not None:
            _cache.move_to_end(cache_key)
        return hit


def _read_history(rows: QuerySet, max_points: int) -> DrawnHistory:
    drawn, total, highest_seq = downsampled_points(rows, max_points)
    return DrawnHistory(json.dumps(drawn, cls=DjangoJSONEncoder).encode(), len(drawn), total, highest_seq)

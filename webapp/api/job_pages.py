"""The jobs list's pages, kept encoded by each web process while none of their rows changed
(:mod:`webapp.lib.kept_answers`).

Building a page of ``GET /v1/fine_tuning/jobs`` through the ORM (twenty jobs with their base models and
adapters, made into objects, serialized, encoded) took about 4 ms of CPU, most of a request's cost under many
clients, and a page rarely changes between two reads. A page's versions are the ids of its rows in order, one
past the page (``has_more``), with the ``xmin`` of each job, its base model, its adapter and the adapter's base
model: everything :func:`~webapp.api.serializers.fine_tuning.job_json` reads. Pages showing a running job are
not kept: its ``estimated_finish`` moves with the clock, and its row changes with every training step anyway.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse

from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel
from webapp.jobs.models import Job
from webapp.lib.kept_answers import KeptAnswers, read_versions, versions_supported

PAGES_KEPT = 128
"""Pages kept per process: at most limit=100 jobs each, about 100 kB."""

kept_pages = KeptAnswers(PAGES_KEPT)


def _versions_sql(owner_scoped: bool, after_anchor: bool) -> str:
    """``limit`` + 1 rows of the list, in its order (``-created_at, -id``, as :func:`webapp.api.pagination.ordered`
    and ``after_anchor`` make it), with their state and versions. (Subqueries rather than joins: PostgreSQL
    spends about a third less on this form, mostly in planning, which it does on every request.)"""
    job, base, adapter = Job._meta.db_table, BaseModel._meta.db_table, Adapter._meta.db_table
    where = ["j.owner_id = %s"] if owner_scoped else []
    if after_anchor:
        where.append("(j.created_at, j.id) < (%s, %s)")
    return (f"SELECT j.id, j.state, j.xmin::text, (SELECT b.xmin::text FROM {base} b WHERE b.id = j.base_model_id), "
            f"(SELECT a.xmin::text || ' ' || ab.xmin::text FROM {adapter} a JOIN {base} ab ON ab.id = a.base_model_id "
            f"WHERE a.job_id = j.id) FROM {job} j {'WHERE ' + ' AND '.join(where) if where else ''} "
            f"ORDER BY j.created_at DESC, j.id DESC LIMIT %s")


def jobs_page_response(user: Any, anchor: Job | None, limit: int, build: Callable[[], dict]) -> HttpResponse:
    """What ``JsonResponse(build())`` sends for ``user``'s page of jobs after ``anchor`` (None: the newest),
    ``limit`` long: the kept page when none of its rows changed.

    Args:
        user: an authenticated user (staff see every job, as ``Job.objects.visible_to`` says).
        anchor: the job the page starts after (already found visible to ``user``), or None.
        limit: jobs on the page.
        build: makes the page's list object from the database (when no page is kept or its rows changed).
    """
    if not versions_supported():
        return _json(_encode(build()))
    params = ([] if user.is_staff else [user.pk]) + ([anchor.created_at, anchor.pk] if anchor is not None else [])
    versions = read_versions(_versions_sql(not user.is_staff, anchor is not None), [*params, limit + 1])
    key = (user.pk, user.is_staff, anchor.pk if anchor is not None else None, limit)
    kept = kept_pages.get(key, versions)
    if kept is not None:
        return _json(kept)
    body = _encode(build())
    if all(state != Job.State.RUNNING for _id, state, *_ in versions):
        kept_pages.put(key, versions, body)
    return _json(body)


def _encode(page: dict) -> bytes:
    return json.dumps(page, cls=DjangoJSONEncoder).encode()  # as JsonResponse encodes it


def _json(body: bytes) -> HttpResponse:
    return HttpResponse(body, content_type="application/json")

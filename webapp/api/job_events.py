"""A job's events as OpenAI lists them: human-readable JobEvents and per-step metrics, newest first, one cursor.

Each step appears once, as OpenAI has it: a ``metrics`` event per MetricPoint. The log lines the worker writes
for some steps (``JobEvent.STEP_LINE_PREFIX``, for the job page's log) would repeat them, so they are left out.

Both tables are ordered by (created_at, kind, pk) descending, kind ranking metrics below messages written at
the same instant; ``after=<event id>`` resumes strictly below that event's position in this order.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import Q, QuerySet

from webapp.jobs.models import Job, JobEvent, MetricPoint

from .errors import ApiError
from .ids import MESSAGE_EVENT, METRICS_EVENT, parse_event_id
from .serializers.fine_tuning import message_event_json, metrics_event_json

KIND_RANK = {METRICS_EVENT: 0, MESSAGE_EVENT: 1}
Position = tuple[datetime, int, int]  # (created_at, kind rank, pk)


def _below(queryset: QuerySet, kind: str, anchor: Position) -> QuerySet:
    """Rows of one kind strictly below ``anchor`` in the merged order."""
    moment, anchor_rank, anchor_pk = anchor
    rank = KIND_RANK[kind]
    if rank < anchor_rank:
        return queryset.filter(created_at__lte=moment)
    if rank > anchor_rank:
        return queryset.filter(created_at__lt=moment)
    return queryset.filter(Q(created_at__lt=moment) | Q(created_at=moment, pk__lt=anchor_pk))


def _anchor(job: Job, after: str) -> Position:
    parsed = parse_event_id(after)
    model = {MESSAGE_EVENT: JobEvent, METRICS_EVENT: MetricPoint}.get(parsed[0]) if parsed else None
    row = model.objects.filter(job=job, pk=parsed[1]).only("created_at").first() if model else None
    if row is None:
        raise ApiError(f"after must be the id of one of this job's events (got {after!r}).", param="after")
    return row.created_at, KIND_RANK[parsed[0]], row.pk


def events_page(job: Job, after: str | None, limit: int) -> tuple[list[dict], bool]:
    """(events as OpenAI objects, has_more) for one page, newest first."""
    sources = {
        MESSAGE_EVENT: JobEvent.objects.filter(job=job).exclude(message__startswith=JobEvent.STEP_LINE_PREFIX),
        METRICS_EVENT: MetricPoint.objects.filter(job=job),
    }
    if after:
        anchor = _anchor(job, after)
        sources = {kind: _below(queryset, kind, anchor) for kind, queryset in sources.items()}
    candidates = []
    for kind, queryset in sources.items():
        for row in queryset.order_by("-created_at", "-pk")[: limit + 1]:
            candidates.append(((row.created_at, KIND_RANK[kind], row.pk), kind, row))
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)
    page = candidates[:limit]
    events = [
        message_event_json(row) if kind == MESSAGE_EVENT else metrics_event_json(row, job.total_steps)
        for _, kind, row in page
    ]
    return events, len(candidates) > limit

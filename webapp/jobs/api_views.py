"""Native job API (``/api/jobs/...``): metric history for charts, raw downloads, state, log, memory estimate.

``GET /api/jobs/{id}/metrics`` pages through the stored points in ``seq`` order (``after_seq`` or
``after_step``, ``limit``) or, with ``max_points``, returns the whole remaining history downsampled for
drawing (bucket minima and maxima kept). ``last_seq`` in every answer is the highest seq the answer covers:
a page that has it has every point up to it, so it can ask for ``after_seq=last_seq`` next.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET, require_http_methods

from webapp.accounts.middleware import api_error
from webapp.adapters.checkpoints import adapter_from_checkpoint
from webapp.adapters.serializers import adapter_json
from webapp.adapters.validation import AdapterRejected
from webapp.basemodels.models import BaseModel
from webapp.lib.owned import get_owned_or_404

from . import events
from .actions import JobRejected, delete_job
from .estimates import EstimateError, estimate_for
from .metrics_query import DrawnHistory, drawn_answers, drawn_history, job_version
from .models import Job, MetricPoint

DEFAULT_LIMIT = 5_000
MAX_LIMIT = 20_000
MAX_DRAW_POINTS = 20_000
DOWNLOAD_CHUNK = 2_000
FIRST_COLUMNS = ["seq", "step", "split"]


class BadParameterError(Exception):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def json_api(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer 404 and bad parameters in the API's error shape (not Django's HTML pages)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except Http404:
            return api_error("No such job (or it is not yours).", 404, code="not_found")
        except BadParameterError as exc:
            return api_error(str(exc), 400, code="invalid_parameter", param=exc.param)

    return wrapper


def int_param(request: HttpRequest, name: str, default: int | None = None, low: int = 0,
              high: int | None = None) -> int | None:
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameterError(f"{name} must be an integer (got {raw!r})", name) from None
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise BadParameterError(f"{name} must be an integer {bound} (got {value})", name)
    return value


def _job_for(request: HttpRequest, job_id) -> Job:
    return get_owned_or_404(Job.objects, request.user, pk=job_id)


# ---------------------------------------------------------------------------------------------------------
# Metrics history


@require_GET
@json_api
def job_metrics(request: HttpRequest, job_id) -> JsonResponse:
    """Stored points after a cursor: a page of them, or (``max_points``) all of them thinned for drawing."""
    version = job_version(request.user, job_id)  # read before the answer is made (webapp/lib/kept_answers.py)
    if version == ():
        raise Http404("Not found")
    after_seq = int_param(request, "after_seq")
    after_step = int_param(request, "after_step")
    if after_seq is not None and after_step is not None:
        raise BadParameterError("give after_seq or after_step, not both", "after_step")
    max_points = int_param(request, "max_points", low=10, high=MAX_DRAW_POINTS)
    limit = int_param(request, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    split = request.GET.get("split") or None
    if split not in (None, "train", "eval"):
        raise BadParameterError(f"split must be train or eval (got {split!r})", "split")
    answer_key = (job_id, request.user.pk, request.user.is_staff, after_seq, after_step, split, max_points)
    kept = drawn_answers.get(answer_key, version) if max_points is not None and version is not None else None
    if kept is not None:
        return HttpResponse(kept, content_type="application/json")

    job = _job_for(request, job_id)
    rows = MetricPoint.objects.filter(job=job).order_by("seq")
    if after_seq is not None:
        rows = rows.filter(seq__gt=after_seq)
    if after_step is not None:
        rows = rows.filter(step__gt=after_step)
    if split:
        rows = rows.filter(split=split)
    fields = ("seq", "step", "split", "values")
    if max_points is not None:
        # Only the metrics the thinning looks at are read for every point, and the thinned points come
        # JSON-encoded from a per-process cache keyed by the job's last_seq (see metrics_query).
        cache_key = (job.pk, job.last_seq, after_seq, after_step, split, max_points)
        history = drawn_history(rows, max_points, cache_key)
        has_more = False
    else:
        points = list(rows.values(*fields)[: limit + 1])
        has_more = len(points) > limit
        points = points[:limit]
        history = DrawnHistory(json.dumps(points, cls=DjangoJSONEncoder).encode(), len(points), len(points),
                               points[-1]["seq"] if points else None)
    # The highest seq this answer covers (computed from the rows read, never from a second query that
    # could see newer commits): every point up to it is either here or was thinned out on purpose.
    last_seq = history.highest_seq if history.highest_seq is not None else (after_seq or 0)
    response = _json_with_encoded(
        {"object": "list", "job_id": str(job.id)},
        "points", history.points_json,
        {"last_seq": last_seq, "has_more": has_more, "downsampled": history.drawn < history.total,
         "total_points": history.total, "state": events.job_state(job)},
    )
    if max_points is not None and version is not None:
        drawn_answers.put(answer_key, version, response.content)
    return response


def _json_with_encoded(before: dict[str, Any], key: str, encoded: bytes, after: dict[str, Any]) -> HttpResponse:
    """What ``JsonResponse({**before, key: value, **after})`` sends, byte for byte, with ``value`` given already
    encoded (``before`` and ``after`` not empty)."""
    head = json.dumps(before, cls=DjangoJSONEncoder)[:-1]  # '{"a": 1' (no closing brace)
    tail = json.dumps(after, cls=DjangoJSONEncoder)[1:]  # '"b": 2}' (no opening brace)
    body = b"".join([head.encode(), b", ", json.dumps(key).encode(), b": ", encoded, b", ", tail.encode()])
    return HttpResponse(body, content_type="application/json")


def _value_columns(job: Job) -> list[str]:
    """Every key found in the job's point values, known metrics first."""
    rows = MetricPoint.objects.filter(job=job)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT DISTINCT jsonb_object_keys(\"values\") FROM {MetricPoint._meta.db_table} WHERE job_id = %s",
                [job.pk],
            )
            keys = {row[0] for row in cursor.fetchall()}
    else:
        keys = set()
        for values in rows.values_list("values", flat=True).iterator(chunk_size=DOWNLOAD_CHUNK):
            keys.update(values)
    preferred = ["epoch", "loss", "eval_loss", "perplexity", "learning_rate", "grad_norm", "tokens_seen",
                 "tokens_per_second", "elapsed_seconds", "eta_seconds", "memory_allocated_bytes",
                 "memory_peak_bytes", "total_steps"]
    keys -= set(FIRST_COLUMNS)
    return [k for k in preferred if k in keys] + sorted(keys - set(preferred))


def _point_rows(job: Job) -> Iterator[dict[str, Any]]:
    rows = MetricPoint.objects.filter(job=job).order_by("seq").values("seq", "step", "split", "values")
    yield from rows.iterator(chunk_size=DOWNLOAD_CHUNK)


def _csv_lines(job: Job) -> Iterator[str]:
    columns = _value_columns(job)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIRST_COLUMNS + columns)
    for row in _point_rows(job):
        values = row["values"]
        writer.writerow([row["seq"], row["step"], row["split"]] + [values.get(c, "") for c in columns])
        if buffer.tell() > 64 * 1024:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _jsonl_lines(job: Job) -> Iterator[str]:
    for row in _point_rows(job):
        yield json.dumps({"seq": row["seq"], "step": row["step"], "split": row["split"], **row["values"]},
                         default=str) + "\n"


def _download(job: Job, lines: Iterator[str], extension: str, content_type: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type=content_type)
    name = job.suffix or str(job.id)
    response["Content-Disposition"] = f'attachment; filename="{name}-metrics.{extension}"'
    return response


@require_GET
@json_api
def job_metrics_csv(request: HttpRequest, job_id) -> StreamingHttpResponse:
    """Every stored point (raw, not downsampled) as CSV: seq, step, split, then one column per metric."""
    job = _job_for(request, job_id)
    return _download(job, _csv_lines(job), "csv", "text/csv; charset=utf-8")


@require_GET
@json_api
def job_metrics_jsonl(request: HttpRequest, job_id) -> StreamingHttpResponse:
    """Every stored point (raw) as JSON lines, in seq order."""
    job = _job_for(request, job_id)
    return _download(job, _jsonl_lines(job), "jsonl", "application/x-ndjson")


# ---------------------------------------------------------------------------------------------------------
# State, log tail, memory estimate


@require_http_methods(["GET", "DELETE"])
@json_api
def job_state(request: HttpRequest, job_id) -> JsonResponse:
    """GET: the job's live state (what the websocket sends on connect), for scripts that poll. DELETE: delete
    the ended job (:func:`webapp.jobs.actions.delete_job`)."""
    job = _job_for(request, job_id)
    if request.method == "DELETE":
        try:
            delete_job(job)
        except JobRejected as exc:
            return api_error(str(exc), 409, code="job_not_deletable", param=exc.param)
        return JsonResponse({"id": str(job.id), "object": "fine_tuning.job", "deleted": True})
    return JsonResponse(events.job_state(job))


@require_GET
@json_api
def job_log(request: HttpRequest, job_id) -> JsonResponse:
    """The newest JobEvents (``after_id`` for the ones after a known event), oldest first."""
    job = _job_for(request, job_id)
    after_id = int_param(request, "after_id")
    limit = int_param(request, "limit", 100, low=1, high=1000)
    rows = job.events.order_by("-id")
    if after_id is not None:
        rows = rows.filter(id__gt=after_id)
    items = [events.event_dict(e) for e in reversed(list(rows[:limit]))]
    return JsonResponse({"object": "list", "data": items})


@require_GET
@json_api
def memory_estimate(request: HttpRequest) -> JsonResponse:
    """Predicted peak memory (full fine-tune, LoRA, QLoRA) for a base model and the form's settings."""
    base_model = get_owned_or_404(BaseModel.objects, request.user, pk=request.GET.get("base_model"))
    try:
        estimate = estimate_for(base_model, request.GET)
    except EstimateError as exc:
        raise BadParameterError(str(exc), exc.param) from None
    return JsonResponse(estimate)


@require_http_methods(["POST"])
@json_api
def job_checkpoint_adapter(request: HttpRequest, job_id, step: int) -> JsonResponse:
    """Make an adapter of the job's checkpoint at ``step`` (idempotent; ``webapp.adapters.checkpoints``)."""
    job = _job_for(request, job_id)
    try:
        adapter = adapter_from_checkpoint(job, step)
    except AdapterRejected as exc:  # 404 no such checkpoint, 409 pruned, 507 disk full
        return api_error(str(exc), exc.status, code=exc.code, param="step")
    return JsonResponse(adapter_json(adapter), status=201)

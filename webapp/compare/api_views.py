"""Native API for compare and sweeps (``/api/compare``, ``/api/sweeps``), in the API's error shape.

    GET  /api/compare?jobs=<id>,<id>      compare rows + differing config keys
    GET  /api/compare.csv?jobs=<id>,<id>  the same rows as CSV
    GET  /api/sweeps                      the caller's sweeps
    POST /api/sweeps                      launch a rank sweep (JSON body, see :func:`sweeps`)
    GET  /api/sweeps/<id>[?tolerance=x]   a sweep with its jobs and recommended rank
"""

from __future__ import annotations

import uuid
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from webapp.api.errors import ApiError, api_endpoint, not_found, parse_json_body
from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.jobs.models import Sweep
from webapp.lib.owned import get_owned_or_404

from .actions import DEFAULT_RANKS, create_sweep
from .selection import SelectionError, jobs_for
from .summary import compare_rows, config_table, rows_csv
from .sweeps import parse_tolerance, sweep_summary

FILE_PREFIX = "file-"
SWEEP_FIELDS = {"dataset", "training_file", "validation_dataset", "validation_file", "base_model", "model",
                "settings", "ranks", "alpha_rule", "fixed_alpha", "tolerance", "name"}


def _compared_jobs(request: HttpRequest) -> list:
    try:
        jobs = jobs_for(request.user, request.GET.get("jobs", ""))
    except SelectionError as exc:
        raise ApiError(str(exc), param="jobs") from None
    except Http404:
        raise ApiError("No such job (or it is not yours).", status=404, code="not_found", param="jobs") from None
    if not jobs:
        raise ApiError("jobs is required: ?jobs=<job id>,<job id>", param="jobs")
    return jobs


@api_endpoint("GET")
def compare(request: HttpRequest) -> JsonResponse:
    jobs = _compared_jobs(request)
    differences = [row for row in config_table(jobs) if row["differs"]]
    return JsonResponse({"object": "compare", "jobs": compare_rows(jobs), "config_differences": differences})


@api_endpoint("GET")
def compare_csv(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(rows_csv(compare_rows(_compared_jobs(request))), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="compare.csv"'
    return response


def _dataset(request: HttpRequest, identifier: Any, param: str) -> Dataset:
    try:
        dataset_id = uuid.UUID(str(identifier).removeprefix(FILE_PREFIX))
    except ValueError:
        raise not_found("file", str(identifier), param=param) from None
    dataset = Dataset.objects.visible_to(request.user).filter(pk=dataset_id).first()
    if dataset is None:
        raise not_found("file", str(identifier), param=param)
    return dataset


def _base_model(request: HttpRequest, identifier: Any) -> BaseModel:
    visible = BaseModel.objects.visible_to(request.user)
    try:
        found = visible.filter(pk=uuid.UUID(str(identifier))).first()
    except ValueError:
        found = visible.filter(name=str(identifier)).first()
    if found is None:
        raise ApiError(f"Base model {identifier!r} does not exist or is not available to you.", status=404,
                       code="model_not_found", param="base_model")
    return found


def _create(request: HttpRequest) -> JsonResponse:
    body = parse_json_body(request)
    unknown = sorted(set(body) - SWEEP_FIELDS)
    if unknown:
        raise ApiError(f"Unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(SWEEP_FIELDS))}.",
                       param=unknown[0])
    dataset_ref = body.get("dataset") or body.get("training_file")
    model_ref = body.get("base_model") or body.get("model")
    if not dataset_ref or not model_ref:
        raise ApiError("dataset (a file id) and base_model (a model id or name) are required.",
                       param="dataset" if not dataset_ref else "base_model")
    settings = body.get("settings") or {}
    if not isinstance(settings, dict):
        raise ApiError("settings must be an object of job settings (see GET /api/openapi.json).", param="settings")
    validation_ref = body.get("validation_dataset") or body.get("validation_file")
    sweep = create_sweep(
        request.user, _dataset(request, dataset_ref, "dataset"), _base_model(request, model_ref), settings,
        body.get("ranks", list(DEFAULT_RANKS)), body.get("alpha_rule", Sweep.AlphaRule.DOUBLE),
        body.get("fixed_alpha"), body.get("tolerance", 0.01), name=str(body.get("name") or ""),
        validation_dataset=_dataset(request, validation_ref, "validation_dataset") if validation_ref else None,
    )  # SweepRejected is a JobRejected: answered 400 with its problems by api_endpoint
    return JsonResponse(sweep_summary(sweep), status=201)


@api_endpoint("GET", "POST")
def sweeps(request: HttpRequest) -> JsonResponse:
    """GET: the caller's sweeps, newest first. POST: launch one (``dataset``, ``base_model``, ``settings``,
    ``ranks`` [1,2,4,8,16,32,64], ``alpha_rule`` alpha=r|alpha=2r|fixed|rslora, ``fixed_alpha``, ``tolerance``)."""
    if request.method == "POST":
        return _create(request)
    rows = Sweep.objects.visible_to(request.user)[:200]
    return JsonResponse({"object": "list", "data": [
        {"object": "sweep", "id": str(s.id), "name": s.name, "ranks": s.ranks, "alpha_rule": s.alpha_rule,
         "created_at": int(s.created_at.timestamp())} for s in rows]})


@api_endpoint("GET")
def sweep_detail(request: HttpRequest, sweep_id: str) -> JsonResponse:
    try:
        sweep = get_owned_or_404(Sweep.objects, request.user, pk=sweep_id)
    except Http404:
        raise not_found("sweep", sweep_id) from None
    try:
        tolerance = parse_tolerance(request.GET.get("tolerance"))
    except ValueError as exc:
        raise ApiError(str(exc), param="tolerance") from None
    return JsonResponse(sweep_summary(sweep, tolerance))

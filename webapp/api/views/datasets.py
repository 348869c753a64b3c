"""Native ``/api/datasets/{id}/preview`` and ``/stats``: what the base model's tokenizer makes of a data set."""

from __future__ import annotations

import uuid

from django.http import HttpRequest, JsonResponse

from webapp.basemodels.models import BaseModel
from webapp.datasets.actions import compute_token_stats, dataset_preview

from ..errors import ApiError, api_endpoint
from .files import owned_file

MAX_PREVIEW_ROWS = 50


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    raw = request.GET.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ApiError(f"{name} must be an integer from {low} to {high} (got {raw!r}).", param=name)
    return value


def _base_model(request: HttpRequest, fallback: BaseModel | None) -> BaseModel:
    """``?base_model=<name or id>``, else the model the data set's stats were computed for."""
    wanted = request.GET.get("base_model") or request.GET.get("model")
    if not wanted:
        if fallback is not None:
            return fallback
        raise ApiError("base_model is required: the name of the base model whose tokenizer to use.",
                       param="base_model")
    visible = BaseModel.objects.visible_to(request.user)
    try:
        found = visible.filter(pk=uuid.UUID(wanted)).first()
    except ValueError:
        found = visible.filter(name=wanted).first()
    if found is None:
        raise ApiError(f"Base model {wanted!r} does not exist or is not available to you.", status=404,
                       code="model_not_found", param="base_model")
    return found


@api_endpoint("GET")
def dataset_preview_view(request: HttpRequest, dataset_id: str) -> JsonResponse:
    dataset = owned_file(request, dataset_id)
    base_model = _base_model(request, dataset.stats_base_model)
    rows = _int_param(request, "n", 5, 1, MAX_PREVIEW_ROWS)
    max_seq_len = _int_param(request, "max_seq_len", 512, 8, 131072)
    return JsonResponse(dataset_preview(dataset, base_model, n=rows, max_seq_len=max_seq_len))


@api_endpoint("GET")
def dataset_stats_view(request: HttpRequest, dataset_id: str) -> JsonResponse:
    dataset = owned_file(request, dataset_id)
    base_model = _base_model(request, dataset.stats_base_model)
    max_seq_len = _int_param(request, "max_seq_len", 512, 8, 131072)
    return JsonResponse(compute_token_stats(dataset, base_model, max_seq_len))

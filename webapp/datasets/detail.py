"""What the data set page shows: the record, its validation report, a preview and token-length statistics
for the base model and sequence length chosen in the page's query string (``?base_model=<id>&max_seq_len=N``).
"""

from __future__ import annotations

import uuid

from django.http import HttpRequest

from webapp.basemodels.models import BaseModel
from webapp.lib.demo_login import DEMO_MODEL_NAME

from .histogram import histogram_chart
from .models import Dataset
from .preview import PreviewError, cached_token_stats, compute_token_stats, dataset_preview

DEFAULT_SEQ_LEN = 512
SEQ_LEN_RANGE = (8, 131072)
PREVIEW_ROWS = 5
# Token statistics tokenize every row: above this size the page computes them only when asked (then cached).
STATS_ON_REQUEST_BYTES = 50 * 1024 * 1024


def _chosen_model(request: HttpRequest, dataset: Dataset, models: list[BaseModel]) -> BaseModel | None:
    wanted = request.GET.get("base_model")
    by_id = {str(m.pk): m for m in models}
    if wanted:
        try:
            return by_id.get(str(uuid.UUID(wanted)))
        except ValueError:
            return None
    if dataset.stats_base_model_id and str(dataset.stats_base_model_id) in by_id:
        return by_id[str(dataset.stats_base_model_id)]
    demo = next((m for m in models if m.name == DEMO_MODEL_NAME), None)
    return demo or (models[0] if models else None)


def _seq_len(request: HttpRequest, dataset: Dataset) -> tuple[int, str | None]:
    raw = request.GET.get("max_seq_len")
    if not raw:
        return int((dataset.token_stats or {}).get("max_seq_len") or DEFAULT_SEQ_LEN), None
    low, high = SEQ_LEN_RANGE
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        return DEFAULT_SEQ_LEN, f"The sequence length must be a whole number from {low} to {high} (got {raw[:20]!r})."
    return value, None


def detail_context(request: HttpRequest, dataset: Dataset) -> dict:
    models = list(BaseModel.objects.visible_to(request.user))
    base_model = _chosen_model(request, dataset, models)
    max_seq_len, problem = _seq_len(request, dataset)
    context = {"dataset": dataset, "validation": dataset.validation or {}, "models": models,
               "base_model": base_model, "max_seq_len": max_seq_len, "preview": None, "stats": None,
               "histogram": None, "problem": problem,
               "in_use": dataset.jobs.count() + dataset.validation_jobs.count()}
    if base_model is None:
        context["problem"] = problem or (
            "The chosen base model does not exist or is not available to you." if request.GET.get("base_model")
            else "Register a base model to preview how its tokenizer sees this data.")
        return context
    try:
        context["preview"] = dataset_preview(dataset, base_model, n=PREVIEW_ROWS, max_seq_len=max_seq_len)
        stats = cached_token_stats(dataset, base_model, max_seq_len)
        if stats is None and (dataset.size_bytes <= STATS_ON_REQUEST_BYTES or request.GET.get("stats")):
            stats = compute_token_stats(dataset, base_model, max_seq_len)
    except PreviewError as exc:
        context["problem"] = str(exc)
        return context
    if stats is None:
        context["stats_on_request"] = True
        return context
    context["stats"] = stats
    context["histogram"] = histogram_chart(stats.get("histogram") or [], max_seq_len)
    rows = stats.get("rows") or dataset.rows or 0
    context["truncated_percent"] = 100.0 * (stats.get("truncated_rows") or 0) / rows if rows else 0.0
    return context

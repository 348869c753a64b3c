"""What a base model's tokenizer makes of a data set: previews of the first rows and token-length statistics.

Both go through the engine (``lora_engine.data``) with the model's own tokenizer and chat template, so what
the page shows is exactly what training will see. Token statistics are cached on the data set per
(base model, sequence length): a big file is tokenized once, not on every page load.
"""

from __future__ import annotations

from typing import Any

from lora_engine.errors import DataError
from webapp.basemodels.models import BaseModel
from webapp.basemodels.tokenizers import TokenizerLoadError, get_tokenizer

from .models import Dataset

STATS_VERSION = 1


class PreviewError(ValueError):
    """The preview or statistics cannot be computed (tokenizer missing, file unreadable); says why."""


def _tokenizer(base_model: BaseModel):
    try:
        return get_tokenizer(base_model)
    except TokenizerLoadError as exc:
        raise PreviewError(f"The tokenizer of {base_model.name} cannot be loaded: {exc}") from exc


def _plain(value: Any) -> Any:
    """JSON-safe copy of what the engine returned (dataclasses and tuples become dicts and lists)."""
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict())
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dataset_preview(dataset: Dataset, base_model: BaseModel, n: int = 5, max_seq_len: int = 512) -> dict:
    """The first ``n`` rows as conversations plus their tokens, each marked trained or not.

    Returns:
        ``{"dataset", "base_model", "format", "max_seq_len", "rows": [{"turns": [{"role", "content"}],
        "tokens": [{"text", "trained"}], "trained_tokens", "total_tokens" (= "num_tokens"), "truncated",
        "line"}]}``

    Raises:
        PreviewError: the tokenizer cannot be loaded or the file cannot be read.
    """
    from lora_engine.data import preview_rows

    tokenizer = _tokenizer(base_model)
    try:
        rows = preview_rows(dataset.path, tokenizer, n=n, format=dataset.format or "auto", max_seq_len=max_seq_len)
    except (DataError, OSError) as exc:
        raise PreviewError(f"The data set cannot be previewed: {exc}") from exc
    rows = [_preview_row(_plain(row)) for row in rows]
    return {"dataset": str(dataset.id), "base_model": base_model.name, "format": dataset.format,
            "max_seq_len": max_seq_len, "rows": rows}


def _preview_row(row: dict) -> dict:
    tokens = row.get("tokens") or []
    row.setdefault("total_tokens", row.get("num_tokens", len(tokens)))
    row.setdefault("trained_tokens", sum(1 for t in tokens if t.get("trained")))
    row.setdefault("turns", [])
    return row


def cached_token_stats(dataset: Dataset, base_model: BaseModel, max_seq_len: int) -> dict | None:
    stats = dataset.token_stats or {}
    wanted = {"version": STATS_VERSION, "base_model_id": str(base_model.pk), "max_seq_len": max_seq_len}
    if all(stats.get(k) == v for k, v in wanted.items()) and stats.get("sha256") == dataset.sha256:
        return stats
    return None


def compute_token_stats(dataset: Dataset, base_model: BaseModel, max_seq_len: int) -> dict:
    """Token lengths of every row with ``base_model``'s tokenizer, against ``max_seq_len`` (cached per pair).

    Returns:
        ``{"base_model", "base_model_id", "max_seq_len", "rows", "count", "min", "max", "mean", "p50", "p95",
        "histogram": [{"start", "end", "count", "over"}], "truncated_rows", "trainable_tokens"}``

    Raises:
        PreviewError: the tokenizer cannot be loaded or the file cannot be read.
    """
    cached = cached_token_stats(dataset, base_model, max_seq_len)
    if cached is not None:
        return cached
    from lora_engine.data import validate_file

    tokenizer = _tokenizer(base_model)
    try:
        report = validate_file(dataset.path, format=dataset.format or "auto", tokenizer=tokenizer,
                               max_seq_len=max_seq_len)
    except (DataError, OSError) as exc:
        raise PreviewError(f"Token statistics cannot be computed: {exc}") from exc
    stats = _stats_dict(_plain(report), max_seq_len)
    stats.update({"version": STATS_VERSION, "base_model": base_model.name, "base_model_id": str(base_model.pk),
                  "max_seq_len": max_seq_len, "sha256": dataset.sha256})
    Dataset.objects.filter(pk=dataset.pk).update(token_stats=stats, stats_base_model=base_model)
    dataset.token_stats, dataset.stats_base_model = stats, base_model
    return stats


def _stats_dict(report: dict, max_seq_len: int) -> dict:
    token_stats = dict(report.get("token_stats") or {})
    histogram = normalise_histogram(token_stats.pop("histogram", None) or token_stats.pop("bins", None),
                                    max_seq_len)
    out = {key: token_stats.get(key) for key in ("count", "min", "max", "mean", "p50", "p95")}
    out.update({"rows": report.get("rows"), "histogram": histogram,
                "truncated_rows": report.get("truncated_rows") or 0,
                "trainable_tokens": report.get("trainable_tokens")})
    return out


def normalise_histogram(raw: Any, max_seq_len: int) -> list[dict]:
    """The engine's histogram as ``[{"start", "end", "count", "over"}]``; ``over``: the bin holds lengths past
    ``max_seq_len`` (rows that would be truncated). Bins are ``[start, end)``."""
    bins: list[dict] = []
    if isinstance(raw, dict) and "edges" in raw and "counts" in raw:
        edges, counts = list(raw["edges"]), list(raw["counts"])
        bins = [{"start": edges[i], "end": edges[i + 1], "count": counts[i]} for i in range(len(counts))]
    elif isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict):
                start = item.get("start", item.get("lo", item.get("min", 0)))
                end = item.get("end", item.get("hi", item.get("max", start)))
                bins.append({"start": start, "end": end, "count": item.get("count", 0)})
            elif isinstance(item, (list, tuple)) and len(item) == 3:
                bins.append({"start": item[0], "end": item[1], "count": item[2]})
    for item in bins:
        item["over"] = item["end"] - 1 > max_seq_len
    return bins

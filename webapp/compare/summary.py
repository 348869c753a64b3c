"""What the compare table shows for each job, read from the job's record, its metric points and its adapter.

One row per job (:func:`job_row`), the same numbers on the page, in the CSV and in ``GET /api/compare``.
Where a number comes from:

| column               | source                                                                      |
| -------------------- | --------------------------------------------------------------------------- |
| scaling              | α/r, or α/√r when the job used rsLoRA                                        |
| trainable params     | the finished run's count, else the memory estimate's                        |
| % of base            | trainable / base params (run total − adapter, else the estimate's, else the model's) |
| adapter size         | the registered adapter's file size                                           |
| estimated peak memory| the estimate recorded at launch (``memory_estimate.selected_total``)         |
| measured peak memory | the run's peak, else the last train point's ``memory_peak_bytes``            |
| tokens/s             | tokens seen / elapsed seconds at the last train point (whole-run throughput) |
| wall time            | finished − started for an ended job, else the last point's elapsed seconds   |
| final train loss     | the loss of the highest train step                                           |
| best eval loss       | the lowest ``eval_loss`` of the eval points, with that point's perplexity    |
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from webapp.jobs.models import Job, MetricPoint

from .recommend import SweepPoint

MAX_COMPARE_JOBS = 24

# (key, CSV header) in table order.
COLUMNS: list[tuple[str, str]] = [
    ("id", "job id"), ("name", "name"), ("state", "state"), ("rank", "rank"), ("alpha", "alpha"),
    ("scaling", "scaling"), ("scaling_rule", "scaling rule"), ("targets", "targets"),
    ("quantization", "quantization"), ("trainable_params", "trainable params"),
    ("trainable_percent", "trainable % of base"), ("adapter_size_bytes", "adapter size (bytes)"),
    ("estimated_peak_memory_bytes", "estimated peak memory (bytes)"),
    ("measured_peak_memory_bytes", "measured peak memory (bytes)"), ("tokens_per_second", "tokens/s"),
    ("wall_time_seconds", "wall time (s)"), ("steps", "steps"), ("final_train_loss", "final train loss"),
    ("best_eval_loss", "best eval loss"), ("best_eval_step", "best eval step"), ("perplexity", "perplexity"),
]

# Config keys that name files or directories: they differ for every job and say nothing about the recipe.
_PATH_KEYS = {"output_dir", "model", "data.path", "data.eval_path", "resume"}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def scaling_of(job: Job) -> tuple[float, str]:
    """The adapter's output scale and its rule (α/r or α/√r)."""
    lora = (job.config or {}).get("lora") or {}
    if lora.get("use_rslora"):
        return job.alpha / math.sqrt(job.rank), "α/√r"
    return job.alpha / job.rank, "α/r"


def _last_train_values(job: Job) -> dict[str, Any]:
    row = (MetricPoint.objects.filter(job=job, split="train").order_by("-step").values_list("values", flat=True)
           .first())
    return row or {}


def _best_eval(job: Job) -> tuple[float | None, int | None, float | None]:
    """(best eval loss, its step, its perplexity) over the job's eval points."""
    best: tuple[float, int, float | None] | None = None
    for step, values in MetricPoint.objects.filter(job=job, split="eval").values_list("step", "values"):
        loss = _number(values.get("eval_loss"))
        if loss is not None and (best is None or loss < best[0]):
            best = (loss, step, _number(values.get("perplexity")))
    if best is None:
        return None, None, None
    loss, step, perplexity = best
    if perplexity is None:
        perplexity = math.exp(loss) if loss < 700 else None
    return loss, step, perplexity


def _parameters(job: Job) -> tuple[int | None, float | None]:
    """(trainable params, trainable as a % of the base model's parameters)."""
    estimate = job.memory_estimate or {}
    trainable = job.trainable_params or estimate.get("lora_trainable_params")
    if job.total_params and job.trainable_params:
        base = job.total_params - job.trainable_params
    else:
        base = estimate.get("total_params") or job.base_model.parameter_count
    percent = 100.0 * trainable / base if trainable and base else None
    return trainable, percent


def _wall_time(job: Job, last: dict[str, Any]) -> float | None:
    if job.is_terminal and job.started_at and job.finished_at:
        return (job.finished_at - job.started_at).total_seconds()
    return _number(last.get("elapsed_seconds"))


def _throughput(last: dict[str, Any]) -> float | None:
    tokens, elapsed = _number(last.get("tokens_seen")), _number(last.get("elapsed_seconds"))
    if tokens is not None and elapsed:
        return tokens / elapsed
    return _number(last.get("tokens_per_second"))


def job_row(job: Job) -> dict[str, Any]:
    """One compare-table row (see the module docstring for where each number comes from)."""
    last = _last_train_values(job)
    best_eval, best_step, perplexity = _best_eval(job)
    trainable, percent = _parameters(job)
    scaling, rule = scaling_of(job)
    adapter = getattr(job, "adapter", None)
    lora = (job.config or {}).get("lora") or {}
    return {
        "id": str(job.id), "name": job.suffix or str(job.id)[:8], "state": job.state,
        "rank": job.rank, "alpha": job.alpha, "scaling": scaling, "scaling_rule": rule,
        "targets": ",".join(lora.get("targets") or []), "quantization": job.quantization,
        "trainable_params": trainable, "trainable_percent": percent,
        "adapter_size_bytes": adapter.size_bytes if adapter is not None and adapter.size_bytes else None,
        "estimated_peak_memory_bytes": (job.memory_estimate or {}).get("selected_total"),
        "measured_peak_memory_bytes": job.peak_memory_bytes or _number(last.get("memory_peak_bytes")),
        "tokens_per_second": _throughput(last), "wall_time_seconds": _wall_time(job, last),
        "steps": last.get("step", job.current_step), "final_train_loss": _number(last.get("loss")),
        "best_eval_loss": best_eval, "best_eval_step": best_step, "perplexity": perplexity,
    }


def compare_rows(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    return [job_row(job) for job in jobs]


def sweep_point(row: dict[str, Any]) -> SweepPoint:
    return SweepPoint(rank=row["rank"], best_eval_loss=row["best_eval_loss"],
                      final_train_loss=row["final_train_loss"], trainable_params=row["trainable_params"])


# ---------------------------------------------------------------------------------------------------------
# Configuration differences


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif isinstance(value, (list, tuple)):
        out[prefix] = ",".join(str(v) for v in value)
    else:
        out[prefix] = value


def flat_config(job: Job) -> dict[str, Any]:
    """The job's recipe as dotted keys (file paths left out; the data set and base model by name)."""
    flat: dict[str, Any] = {"base_model": job.base_model.name, "dataset": job.dataset.name,
                            "validation_dataset": job.validation_dataset.name if job.validation_dataset else None}
    config: dict[str, Any] = {}
    _flatten("", job.config or {}, config)
    flat.update({k: v for k, v in config.items() if k not in _PATH_KEYS})
    return flat


def config_table(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """One row per config key: ``{"key", "values" (one per job), "differs"}``, differing keys first."""
    flats = [flat_config(job) for job in jobs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    rows = []
    for key in keys:
        values = [flat.get(key) for flat in flats]
        rows.append({"key": key, "values": values, "differs": any(v != values[0] for v in values)})
    return sorted(rows, key=lambda row: not row["differs"])  # stable: keys keep their order within each group


def rows_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The compare table as CSV (raw numbers: bytes, seconds, full precision)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([header for _, header in COLUMNS])
    for row in rows:
        writer.writerow(["" if row.get(key) is None else row[key] for key, _ in COLUMNS])
    return buffer.getvalue()

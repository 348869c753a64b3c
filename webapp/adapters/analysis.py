"""What an adapter's rank bought: the ΔW spectra (cached, adapters never change) and rank reduction.

``adapter_analysis`` reads the spectra from ``lora_engine.analysis`` once per adapter and keeps the JSON in
``DATA_DIR/derived/adapter-<id>/analysis.json``; ``reduce_adapter_rank`` is the action that writes a smaller
adapter by truncated SVD and records it as a new :class:`Adapter` whose config says where it came from.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

from django.db import transaction

from lora_engine.analysis import adapter_spectrum, reduce_rank
from lora_engine.errors import LoraEngineError, is_disk_full
from webapp.lib.storage import new_file_path, relative_to_data, remove_path, sha256_file

from .actions import derived_path_for
from .models import Adapter
from .validation import AdapterRejected, check_adapter_dir, refused_when_disk_full

logger = logging.getLogger(__name__)

ANALYSIS_FORMAT = 1
"""Bump to make every cached analysis be recomputed (its JSON shape changed)."""


def derived_dir(adapter: Adapter) -> Path:
    """Where files computed from an adapter live (analysis, GGUF export); delete_adapter removes it."""
    return derived_path_for(adapter)


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        temp.write_text(json.dumps(data))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _cache(path: Path, data: dict[str, Any]) -> None:
    """Keep a computed result for next time; a full disk only means it is computed again next time."""
    try:
        _write_json_atomically(path, data)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        logger.warning("not caching %s: the disk is full", path)


def summary_sentence(rank: int, layers: list[dict[str, Any]]) -> str:
    """One line people read first, e.g. "r=64 but layers use ~6 directions for 99% of ΔW"."""
    if not layers:
        return f"r={rank}, but the adapter holds no LoRA layers."
    ranks_99 = [layer["effective_rank_99"] for layer in layers]
    if max(ranks_99) == 0:
        return f"r={rank}, but ΔW is zero in every layer: this adapter has not learned anything (B is all zeros)."
    typical = round(sum(ranks_99) / len(ranks_99))
    if min(ranks_99) == max(ranks_99):
        detail = f"all {len(layers)} layers: {ranks_99[0]}"
    else:
        detail = f"from {min(ranks_99)} to {max(ranks_99)} across {len(layers)} layers"
    if typical >= 0.75 * rank:
        return f"r={rank} and layers use ~{typical} directions for 99% of ΔW ({detail}): the rank you paid for is used."
    return f"r={rank} but layers use ~{typical} directions for 99% of ΔW ({detail})."


def _analysis_json(adapter: Adapter) -> dict[str, Any]:
    try:
        analysis = adapter_spectrum(adapter.path)
    except LoraEngineError as exc:
        raise AdapterRejected(f"The adapter's files cannot be analysed: {exc}") from exc
    data = analysis.to_dict()
    data.pop("adapter_dir", None)  # a server path; never shown
    layers = data["layers"]
    data["summary"].update({
        "paid_rank": analysis.rank,
        "max_effective_rank_99": max((la["effective_rank_99"] for la in layers), default=0),
        "max_effective_rank_90": max((la["effective_rank_90"] for la in layers), default=0),
        "sentence": summary_sentence(analysis.rank, layers),
    })
    return {"format": ANALYSIS_FORMAT, **data}


def adapter_analysis(adapter: Adapter) -> dict[str, Any]:
    """The adapter's per-layer spectra and summary (computed once, then read from the cache).

    Raises:
        AdapterRejected: the adapter's files are missing or damaged.
    """
    cache = derived_dir(adapter) / "analysis.json"
    try:
        cached = json.loads(cache.read_text())
        if cached.get("format") == ANALYSIS_FORMAT:
            return cached
    except (OSError, ValueError):
        pass
    data = _analysis_json(adapter)
    _cache(cache, data)
    return data


def _reduced_name(adapter: Adapter, new_rank: int) -> str:
    return f"{adapter.name}-r{new_rank}"[:200]


def _check_new_rank(adapter: Adapter, new_rank: Any) -> int:
    if isinstance(new_rank, str) and new_rank.strip().isdigit():
        new_rank = int(new_rank)
    if not isinstance(new_rank, int) or isinstance(new_rank, bool) or not 1 <= new_rank < adapter.rank:
        if adapter.rank <= 1:
            raise AdapterRejected("This adapter has rank 1; there is no smaller rank to reduce it to.")
        raise AdapterRejected(f"The new rank must be a whole number from 1 to {adapter.rank - 1} "
                              f"(this adapter has rank {adapter.rank}); got {new_rank!r}.")
    return new_rank


def _existing_reduction(adapter: Adapter, new_rank: int) -> Adapter | None:
    return (Adapter.objects.filter(owner=adapter.owner, config__reduced_from__adapter_id=str(adapter.id),
                                   config__reduced_from__new_rank=new_rank).first())


def _lineage(adapter: Adapter, report) -> dict[str, Any]:
    return {
        "lineage": f"reduced from {adapter.id} by truncated SVD",
        "reduced_from": {
            "adapter_id": str(adapter.id), "name": adapter.name, "rank": adapter.rank, "new_rank": report.new_rank,
            "method": "truncated SVD of ΔW = s·B·A per layer (the scaling s is kept)",
            "energy_kept": report.energy_kept, "min_layer_energy_kept": report.min_layer_energy_kept,
            "layers": [{"module": layer.module, "energy_kept": layer.energy_kept} for layer in report.layers],
        },
        "parent_config": adapter.config,
    }


def reduce_adapter_rank(adapter: Adapter, new_rank: Any) -> Adapter:
    """Write a rank-``new_rank`` copy of ``adapter`` (leading directions of every ΔW) as a new Adapter.

    Idempotent: asking again for the same rank returns the adapter made the first time. The new adapter has
    the same owner and base model, is named ``<name>-r<k>``, and its config records the parent and the share
    of ΔW's energy (Σσ²) kept, overall and per layer.

    Raises:
        AdapterRejected: ``new_rank`` is not a whole number from 1 to rank-1, or the files cannot be read;
            AdapterDiskFull (status 507) when the disk fills up while the new adapter is written (nothing is kept).
    """
    new_rank = _check_new_rank(adapter, new_rank)
    with transaction.atomic():
        Adapter.objects.select_for_update().filter(pk=adapter.pk).first()  # one reduction at a time per parent
        existing = _existing_reduction(adapter, new_rank)
        if existing is not None:
            return existing
        out_dir = new_file_path("adapters")
        try:
            with refused_when_disk_full("the reduced adapter"):
                report = reduce_rank(adapter.path, new_rank, out_dir)
        except LoraEngineError as exc:
            remove_path(out_dir)
            raise AdapterRejected(f"The adapter cannot be reduced: {exc}") from exc
        except BaseException:
            remove_path(out_dir)
            raise
        try:
            lora, trainable = check_adapter_dir(out_dir, adapter.base_model)
            return Adapter.objects.create(
                owner=adapter.owner, name=_reduced_name(adapter, new_rank), source=Adapter.Source.UPLOADED,
                storage_path=relative_to_data(out_dir), base_model=adapter.base_model,
                base_revision=adapter.base_revision, rank=lora.rank, alpha=lora.alpha, targets=adapter.targets,
                use_rslora=lora.use_rslora, use_dora=lora.use_dora, trainable_params=trainable,
                size_bytes=sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()),
                sha256=sha256_file(out_dir / "adapter_model.safetensors"), dataset_sha256=adapter.dataset_sha256,
                config=_lineage(adapter, report),
            )
        except BaseException:
            remove_path(out_dir)
            raise

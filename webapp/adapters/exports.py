"""Exports for llama.cpp: an adapter as a GGUF LoRA file, a succeeded merge as a GGUF model (both cached).

Adapters and merged models never change, so each GGUF is built once (on its first download) into the
adapter's derived directory through a temporary file and a rename, then streamed with HTTP Range support.
"""

from __future__ import annotations

from pathlib import Path

from django.db.models import QuerySet

from lora_engine.errors import LoraEngineError
from lora_engine.gguf_export import export_adapter_gguf, export_model_gguf
from webapp.lib.storage import data_path

from .actions import derived_path_for
from .models import Adapter, Merge

MERGED_GGUF_DTYPE = "f16"


class ExportRejected(ValueError):
    """The GGUF cannot be made; the message says why (e.g. an unsupported architecture) and what to do."""


def adapter_gguf_path(adapter: Adapter) -> Path:
    return derived_path_for(adapter) / "adapter-lora.gguf"


def adapter_gguf_filename(adapter: Adapter) -> str:
    return f"{adapter.name}-lora.gguf"


def build_adapter_gguf(adapter: Adapter) -> Path:
    """The adapter's llama.cpp LoRA GGUF (built now if missing).

    Raises:
        ExportRejected: the base model's architecture is not supported, DoRA, or damaged adapter files.
    """
    target = adapter_gguf_path(adapter)
    if target.exists():
        return target
    base = adapter.base_model
    try:
        export_adapter_gguf(adapter.path, base.config or base.location, target, name=adapter.name)
    except LoraEngineError as exc:
        raise ExportRejected(f"This adapter cannot be exported to GGUF: {exc}") from exc
    return target


def exportable_merges(adapter: Adapter) -> QuerySet:
    """The adapter's merges that finished and left a merged model on disk."""
    return adapter.merges.filter(state=Merge.State.SUCCEEDED).exclude(storage_path="").order_by("-finished_at")


def merge_gguf_path(merge: Merge) -> Path:
    return derived_path_for(merge.adapter) / f"merge-{merge.id.hex}-{MERGED_GGUF_DTYPE}.gguf"


def merge_gguf_filename(merge: Merge) -> str:
    return f"{merge.adapter.name}-merged-{MERGED_GGUF_DTYPE}.gguf"


def build_merge_gguf(merge: Merge) -> Path:
    """The merged model as a GGUF model file (built now if missing; a large model takes a while).

    Raises:
        ExportRejected: the merge has not succeeded, its files are gone, or the architecture or tokenizer is
            not supported.
    """
    if merge.state != Merge.State.SUCCEEDED or not merge.storage_path:
        raise ExportRejected(f"This merge is {merge.state}; only a succeeded merge can be exported to GGUF.")
    target = merge_gguf_path(merge)
    if target.exists():
        return target
    try:
        model_dir = data_path(merge.storage_path)
    except ValueError as exc:
        raise ExportRejected("The merged model's files are not in the data directory.") from exc
    if not model_dir.is_dir():
        raise ExportRejected("The merged model's files are gone; merge the adapter again.")
    try:
        export_model_gguf(model_dir, target, dtype=MERGED_GGUF_DTYPE, name=f"{merge.adapter.name}-merged")
    except LoraEngineError as exc:
        raise ExportRejected(f"The merged model cannot be exported to GGUF: {exc}") from exc
    return target

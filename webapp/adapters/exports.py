"""The adapter as a llama.cpp GGUF LoRA file (cached), built in the request on its first download.

An adapter never changes, so its GGUF is built once into the adapter's derived directory through a temporary
file and a rename, then streamed with HTTP Range support. It holds only the adapter's A and B matrices, so
building it takes about as long and as much memory as reading the adapter (the adapter's zip download is
built the same way). A merged model's GGUF is the size of the whole model: a worker builds that one (see
webapp.adapters.gguf_exports).
"""

from __future__ import annotations

from pathlib import Path

from lora_engine.errors import LoraEngineError, disk_full_message, is_disk_full
from lora_engine.gguf_export import export_adapter_gguf

from .actions import derived_path_for
from .models import Adapter


class ExportRejected(ValueError):
    """The GGUF cannot be made; the message says why (e.g. an unsupported architecture) and what to do."""


class ExportDiskFull(ExportRejected):
    """The disk filled up while writing the GGUF; nothing half-written was kept."""


def adapter_gguf_path(adapter: Adapter) -> Path:
    return derived_path_for(adapter) / "adapter-lora.gguf"


def adapter_gguf_filename(adapter: Adapter) -> str:
    return f"{adapter.name}-lora.gguf"


def build_adapter_gguf(adapter: Adapter) -> Path:
    """The adapter's llama.cpp LoRA GGUF (built now if missing).

    Raises:
        ExportRejected: the base model's architecture is not supported, DoRA, or damaged adapter files.
        ExportDiskFull: the data directory's disk is full (the engine removed its temporary file).
    """
    target = adapter_gguf_path(adapter)
    if target.exists():
        return target
    base = adapter.base_model
    try:
        export_adapter_gguf(adapter.path, base.config or base.location, target, name=adapter.name)
    except LoraEngineError as exc:
        raise ExportRejected(f"This adapter cannot be exported to GGUF: {exc}") from exc
    except OSError as exc:
        if is_disk_full(exc):
            raise ExportDiskFull(disk_full_message("the adapter's GGUF file")) from exc
        raise
    return target

"""lora_engine: LoRA and QLoRA fine-tuning of Hugging Face causal LMs.

A plain library (torch, transformers, bitsandbytes, safetensors). It never imports Django, Celery or
Channels; progress leaves it only through :mod:`lora_engine.callbacks`.
"""

from .config import DataConfig, LoraConfig, QuantConfig, RunConfig, TrainConfig
from .errors import (
    AdapterFormatError,
    CheckpointError,
    ConfigError,
    DataError,
    DataProblem,
    LoraEngineError,
    ModelLoadError,
    TargetModulesError,
    TrainingOutOfMemory,
    UnsupportedDataError,
)

__all__ = [
    "AdapterFormatError", "CheckpointError", "ConfigError", "DataConfig", "DataError", "DataProblem",
    "LoraConfig", "LoraEngineError", "ModelLoadError", "QuantConfig", "RunConfig", "TargetModulesError",
    "TrainConfig", "TrainingOutOfMemory", "UnsupportedDataError",
]

# The training API needs torch; it is imported on first use so that ``import lora_engine`` (and the web
# app's config validation) stays light.
_LAZY = {"train": "trainer", "TrainResult": "trainer", "estimate_memory": "memory", "MemoryEstimate": "memory"}
__all__ += ["MemoryEstimate", "TrainResult", "estimate_memory", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

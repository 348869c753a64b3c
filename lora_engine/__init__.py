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

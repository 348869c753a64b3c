"""The engine's exception hierarchy.

Every error the engine raises on purpose is a :class:`LoraEngineError`. Each carries a message meant
for people (what went wrong and what to do next); callers (CLI, worker, web app) show ``str(err)``.
"""

from __future__ import annotations

from dataclasses import dataclass


class LoraEngineError(Exception):
    """Base class of every error the engine raises deliberately."""


class ConfigError(LoraEngineError):
    """One or more configuration values are invalid. ``problems`` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


@dataclass(frozen=True)
class DataProblem:
    """One problem in a data file: where it is (1-based line or record number) and what it is."""

    line: int | None
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "file"
        field = f", field {self.field!r}" if self.field else ""
        return f"{where}{field}: {self.message}"


class DataError(LoraEngineError):
    """A data file cannot be used. ``problems`` lists every problem found (capped), with line numbers."""

    def __init__(self, problems: list[DataProblem], summary: str | None = None):
        self.problems = list(problems)
        head = summary or f"{len(self.problems)} problem(s) in the data"
        shown = "; ".join(str(p) for p in self.problems[:10])
        more = f" (and {len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        super().__init__(f"{head}: {shown}{more}" if shown else head)


class UnsupportedDataError(DataError):
    """The file is well-formed but holds data this engine does not train on (e.g. preference pairs)."""


class TargetModulesError(LoraEngineError):
    """Target module patterns matched nothing (or something that cannot be wrapped)."""

    def __init__(self, message: str, available: list[str]):
        self.available = list(available)
        super().__init__(f"{message}. The model's linear layers are: {', '.join(self.available)}")


class ModelLoadError(LoraEngineError):
    """The base model (or its tokenizer) cannot be loaded."""


class AdapterFormatError(LoraEngineError):
    """An adapter directory is missing files, is not safetensors, or does not fit the base model."""


class TrainingOutOfMemory(LoraEngineError):
    """Training ran out of memory. The message says what to lower."""


class TrainingDiverged(LoraEngineError):
    """The loss became NaN or infinite."""


class CheckpointError(LoraEngineError):
    """A checkpoint is incomplete or does not match the run configuration."""


class MergeError(LoraEngineError):
    """An adapter cannot be merged into the base model (or the output directory is in the way)."""

"""The engine's exception hierarchy.

Every error the engine raises on purpose is a :class:`LoraEngineError`. Each carries a message meant
for people (what went wrong and what to do next); callers (CLI, worker, web app) show ``str(err)``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


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


class DiskFullError(LoraEngineError):
    """A file could not be written because the disk (or the user's quota) is full; nothing half-written was kept."""


def disk_full_message(what: str) -> str:
    """The message for people when ``what`` (e.g. "the checkpoint at step 40") could not be written."""
    return (f"The server's disk is full: {what} could not be written (nothing half-written was kept). Free space "
            "in the data directory — delete old jobs, merged models or data sets you no longer need, or ask the "
            "administrator for more — then try again.")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from or during, is ENOSPC/EDQUOT.

    torch.save reports a failed write as a RuntimeError raised during the OSError (its ``__context__``), and
    safetensors as its own error whose message carries the system's "No space left on device".
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(exc) for code in DISK_FULL_ERRNOS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def disk_full_as_error(what: str) -> Iterator[None]:
    """Turn a disk-full failure inside the block into a :class:`DiskFullError` naming ``what`` (the outermost
    block names it: a checkpoint, rather than the adapter files inside it).

    Raises:
        DiskFullError: a write in the block failed for lack of space.
    """
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(disk_full_message(what)) from exc
        raise

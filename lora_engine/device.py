"""Devices: choosing one, autocast, memory numbers and out-of-memory detection.

Every CUDA-specific call of the engine lives in this module, so the rest of the engine runs unchanged on
a machine without a GPU. On CPU the memory numbers are the process's resident set size (now and peak),
which is what a person watching ``top`` would see.
"""

from __future__ import annotations

import contextlib
import resource
import sys

import torch

from .errors import ConfigError

_AMP_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_OOM_MARKERS = ("CUDA out of memory", "DefaultCPUAllocator: can't allocate memory", "out of memory")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device a run uses.

    Args:
        name: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        The device.

    Raises:
        ConfigError: the name is not a device, or CUDA was asked for and is not available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError([f"unknown device {name!r}; use auto, cpu, cuda or cuda:N"]) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError([f"device {name!r} was requested but CUDA is not available; use device 'cpu' or 'auto'"])
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError([f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)"])
    elif device.type != "cpu":
        raise ConfigError([f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N"])
    return device


def amp_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name (``fp32``, ``bf16``, ``fp16``).

    Raises:
        ConfigError: unknown precision name.
    """
    try:
        return _AMP_DTYPES[precision]
    except KeyError:
        raise ConfigError([f"precision must be one of {', '.join(_AMP_DTYPES)} (got {precision!r})"]) from None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A context manager running matmuls in ``precision`` on ``device``; fp32 is a no-op context.

    Args:
        device: the run's device.
        precision: ``fp32``, ``bf16`` or ``fp16``.

    Returns:
        ``torch.autocast`` for bf16/fp16, ``contextlib.nullcontext`` for fp32.
    """
    dtype = amp_dtype(precision)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _cpu_rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process, in bytes."""
    current = peak = 0
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    current = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        pass
    if not peak:
        # ru_maxrss is kilobytes on Linux and bytes on macOS
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024
    return current or peak, max(peak, current)


def memory_baseline(device: torch.device) -> int:
    """What a run's memory readings leave out, measured before its model loads: on CPU the process's resident
    set size now (Python, torch and the libraries, ~300 MB, which no training estimate counts); 0 on CUDA,
    whose allocator only counts tensors anyway.

    Args:
        device: the run's device.

    Returns:
        Bytes to pass as ``baseline`` to :func:`memory_snapshot`.
    """
    return 0 if device.type == "cuda" else _cpu_rss_bytes()[0]


def memory_snapshot(device: torch.device, baseline: int = 0) -> tuple[int, int]:
    """Memory in use now and the peak since the last :func:`reset_peak_memory`, in bytes.

    Args:
        device: the run's device.
        baseline: bytes to leave out (see :func:`memory_baseline`); 0 for the absolute numbers.

    Returns:
        ``(allocated, peak)``: on CUDA the allocator's allocated bytes and peak reserved bytes; on CPU the
        process's resident set size now and its high-water mark, each less ``baseline`` (never below 0).
    """
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_reserved(device)
    current, peak = _cpu_rss_bytes()
    return max(0, current - baseline), max(0, peak - baseline)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window. On CPU (Linux) the process's high-water mark is set back to its resident
    set size, so a worker process that trained a bigger job before does not report that job's peak; where the
    kernel does not allow it, the mark keeps counting from the process's start. Memory an earlier run freed but
    the C allocator kept is handed back first (:func:`release_free_heap`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # 5: reset the peak resident set size (Linux 4.0+)
    except OSError:
        pass


def release_free_heap() -> bool:
    """Give the heap memory the C allocator holds free back to the system (glibc's ``malloc_trim``); returns
    whether it could.

    A CPU run's memory readings are resident-set growth over a baseline taken at its start. glibc keeps the
    small blocks an earlier run in the same worker process freed, so the next run reused them without the
    resident set growing: its readings came out near 0 (the QA walkthrough saw 64.9 MB for a worker's first job
    and 0.7 MB for a later, larger one, and the rank comparison ranked r=4 as the hungriest). Trimmed, the next
    run's growth is its own again (measured: 2 → 321 MiB for the same 321 MiB of small tensors allocated twice).
    """
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library already loaded in this process
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return False
    trim(0)
    return True


def synchronize(device: torch.device) -> None:
    """Wait for queued device work to finish (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    """Give cached, unused device memory back (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` means the device (or the host) ran out of memory."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        message = str(exc)
        return any(marker in message for marker in _OOM_MARKERS)
    return False


"""lora_engine.device: device choice, autocast, memory numbers, out-of-memory detection."""

from __future__ import annotations

import contextlib

import pytest
import torch

from lora_engine.device import (
    amp_dtype,
    autocast,
    empty_cache,
    is_out_of_memory,
    memory_baseline,
    memory_snapshot,
    release_free_heap,
    reset_peak_memory,
    resolve_device,
    synchronize,
)
from lora_engine.errors import ConfigError


def test_auto_picks_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "not a device", "mps:7"])
def test_unknown_devices_are_config_errors(name):
    with pytest.raises(ConfigError, match="device"):
        resolve_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_use():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_amp_dtypes():
    assert amp_dtype("fp32") is torch.float32
    assert amp_dtype("bf16") is torch.bfloat16
    assert amp_dtype("fp16") is torch.float16
    with pytest.raises(ConfigError):
        amp_dtype("int4")


def test_fp32_autocast_is_a_no_op_and_bf16_runs_matmuls_in_bf16():
    cpu = torch.device("cpu")
    assert isinstance(autocast(cpu, "fp32"), contextlib.nullcontext)
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, "fp32"):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_cpu_memory_snapshot_is_the_process_rss():
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    now, peak = memory_snapshot(cpu)
    assert 10 << 20 < now <= peak  # a Python process with torch loaded holds well over 10 MB
    block = torch.ones(64 << 20, dtype=torch.uint8)  # touch 64 MB
    now_after, peak_after = memory_snapshot(cpu)
    assert peak_after >= peak and now_after >= now + (32 << 20)
    del block
    synchronize(cpu)
    empty_cache(cpu)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), True),
        (MemoryError(), True),
        (RuntimeError("shape mismatch"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_out_of_memory_detection(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_cpu_memory_snapshot_counts_growth_over_a_baseline_and_its_peak_can_be_reset():
    cpu = torch.device("cpu")
    block = torch.ones(128 << 20, dtype=torch.uint8)  # a high-water mark the next window must not inherit
    del block
    reset_peak_memory(cpu)
    baseline = memory_baseline(cpu)
    now, peak = memory_snapshot(cpu, baseline)
    assert 0 <= now <= peak < 32 << 20
    block = torch.ones(64 << 20, dtype=torch.uint8)
    now, peak = memory_snapshot(cpu, baseline)
    assert (48 << 20) <= now <= peak < 128 << 20
    del block
    assert memory_baseline(torch.device("cuda")) == 0  # CUDA's allocator numbers need no baseline


def _small_tensors() -> list[torch.Tensor]:
    """~160 MiB in 16 KiB tensors: heap blocks (not mmapped) that glibc keeps after they are freed."""
    return [torch.ones(64, 64) for _ in range(10000)]


@pytest.mark.skipif(not release_free_heap(), reason="no malloc_trim (not glibc)")
def test_a_run_after_another_in_the_same_process_measures_its_own_growth():
    cpu = torch.device("cpu")
    earlier_run = _small_tensors()
    del earlier_run  # freed, but kept by the allocator
    reset_peak_memory(cpu)  # a new run starts in the same worker process
    baseline = memory_baseline(cpu)
    this_run = _small_tensors()
    _, peak = memory_snapshot(cpu, baseline)
    assert peak > 100 << 20  # its own ~160 MiB, not the ~0 of reusing the earlier run's free blocks
    del this_run
    release_free_heap()

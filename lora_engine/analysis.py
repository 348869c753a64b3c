"""What an adapter learned, in numbers: the singular values of every layer's ΔW, and rank reduction.

ΔW = s·B·A is (out × in) but has rank ≤ r, so its SVD never needs the full matrix:

    B = Qb·Rb          (QR of B,   Qb: out×r, Rb: r×r)
    Aᵀ = Qa·Ra         (QR of Aᵀ,  Qa: in×r,  Ra: r×r)
    ΔW = Qb · (s·Rb·Raᵀ) · Qaᵀ,   and   s·Rb·Raᵀ = U·Σ·Vᵀ   (an r×r SVD)
    ΔW = (Qb·U) · Σ · (Qa·V)ᵀ

Cost O((out + in)·r² + r³) per layer instead of O(out·in·min(out, in)). The energy of ΔW is Σσ² (its squared
Frobenius norm); the effective rank at 90 % (99 %) is how many leading directions hold that share of it.

:func:`reduce_rank` keeps the leading ``new_rank`` directions: B' = Qb·U_k·√(Σ_k/s), A' = √(Σ_k/s)·(Qa·V_k)ᵀ,
with α rescaled so the scaling s stays the same, hence s·B'·A' is exactly the rank-k truncation of ΔW.
For DoRA adapters the magnitude vector is kept as is (the spectrum is that of the directional update ΔW).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ConfigError
from .lora_factors import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX, LoraFactors, is_factor_key, read_lora_factors

ENERGY_LEVELS = (0.90, 0.99)


@dataclass(frozen=True)
class LayerSpectrum:
    """The spectrum of one module's ΔW."""

    module: str
    rank: int
    """r of this layer's factors."""
    shape: tuple[int, int]
    """(out, in) of ΔW."""
    scaling: float
    singular_values: list[float]
    """σ₁ ≥ σ₂ ≥ … (min(r, out, in) values)."""
    energy: float
    """Σσ² = ‖ΔW‖²_F."""
    effective_rank_90: int
    effective_rank_99: int

    @property
    def cumulative_energy(self) -> list[float]:
        """Share of the energy held by the first k directions, k = 1..len(singular_values)."""
        return _cumulative_share(torch.tensor(self.singular_values, dtype=torch.float64)).tolist()


@dataclass(frozen=True)
class AdapterAnalysis:
    """Per-layer spectra of an adapter plus a summary."""

    adapter_dir: str
    rank: int
    alpha: float
    use_dora: bool
    trainable_params: int
    layers: list[LayerSpectrum]

    @property
    def suggested_rank(self) -> int:
        """The largest 99 %-energy effective rank over the layers: reducing to it loses ≤ 1 % per layer."""
        return max((layer.effective_rank_99 for layer in self.layers), default=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, each layer with its cumulative energy curve, and summary numbers."""
        data = asdict(self)
        for layer_dict, layer in zip(data["layers"], self.layers, strict=True):
            layer_dict["shape"] = list(layer.shape)
            layer_dict["cumulative_energy"] = layer.cumulative_energy
        n = max(1, len(self.layers))
        data["summary"] = {
            "layers": len(self.layers),
            "mean_effective_rank_90": sum(la.effective_rank_90 for la in self.layers) / n,
            "mean_effective_rank_99": sum(la.effective_rank_99 for la in self.layers) / n,
            "suggested_rank": self.suggested_rank,
            "total_energy": sum(la.energy for la in self.layers),
        }
        return data


@dataclass(frozen=True)
class LayerReduction:
    module: str
    old_rank: int
    new_rank: int
    energy_kept: float
    """Share of this layer's ΔW energy (Σσ²) the kept directions hold; 1.0 is exact."""


@dataclass(frozen=True)
class ReductionReport:
    """What :func:`reduce_rank` wrote."""

    out_dir: str
    old_rank: int
    new_rank: int
    energy_kept: float
    """Kept share of the energy summed over all layers."""
    min_layer_energy_kept: float
    adapter_bytes_before: int
    adapter_bytes_after: int
    layers: list[LayerReduction]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def delta_svd(factors: LoraFactors) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ΔW = s·B·A via two QRs and an r×r SVD, in float64.

    Args:
        factors: one module's factors.

    Returns:
        ``(U, S, Vh)`` with U (out, k), S (k,) descending, Vh (k, in), k = min(r, out, in), ΔW = U·diag(S)·Vh.
    """
    q_b, r_b = torch.linalg.qr(factors.lora_B.double())  # (out, k), (k, r)
    q_a, r_a = torch.linalg.qr(factors.lora_A.double().T)  # (in, k'), (k', r)
    core = factors.scaling * (r_b @ r_a.T)  # (k, k')
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    return q_b @ u, s, vh @ q_a.T


def _cumulative_share(singular_values: torch.Tensor) -> torch.Tensor:
    energy = singular_values.double() ** 2
    total = energy.sum()
    if total <= 0:
        return torch.zeros_like(energy)
    return torch.cumsum(energy, 0) / total


def effective_rank(singular_values: torch.Tensor, level: float) -> int:
    """How many leading directions hold at least ``level`` of Σσ² (0 for an all-zero ΔW)."""
    share = _cumulative_share(singular_values)
    if share.numel() == 0 or share[-1] <= 0:
        return 0
    return int((share < level - 1e-12).sum()) + 1


def adapter_spectrum(adapter_dir: str | Path) -> AdapterAnalysis:
    """Singular values and effective ranks of every adapted layer's ΔW.

    Args:
        adapter_dir: a PEFT-layout LoRA/DoRA adapter directory.

    Returns:
        An :class:`AdapterAnalysis` (``to_dict()`` for JSON), layers in module-name order.

    Raises:
        AdapterFormatError: the adapter files are missing or damaged.
    """
    adapter = read_lora_factors(adapter_dir)
    layers = []
    for module, factors in sorted(adapter.layers.items()):
        _, s, _ = delta_svd(factors)
        layers.append(LayerSpectrum(
            module=module, rank=factors.rank, shape=(factors.out_features, factors.in_features),
            scaling=factors.scaling, singular_values=s.tolist(), energy=float((s**2).sum()),
            effective_rank_90=effective_rank(s, ENERGY_LEVELS[0]),
            effective_rank_99=effective_rank(s, ENERGY_LEVELS[1]),
        ))
    params = sum(f.lora_A.numel() + f.lora_B.numel() + (0 if f.magnitude is None else f.magnitude.numel())
                 for f in adapter.layers.values())
    return AdapterAnalysis(
        adapter_dir=str(adapter_dir), rank=int(adapter.config.get("r", max(f.rank for f in adapter.layers.values()))),
        alpha=float(adapter.config.get("lora_alpha", 8)), use_dora=adapter.use_dora, trainable_params=params,
        layers=layers,
    )


def _truncate(factors: LoraFactors, new_rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(B', A', kept energy, total energy): s·B'·A' is the rank-``new_rank`` truncation of ΔW (zero-padded)."""
    u, s, vh = delta_svd(factors)
    keep = min(new_rank, s.numel())
    root = torch.sqrt(s[:keep] / factors.scaling)  # split σ/s evenly between B' and A'
    new_b = torch.zeros(factors.out_features, new_rank, dtype=torch.float64)
    new_a = torch.zeros(new_rank, factors.in_features, dtype=torch.float64)
    new_b[:, :keep] = u[:, :keep] * root
    new_a[:keep] = root[:, None] * vh[:keep]
    return new_b.float(), new_a.float(), float((s[:keep] ** 2).sum()), float((s**2).sum())


def _reduced_config(config: dict[str, Any], layers: dict[str, LoraFactors], new_rank: int) -> dict[str, Any]:
    """The adapter config at ``new_rank``, with α chosen so every layer keeps its scaling s."""
    rslora = bool(config.get("use_rslora", False))

    def alpha_for(scaling: float) -> float:
        return scaling * (math.sqrt(new_rank) if rslora else new_rank)

    scalings = [f.scaling for f in layers.values()]
    common = max(set(scalings), key=scalings.count)
    alpha_pattern = {m: alpha_for(f.scaling) for m, f in sorted(layers.items()) if not math.isclose(f.scaling, common)}
    return {**config, "r": new_rank, "lora_alpha": alpha_for(common), "rank_pattern": {},
            "alpha_pattern": alpha_pattern}


def reduce_rank(adapter_dir: str | Path, new_rank: int, out_dir: str | Path) -> ReductionReport:
    """Write a smaller adapter holding the leading ``new_rank`` directions of every layer's ΔW.

    Args:
        adapter_dir: a PEFT-layout LoRA/DoRA adapter directory.
        new_rank: the new r, from 1 to the adapter's largest layer rank. Exact (up to float rounding) when it is
            at least every layer's effective rank.
        out_dir: a new directory for the reduced adapter (PEFT layout; other files such as the tokenizer and
            ``training_args.json`` are copied; ``rank_reduction.json`` holds the report).

    Returns:
        A :class:`ReductionReport` with the energy kept per layer and overall.

    Raises:
        ConfigError: ``new_rank`` out of range, or ``out_dir`` already exists.
        AdapterFormatError: the adapter files are missing or damaged.
    """
    adapter = read_lora_factors(adapter_dir)
    old_rank = max(f.rank for f in adapter.layers.values())
    if not isinstance(new_rank, int) or isinstance(new_rank, bool) or not 1 <= new_rank <= old_rank:
        raise ConfigError([f"new rank must be an integer from 1 to the adapter's rank {old_rank} (got {new_rank!r})"])
    out = Path(out_dir).absolute()
    if out.exists():
        raise ConfigError([f"output directory {out} already exists; choose a new one"])
    tensors: dict[str, torch.Tensor] = {}
    reductions: list[LayerReduction] = []
    total_energy = kept_energy = 0.0
    for module, factors in sorted(adapter.layers.items()):
        new_b, new_a, kept, energy = _truncate(factors, new_rank)
        total_energy, kept_energy = total_energy + energy, kept_energy + kept
        reductions.append(LayerReduction(module, factors.rank, new_rank, kept / energy if energy > 0 else 1.0))
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = new_a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = new_b.contiguous()
    source = Path(adapter_dir) / ADAPTER_WEIGHTS
    with safe_open(str(source), framework="pt") as handle:  # DoRA magnitudes, LoRA biases, full tensors: unchanged
        for key in handle.keys():
            if not is_factor_key(key, ("lora_A.weight", "lora_B.weight")):
                tensors[key] = handle.get_tensor(key)
    report = ReductionReport(
        out_dir=str(out), old_rank=old_rank, new_rank=new_rank,
        energy_kept=kept_energy / total_energy if total_energy > 0 else 1.0,
        min_layer_energy_kept=min(r.energy_kept for r in reductions), adapter_bytes_before=source.stat().st_size,
        adapter_bytes_after=0, layers=reductions,
    )
    return _write_reduced(Path(adapter_dir), out, tensors, _reduced_config(adapter.config, adapter.layers, new_rank),
                          report)


def _write_reduced(adapter_dir: Path, out: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any],
                   report: ReductionReport) -> ReductionReport:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        for path in adapter_dir.iterdir():
            if path.is_file() and path.name not in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) and path.suffix != ".bin":
                shutil.copyfile(path, staging / path.name)
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        report = _with_size(report, (staging / ADAPTER_WEIGHTS).stat().st_size)
        (staging / "rank_reduction.json").write_text(json.dumps(report.to_dict(), indent=2))
        for path in staging.iterdir():
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _with_size(report: ReductionReport, size: int) -> ReductionReport:
    from dataclasses import replace

    return replace(report, adapter_bytes_after=size)


__all__ = [
    "AdapterAnalysis", "LayerReduction", "LayerSpectrum", "ReductionReport", "adapter_spectrum", "delta_svd",
    "effective_rank", "reduce_rank",
]

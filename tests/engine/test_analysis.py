"""adapter_spectrum and reduce_rank: the cheap SVD equals the full one, and rank reduction is Eckart–Young."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lora_engine.analysis import adapter_spectrum, effective_rank, reduce_rank
from lora_engine.errors import ConfigError
from lora_engine.lora_factors import read_lora_factors
from tests.engine._merge_helpers import edit_adapter, make_adapter, make_base, peft_logits, sample_ids

TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("base"), "llama")


def full_deltas(adapter_dir) -> dict[str, torch.Tensor]:
    """ΔW of every module computed the expensive way: s·B@A as a dense matrix in float64."""
    return {m: f.delta_weight(torch.float64) for m, f in read_lora_factors(adapter_dir).layers.items()}


def make_rank2_adapter(base, path, rank=8, **kwargs):
    """An r=8 adapter whose ΔW has rank exactly 2: B = B₂·C with B₂ (out, 2), C (2, r)."""
    adapter = make_adapter(base, path, TARGETS, rank=rank, **kwargs)
    generator = torch.Generator().manual_seed(5)

    def low_rank_b(tensors):
        for key, value in tensors.items():
            if key.endswith("lora_B.weight"):
                out_features = value.shape[0]
                b2 = torch.randn(out_features, 2, generator=generator)
                tensors[key] = b2 @ torch.randn(2, rank, generator=generator)
        return tensors

    edit_adapter(adapter, low_rank_b)
    return adapter


def test_spectrum_equals_the_full_svd(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "a", TARGETS, rank=6, alpha=12.0)
    analysis = adapter_spectrum(adapter)
    dense = full_deltas(adapter)
    assert [layer.module for layer in analysis.layers] == sorted(dense)
    for layer in analysis.layers:
        expected = torch.linalg.svdvals(dense[layer.module])[:6]
        torch.testing.assert_close(torch.tensor(layer.singular_values, dtype=torch.float64), expected,
                                   rtol=1e-9, atol=1e-9)
        assert layer.energy == pytest.approx(float(dense[layer.module].square().sum()), rel=1e-9)
        assert layer.rank == 6 and layer.scaling == 2.0 and layer.shape == tuple(dense[layer.module].shape)
    data = json.loads(json.dumps(analysis.to_dict()))
    assert data["summary"]["layers"] == 2 * len(TARGETS)
    assert data["layers"][0]["cumulative_energy"][-1] == pytest.approx(1.0)
    assert analysis.trainable_params == sum(6 * (o + i) for o, i in (la.shape for la in analysis.layers))


def test_effective_rank_counts_directions_holding_the_energy():
    # energies 81, 9, 9, 1 of 100: 90 % needs 2 directions... 81+9 = 90 exactly
    values = torch.tensor([9.0, 3.0, 3.0, 1.0])
    assert effective_rank(values, 0.90) == 2
    assert effective_rank(values, 0.99) == 3
    assert effective_rank(values, 0.999) == 4
    assert effective_rank(torch.zeros(4), 0.9) == 0


def test_rank2_adapter_reduces_to_rank2_exactly(base, tmp_path):
    adapter = make_rank2_adapter(base, tmp_path / "r8")
    analysis = adapter_spectrum(adapter)
    assert all(layer.effective_rank_99 == 2 and layer.effective_rank_90 <= 2 for layer in analysis.layers)
    assert analysis.suggested_rank == 2

    report = reduce_rank(adapter, 2, tmp_path / "r2")
    assert report.old_rank == 8 and report.new_rank == 2
    assert report.energy_kept == pytest.approx(1.0, abs=1e-9)
    assert report.adapter_bytes_after < report.adapter_bytes_before / 3
    config = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == pytest.approx(8.0 / 8 * 2)  # same scaling s = α/r = 1
    shapes = {k: tuple(v.shape) for k, v in load_file(str(tmp_path / "r2" / "adapter_model.safetensors")).items()}
    assert all(2 in shape for shape in shapes.values())
    before, after = full_deltas(adapter), full_deltas(tmp_path / "r2")
    for module, delta in before.items():
        torch.testing.assert_close(after[module], delta, atol=1e-5, rtol=0)
    # an independent loader (peft) agrees: the reduced adapter computes what the original computes
    ids = sample_ids()
    torch.testing.assert_close(peft_logits(base, tmp_path / "r2", ids), peft_logits(base, adapter, ids),
                               atol=1e-5, rtol=1e-5)


def test_truncation_is_the_best_low_rank_approximation(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "r8", TARGETS, rank=8, rslora=True)  # s = α/√r
    report = reduce_rank(adapter, 3, tmp_path / "r3")
    config = json.loads((tmp_path / "r3" / "adapter_config.json").read_text())
    assert config["lora_alpha"] == pytest.approx(8.0 / math.sqrt(8) * math.sqrt(3))
    before, after = full_deltas(adapter), full_deltas(tmp_path / "r3")
    kept_total = energy_total = 0.0
    for layer in report.layers:
        u, s, vh = torch.linalg.svd(before[layer.module], full_matrices=False)
        best = u[:, :3] @ torch.diag(s[:3]) @ vh[:3]
        torch.testing.assert_close(after[layer.module], best, atol=1e-5, rtol=0)
        assert layer.energy_kept == pytest.approx(float((s[:3] ** 2).sum() / (s**2).sum()), rel=1e-6)
        kept_total += float((s[:3] ** 2).sum())
        energy_total += float((s**2).sum())
    assert 0.3 < report.energy_kept < 0.99
    assert report.energy_kept == pytest.approx(kept_total / energy_total, rel=1e-6)
    assert report.min_layer_energy_kept == min(la.energy_kept for la in report.layers)
    assert json.loads((tmp_path / "r3" / "rank_reduction.json").read_text())["new_rank"] == 3


def test_dora_magnitudes_are_carried_over(base, tmp_path):
    adapter = make_rank2_adapter(base, tmp_path / "dora", dora=True)
    reduce_rank(adapter, 2, tmp_path / "dora-r2")
    original, reduced = (load_file(str(p / "adapter_model.safetensors")) for p in (adapter, tmp_path / "dora-r2"))
    magnitudes = [k for k in original if "lora_magnitude_vector" in k]
    assert len(magnitudes) == 2 * len(TARGETS)
    for key in magnitudes:
        assert torch.equal(reduced[key], original[key])
    ids = sample_ids()
    torch.testing.assert_close(peft_logits(base, tmp_path / "dora-r2", ids), peft_logits(base, adapter, ids),
                               atol=1e-5, rtol=1e-5)


def test_a_fresh_adapter_has_no_energy(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "zero", TARGETS)
    edit_adapter(adapter, lambda t: {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in t.items()})
    analysis = adapter_spectrum(adapter)
    assert all(layer.energy == 0 and layer.effective_rank_99 == 0 for layer in analysis.layers)
    assert reduce_rank(adapter, 1, tmp_path / "zero-r1").energy_kept == 1.0


def test_bad_requests_are_refused(base, tmp_path):
    adapter = make_adapter(base, tmp_path / "r4", TARGETS, rank=4)
    for bad in (0, 5, 2.5):
        with pytest.raises(ConfigError, match="new rank"):
            reduce_rank(adapter, bad, tmp_path / f"out-{bad}")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        reduce_rank(adapter, 2, tmp_path / "taken")
    assert not any((tmp_path / f"out-{bad}").exists() for bad in (0, 5, 2.5))
    assert list((tmp_path / "taken").iterdir()) == []
    assert not [p.name for p in tmp_path.iterdir() if ".partial-" in p.name]

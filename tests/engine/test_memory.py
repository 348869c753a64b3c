"""The memory estimator: exact parameter arithmetic, sensible ordering, and close to a measured run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_engine.config import LoraConfig, QuantConfig
from lora_engine.inject import inject_lora
from lora_engine.memory import estimate_memory, parameter_counts
from lora_engine.tiny import ARCHITECTURES, build_tiny_model

REPO = Path(__file__).resolve().parents[2]
TARGETS = {"gpt2": ("c_attn", "c_fc"), "gpt_neox": ("query_key_value",)}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_parameter_counts_are_exact(arch):
    model = build_tiny_model(arch, hidden_size=32, heads=4, layers=3, intermediate_size=80)
    total = sum(p.numel() for p in model.parameters())
    for lora in (LoraConfig(rank=4, targets=TARGETS.get(arch, ("q_proj", "v_proj"))),
                 LoraConfig(rank=3, targets=("all-linear",)),
                 LoraConfig(rank=2, targets=("all-linear",), use_dora=True)):
        counted_total, counted_lora = parameter_counts(model.config, lora)
        assert counted_total == total
        # the same count from the config.json dict
        assert parameter_counts(model.config.to_dict(), lora) == (counted_total, counted_lora)
        injected = build_tiny_model(arch, hidden_size=32, heads=4, layers=3, intermediate_size=80)
        report = inject_lora(injected, lora)
        assert counted_lora == report.trainable_params, lora


def _estimate(**kw):
    args = {"lora": LoraConfig(rank=8), "quant": "nf4", "batch_size": 2, "seq_len": 128, "precision": "bf16",
            **kw}
    return estimate_memory(build_tiny_model("llama").config, **args)


def test_breakdown_arithmetic_and_ordering():
    est = _estimate()
    trainable = est.lora_trainable_params
    assert est.lora.gradients == 4 * trainable and est.lora.optimizer == 8 * trainable
    assert est.full.weights == 4 * est.total_params and est.full.optimizer == 8 * est.total_params
    assert est.qlora.weights < est.lora.weights < est.full.weights
    assert est.qlora.total < est.lora.total < est.full.total
    assert est.selected == est.qlora
    assert _estimate(quant="none").selected == _estimate(quant="none").lora
    assert _estimate(precision="fp32").lora.weights > est.lora.weights
    assert _estimate(quant=QuantConfig(mode="int8")).qlora.weights > est.qlora.weights  # 8 bits > 4 bits
    data = est.to_dict()
    assert data["qlora"]["total"] == est.qlora.total and data["selected_total"] == est.qlora.total
    json.dumps(data)


def test_activations_grow_with_batch_and_sequence_and_shrink_with_checkpointing():
    base = _estimate().lora.activations
    assert _estimate(batch_size=4).lora.activations > base
    assert _estimate(seq_len=256).lora.activations > base
    assert _estimate(gradient_checkpointing=True).lora.activations < base
    assert _estimate(attention_scores=True).lora.activations > base
    assert _estimate(lora=LoraConfig(rank=64)).lora.optimizer > _estimate().lora.optimizer


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError):
        _estimate(precision="fp8")


MEASURE = textwrap.dedent("""
    import json, torch
    from lora_engine.config import LoraConfig
    from lora_engine.inject import inject_lora
    from lora_engine.loss import causal_lm_loss_sum, make_loss_batch
    from lora_engine.memory import estimate_memory
    from lora_engine.tiny import build_tiny_model

    def peak_rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    B, T = 2, 128
    ids = torch.randint(0, 4096, (B, T))
    batch = make_loss_batch({"input_ids": ids, "labels": ids}, torch.device("cpu"))
    del ids
    before = peak_rss()
    model = build_tiny_model("llama", vocab_size=4096, hidden_size=384, layers=3, heads=6, max_positions=256)
    lora = LoraConfig(rank=16, targets=("all-linear",))
    inject_lora(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    for _ in range(2):
        (causal_lm_loss_sum(model, batch) / batch.n_targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    estimate = estimate_memory(model.config, lora, "none", B, T, "fp32", attention_scores=True)
    print(json.dumps({"measured": peak_rss() - before, "estimated": estimate.lora.total}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read peak RSS")
def test_estimate_is_close_to_the_measured_peak_of_a_real_run():
    out = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = numbers["estimated"] / numbers["measured"]
    assert 0.5 < ratio < 2.0, numbers

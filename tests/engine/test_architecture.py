"""lora_engine.architecture: a model's layers from its config alone, and the targets a model gets by default."""

from __future__ import annotations

import pytest

from lora_engine.architecture import default_targets
from lora_engine.config import LoraConfig
from lora_engine.inject import inject_lora
from lora_engine.tiny import ARCHITECTURES, build_tiny_model, tiny_config

from .test_inject import ATTENTION


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_default_targets_are_the_attention_projections_and_inject(arch):
    targets = default_targets(tiny_config(arch).to_dict())
    assert targets == ATTENTION[arch]  # q_proj,v_proj for Llama-like models, c_attn for GPT-2
    report = inject_lora(build_tiny_model(arch), LoraConfig(rank=2, alpha=4, targets=targets))
    assert len(report.wrapped) == 2 * len(targets)  # two tiny layers


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "mpt", "d_model": 32, "n_layers": 1, "n_heads": 2, "vocab_size": 100}, ("Wqkv",)),
    # BERT's attention names (query, key, value) are none of the known ones: every linear layer then
    ({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 64, "vocab_size": 100}, ("all-linear",)),
])
def test_other_architectures_get_their_fused_projection_or_every_linear_layer(config, expected):
    assert default_targets(config) == expected

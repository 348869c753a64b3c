"""lora_engine.architecture: what a model's config.json says about it (its layers, how long a sequence it takes, the
targets it gets by default), without loading weights."""

from __future__ import annotations

import pytest

from lora_engine.architecture import (
    check_sequence_length,
    default_targets,
    max_positions,
    sequence_length_problem,
)
from lora_engine.config import LoraConfig
from lora_engine.errors import ConfigError
from lora_engine.inject import inject_lora
from lora_engine.tiny import ARCHITECTURES, build_tiny_model, tiny_config

from .test_inject import ATTENTION


@pytest.mark.parametrize(("config", "expected"), [
    ({"model_type": "gpt2", "n_positions": 512, "n_ctx": 512}, (512, "n_positions")),
    ({"model_type": "llama", "max_position_embeddings": 4096, "rope_theta": 1e4}, (4096, "max_position_embeddings")),
    ({"model_type": "chatglm", "seq_length": 32768}, (32768, "seq_length")),
    ({"model_type": "mpt", "max_seq_len": 2048}, (2048, "max_seq_len")),
    ({"model_type": "llava", "text_config": {"max_position_embeddings": 8192}}, (8192, "max_position_embeddings")),
    ({"model_type": "mamba"}, None),
    ({"model_type": "odd", "max_position_embeddings": None, "n_positions": True}, None),
])
def test_max_positions_reads_whichever_field_the_config_has(config, expected):
    assert max_positions(config) == expected


def test_a_sequence_length_within_the_limit_passes_and_one_beyond_it_names_the_limit():
    config = {"model_type": "gpt2", "n_positions": 512}
    assert sequence_length_problem(config, 512) is None
    assert sequence_length_problem({"model_type": "mamba"}, 100000) is None
    with pytest.raises(ConfigError) as excinfo:
        check_sequence_length(config, 2048, "tiny-gpt2")
    (problem,) = excinfo.value.problems
    assert problem.startswith("max_seq_len 2048") and "tiny-gpt2" in problem and "at most 512" in problem



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

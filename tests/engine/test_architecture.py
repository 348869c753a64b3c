"""lora_engine.architecture: what a model's config.json says about it, without loading weights."""

from __future__ import annotations

import pytest

from lora_engine.architecture import check_sequence_length, max_positions, sequence_length_problem
from lora_engine.errors import ConfigError


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

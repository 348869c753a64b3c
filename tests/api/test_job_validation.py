"""Bad POST /v1/fine_tuning/jobs bodies: a 400 naming the problem, and no job stored."""

from __future__ import annotations

import json

import pytest

from webapp.jobs.models import Job, JobEvent

from .test_fine_tuning_jobs import create


@pytest.fixture
def good(dataset, base_model) -> dict:
    return {"model": "tiny-llama", "training_file": f"file-{dataset.id.hex}"}


def assert_rejected(response, param: str | None, *words: str) -> dict:
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    for word in words:
        assert word.lower() in error["message"].lower(), error
    assert not Job.objects.exists() and not JobEvent.objects.exists()
    return error


def test_not_json(api, good):
    response = api.post("/v1/fine_tuning/jobs", "{model: tiny", content_type="application/json")
    assert_rejected(response, None, "could not parse the JSON")
    assert_rejected(api.post("/v1/fine_tuning/jobs", "[1, 2]", content_type="application/json"), None, "object")
    assert_rejected(api.post("/v1/fine_tuning/jobs", "", content_type="application/json"), None, "empty")


def test_nan_is_not_a_number(api, good):
    raw = json.dumps(good)[:-1] + ', "hyperparameters": {"learning_rate_multiplier": NaN}}'
    assert_rejected(api.post("/v1/fine_tuning/jobs", raw, content_type="application/json"), None, "NaN")


def test_a_huge_body_is_refused(api, good):
    raw = json.dumps({**good, "suffix": "x" * (6 * 1024 * 1024)})
    response = api.post("/v1/fine_tuning/jobs", raw, content_type="application/json")
    assert response.status_code == 413 and "too large" in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_unknown_model(api, good):
    assert_rejected(create(api, {**good, "model": "gpt-4o"}), "model", "gpt-4o", "does not exist")
    assert_rejected(create(api, {**good, "model": None}), "model", "required")


def test_another_users_private_model(api, good, stranger, tiny_model_dir):
    from webapp.basemodels.actions import register_local_model

    register_local_model(stranger, "their-model", str(tiny_model_dir))
    assert_rejected(create(api, {**good, "model": "their-model"}), "model", "does not exist")


def test_unknown_and_foreign_files(api, good, stranger):
    from webapp.datasets.actions import create_dataset

    from .conftest import CHAT_ROWS, jsonl

    theirs = create_dataset(stranger, "theirs.jsonl", [jsonl(CHAT_ROWS)])
    for value in ("file-" + "0" * 32, "file-abc", f"file-{theirs.id.hex}", 42):
        assert_rejected(create(api, {**good, "training_file": value}), "training_file", "POST /v1/files")
    assert_rejected(create(api, {**good, "validation_file": "file-nope"}), "validation_file")
    assert_rejected(create(api, {"model": "tiny-llama"}), "training_file")


@pytest.mark.parametrize("hyperparameters, param, words", [
    ({"n_epochs": -1}, "hyperparameters.n_epochs", "positive integer"),
    ({"n_epochs": 1.5}, "hyperparameters.n_epochs", "integer"),
    ({"batch_size": 0}, "hyperparameters.batch_size", "positive integer"),
    ({"batch_size": "big"}, "hyperparameters.batch_size", "integer"),
    ({"learning_rate_multiplier": -2}, "hyperparameters.learning_rate_multiplier", "positive"),
    ({"learning_rate_multiplier": True}, "hyperparameters.learning_rate_multiplier", "positive"),
    ({"beta": 0.1}, "hyperparameters.beta", "unknown hyperparameter"),
])
def test_bad_hyperparameters(api, good, hyperparameters, param, words):
    assert_rejected(create(api, {**good, "hyperparameters": hyperparameters}), param, words)


def test_absurd_hyperparameters_are_refused_by_the_engine_limits(api, good):
    error = assert_rejected(create(api, {**good, "hyperparameters": {"n_epochs": 10**9}}), None, "epochs")
    assert error["param"] == "hyperparameters.n_epochs"
    error = assert_rejected(create(api, {**good, "hyperparameters": {"learning_rate_multiplier": 10**6}}), None,
                            "learning rate")
    assert error["param"] == "hyperparameters.learning_rate_multiplier"


def test_method_shapes(api, good):
    assert_rejected(create(api, {**good, "method": {"type": "dpo"}}), "method.type", "supervised")
    assert_rejected(create(api, {**good, "method": "supervised"}), "method")
    both = {**good, "hyperparameters": {"n_epochs": 1},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    assert_rejected(create(api, both), "hyperparameters", "once")
    nested = {**good, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}
    assert_rejected(create(api, nested), "method.supervised.hyperparameters.n_epochs")


@pytest.mark.parametrize("lora, param, words", [
    ({"rank": 0}, "lora.rank", "rank"),
    ({"rank": 100000}, "lora.rank", "rank"),
    ({"rank": "8"}, "lora.rank", "integer"),
    ({"alpha": -1}, "lora.alpha", "alpha"),
    ({"dropout": 1.5}, "lora.dropout", "dropout"),
    ({"targets": ["not_a_module"]}, "lora.targets", "not_a_module"),
    ({"targets": [1, 2]}, "lora.targets", "list of module names"),
    ({"quantization": "fp4"}, "lora.quantization", "quantization"),
    ({"use_rslora": "yes"}, "lora.use_rslora", "true or false"),
    ({"ranks": 8}, "lora.ranks", "unknown lora setting"),
])
def test_bad_lora_settings(api, good, lora, param, words):
    assert_rejected(create(api, {**good, "lora": lora}), param, words)


def test_a_rank_larger_than_the_layer(api, good):
    # the tiny model's layers are 64 wide: rank 65 cannot fit q_proj
    assert_rejected(create(api, {**good, "lora": {"rank": 65}}), "lora.rank", "rank")


def test_a_sequence_length_beyond_the_models_positions(api, good, owner, tmp_path):
    """GPT-2 cannot take rows past n_positions: refused at launch, not an IndexError in the worker."""
    from lora_engine.tiny import save_tiny_model
    from webapp.basemodels.actions import register_local_model

    register_local_model(owner, "tiny-gpt2", str(save_tiny_model(tmp_path / "gpt2", arch="gpt2")), public=True)
    body = {**good, "model": "tiny-gpt2", "lora": {"targets": ["c_attn"]}}
    error = assert_rejected(create(api, {**body, "settings": {"max_seq_len": 2048}}), "settings.max_seq_len",
                            "max_seq_len 2048", "512 positions", "n_positions", "at most 512")
    assert "tiny-gpt2" in error["message"]
    assert create(api, {**body, "settings": {"max_seq_len": 512}}).status_code == 200


def test_other_fields(api, good):
    assert_rejected(create(api, {**good, "epochs": 3}), "epochs", "Unrecognized request argument")
    assert_rejected(create(api, {**good, "suffix": "x" * 65}), "suffix", "64")
    assert_rejected(create(api, {**good, "seed": -1}), "seed")
    assert_rejected(create(api, {**good, "seed": 1.5}), "seed")
    assert_rejected(create(api, {**good, "integrations": [{"type": "wandb"}]}), "integrations", "not supported")
    assert_rejected(create(api, {**good, "settings": {"no_such_setting": 1}}), "settings.no_such_setting",
                    "no_such_setting")
    assert_rejected(create(api, {**good, "settings": {"rank": 4}, "lora": {"rank": 8}}), "settings.rank", "twice")


def test_a_fine_tuned_model_is_not_a_base(api, good):
    error = assert_rejected(create(api, {**good, "model": "ft:tiny-llama:demo:" + "a" * 32}), "model")
    assert "base model" in error["message"]

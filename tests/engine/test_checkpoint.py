"""Checkpoints: atomic, marked complete, pruned to the last K, and refused when the settings changed."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from lora_engine import train
from lora_engine.checkpoint import (
    COMPLETE_MARKER,
    TrainerState,
    checkpoints_dir,
    config_differences,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from lora_engine.errors import CheckpointError

from ._trainer_helpers import make_model_dir, run_config, write_text_jsonl

CPU = torch.device("cpu")


class TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(2, 3))
        self.lora_B = nn.Parameter(torch.randn(3, 2))


def _stepped_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.1)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    return optimizer


def _save(tmp_path, model, optimizer, step, config=None, keep=2):
    state = TrainerState(step=step, epoch=1, batch_in_epoch=2, tokens_seen=10 * step, losses=[1.0] * step)
    return save_checkpoint(tmp_path, model, optimizer, {"kind": "cosine"}, state, config or {"a": 1}, CPU, keep=keep)


def test_save_then_load_restores_weights_optimizer_rng_and_state(tmp_path):
    model = TwoParams()
    optimizer = _stepped_optimizer(model)
    torch.manual_seed(7)
    path = _save(tmp_path, model, optimizer, step=3)
    expected_next_random = torch.rand(3)
    assert (path / COMPLETE_MARKER).is_file() and path.name == "step-000003"
    assert {"trainable.safetensors", "optimizer.pt", "rng.pt", "scheduler.json", "trainer_state.json"} <= {
        p.name for p in path.iterdir()}

    fresh = TwoParams()
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(99)
    state = load_checkpoint(path, fresh, fresh_optimizer, {"a": 1}, CPU)
    assert torch.equal(fresh.lora_A, model.lora_A) and torch.equal(fresh.lora_B, model.lora_B)
    assert not torch.equal(fresh.frozen.weight, model.frozen.weight)  # frozen weights are not in a checkpoint
    moments = fresh_optimizer.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, optimizer.state_dict()["state"][0]["exp_avg"])
    assert (state.step, state.epoch, state.batch_in_epoch, state.tokens_seen) == (3, 1, 2, 30)
    assert torch.equal(torch.rand(3), expected_next_random)


def test_latest_ignores_incomplete_checkpoints_and_keeps_the_last_k(tmp_path):
    model = TwoParams()
    optimizer = _stepped_optimizer(model)
    for step in (1, 2, 3):
        _save(tmp_path, model, optimizer, step, keep=2)
    names = sorted(p.name for p in checkpoints_dir(tmp_path).iterdir())
    assert names == ["step-000002", "step-000003"]
    crashed = checkpoints_dir(tmp_path) / "step-000009"  # a copy interrupted before its marker
    crashed.mkdir()
    (crashed / "trainable.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert latest_checkpoint(tmp_path / "nowhere") is None
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(crashed, model, optimizer, {"a": 1}, CPU)


def test_the_best_eval_checkpoint_outlives_the_newest_ones(tmp_path):
    model = TwoParams()
    optimizer = _stepped_optimizer(model)
    evals = []
    for step, eval_loss in ((1, 3.0), (2, 1.5), (3, 2.0), (4, 2.5), (5, 1.5)):
        evals.append({"step": step, "eval_loss": eval_loss, "perplexity": 1.0})
        state = TrainerState(step=step, losses=[1.0] * step, evals=list(evals))
        save_checkpoint(tmp_path, model, optimizer, {}, state, {"a": 1}, CPU, keep=1)
        names = sorted(p.name for p in checkpoints_dir(tmp_path).iterdir())
        # step 2 has the lowest eval loss from step 2 on (step 5 only ties it: the earlier one stays)
        assert names == (["step-000001"] if step == 1 else sorted({"step-000002", f"step-{step:06d}"}))
    # a lower eval loss at a step without a checkpoint (eval_every finer than save_every) does not cost the best
    # checkpoint its place
    evals.append({"step": 6, "eval_loss": 0.5, "perplexity": 1.0})
    save_checkpoint(tmp_path, model, optimizer, {}, TrainerState(step=7, evals=evals), {"a": 1}, CPU, keep=1)
    assert sorted(p.name for p in checkpoints_dir(tmp_path).iterdir()) == ["step-000002", "step-000007"]


def test_leftover_temp_directories_are_cleaned_up(tmp_path):
    model = TwoParams()
    optimizer = _stepped_optimizer(model)
    leftover = checkpoints_dir(tmp_path) / ".tmp-step-000005-1"
    leftover.mkdir(parents=True)
    _save(tmp_path, model, optimizer, step=6)
    assert not leftover.exists()
    assert latest_checkpoint(tmp_path).name == "step-000006"


def test_checkpoint_from_different_settings_is_refused(tmp_path):
    model = TwoParams()
    optimizer = _stepped_optimizer(model)
    config = {"model": "m", "lora": {"rank": 8}, "train": {"max_steps": 10, "learning_rate": 0.1}}
    path = _save(tmp_path, model, optimizer, step=1, config=config)
    longer = {**config, "train": {"max_steps": 20, "learning_rate": 0.1}}
    assert config_differences(config, longer) == []  # more steps is fine
    other_rank = {**config, "lora": {"rank": 16}}
    with pytest.raises(CheckpointError, match="lora.rank: 8 -> 16"):
        load_checkpoint(path, model, optimizer, other_rank, CPU)


def test_checkpoint_with_other_parameter_names_is_refused(tmp_path):
    model = TwoParams()
    path = _save(tmp_path, model, _stepped_optimizer(model), step=1)
    other = nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path, other, torch.optim.AdamW(other.parameters()), {"a": 1}, CPU)


def test_training_writes_checkpoints_every_n_steps_and_resumes_past_the_end(tmp_path):
    model_dir = make_model_dir(tmp_path)
    data = write_text_jsonl(tmp_path / "d.jsonl", rows=8)
    config = run_config(model_dir, data, tmp_path / "out", max_steps=4, save_every=2, keep_checkpoints=1,
                        schedule="constant", warmup_steps=0)
    first = train(config)
    assert first.checkpoint_dir.endswith("step-000004")
    assert sorted(p.name for p in checkpoints_dir(tmp_path / "out").iterdir()) == ["step-000004"]
    saved = json.loads((latest_checkpoint(tmp_path / "out") / "trainer_state.json").read_text())
    assert saved["state"]["losses"] == first.losses
    # resuming with a higher max_steps continues the same run
    more = train(replace(config, resume=True, train=replace(config.train, max_steps=6)))
    assert more.start_step == 4 and more.steps == 6 and more.losses[:4] == first.losses
    changed = replace(config, resume=True, train=replace(config.train, learning_rate=0.5))
    with pytest.raises(CheckpointError, match="learning_rate"):
        train(changed)

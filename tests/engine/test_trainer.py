"""The training loop: it learns, resumes exactly, cancels cleanly, evaluates, and fails with clear errors."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from lora_engine import RunConfig, train
from lora_engine import loss as loss_mod
from lora_engine import trainer as trainer_mod
from lora_engine.callbacks import ProgressPrinter
from lora_engine.checkpoint import COMPLETE_MARKER, latest_checkpoint
from lora_engine.errors import TrainingDiverged, TrainingOutOfMemory
from lora_engine.loss import causal_lm_loss_sum, make_loss_batch
from lora_engine.schedule import LRSchedule
from lora_engine.session import setup_session
from lora_engine.tiny import build_tiny_model

from ._trainer_helpers import SENTENCE, Recorder, make_model_dir, run_config, write_text_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return write_text_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows=16)


def test_loss_falls_on_a_learnable_task(model_dir, data_path, tmp_path):
    config = run_config(model_dir, data_path, tmp_path / "out", max_steps=30, learning_rate=1e-2, warmup_steps=3)
    recorder = Recorder()
    result = train(config, [recorder])
    assert [m.step for m in recorder.steps] == list(range(1, 31))
    assert result.losses == pytest.approx([m.loss for m in recorder.steps])
    first, last = result.losses[0], result.losses[-1]
    assert last < 0.1 * first, result.losses
    assert result.final_loss == last
    assert not result.stopped_early
    tokens = [m.tokens_seen for m in recorder.steps]
    assert tokens == sorted(tokens) and tokens[0] > 0 and result.tokens_seen == tokens[-1]


def test_outputs_are_a_peft_adapter_with_args_and_metrics(model_dir, data_path, tmp_path):
    config = run_config(model_dir, data_path, tmp_path / "out", max_steps=2)
    recorder = Recorder()
    result = train(config, [recorder])
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    assert RunConfig.from_dict(json.loads((out / "training_args.json").read_text())) == config
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["losses"] == result.losses
    assert recorder.result is result
    info = recorder.info
    assert info.total_steps == 2 and info.start_step == 0 and info.train_rows == 16
    assert result.trainable_params == info.trainable_params > 0
    assert result.total_params == info.total_params > result.trainable_params
    assert result.adapter_bytes == (out / "adapter_model.safetensors").stat().st_size
    assert result.peak_memory_bytes > 0
    assert info.estimated_peak_bytes and info.estimated_peak_bytes > 0


def test_step_zero_model_gives_the_base_models_logits(model_dir, data_path, tmp_path):
    config = run_config(model_dir, data_path, tmp_path / "out")
    session = setup_session(config.validate())
    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(3, 500, (2, 10))
    session.model.eval()
    with torch.no_grad():
        assert torch.equal(session.model(input_ids=ids).logits, base(input_ids=ids).logits)
    assert session.report.trainable_params == sum(p.numel() for p in session.params)
    assert all(not p.requires_grad for n, p in session.model.named_parameters() if "lora" not in n)


def test_resume_reproduces_the_uninterrupted_loss_curve(model_dir, data_path, tmp_path):
    straight = train(run_config(model_dir, data_path, tmp_path / "straight"))
    interrupted_config = run_config(model_dir, data_path, tmp_path / "resumed")
    first = train(interrupted_config, [Recorder(stop_after=3)])
    assert first.stopped_early and first.steps == 3
    recorder = Recorder()
    resumed = train(replace(interrupted_config, resume=True), [recorder])
    assert recorder.info.start_step == 3 and [m.step for m in recorder.steps] == [4, 5, 6]
    assert resumed.steps == 6 and resumed.start_step == 3 and not resumed.stopped_early
    assert len(resumed.losses) == 6
    assert resumed.losses == pytest.approx(straight.losses, abs=1e-5)
    assert resumed.tokens_seen == straight.tokens_seen


def test_cancellation_ends_after_the_step_with_a_complete_checkpoint(model_dir, data_path, tmp_path):
    recorder = Recorder(stop_after=2)
    result = train(run_config(model_dir, data_path, tmp_path / "out", max_steps=10), [recorder])
    assert result.stopped_early and result.steps == 2 and len(recorder.steps) == 2
    checkpoint = latest_checkpoint(tmp_path / "out")
    assert checkpoint is not None and checkpoint.name == "step-000002"
    assert (checkpoint / COMPLETE_MARKER).is_file()
    assert recorder.checkpoints[-1] == (2, checkpoint)
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_cancellation_before_the_first_step_trains_nothing(model_dir, data_path, tmp_path):
    recorder = Recorder(stop_after=0)
    result = train(run_config(model_dir, data_path, tmp_path / "out", max_steps=10), [recorder])
    assert result.stopped_early and result.steps == 0 and recorder.steps == [] and result.final_loss is None


def test_eval_runs_every_n_steps_and_reports_perplexity(model_dir, tmp_path):
    data = write_text_jsonl(tmp_path / "d.jsonl", rows=20)
    recorder = Recorder()
    result = train(run_config(model_dir, data, tmp_path / "out", max_steps=4, eval_every=2, eval_fraction=0.2),
                   [recorder])
    assert [e.step for e in recorder.evals] == [2, 4]
    for record in recorder.evals:
        assert record.perplexity == pytest.approx(math.exp(record.eval_loss))
    assert result.eval_rows == 4 and result.train_rows == 16
    assert result.final_eval_loss == recorder.evals[-1].eval_loss
    assert result.best_eval_loss == min(e.eval_loss for e in recorder.evals)


def test_the_last_step_is_evaluated_before_its_checkpoint(model_dir, tmp_path):
    # eval_every does not divide the steps: the last step is still evaluated, before its checkpoint is written,
    # so that checkpoint carries its eval loss (and can be the best one kept)
    data = write_text_jsonl(tmp_path / "d.jsonl", rows=20)
    recorder = Recorder()
    train(run_config(model_dir, data, tmp_path / "out", max_steps=5, eval_every=2, save_every=5,
                     eval_fraction=0.2), [recorder])
    assert [e.step for e in recorder.evals] == [2, 4, 5]
    state = json.loads((recorder.checkpoints[-1][1] / "trainer_state.json").read_text())["state"]
    assert recorder.checkpoints[-1][0] == 5 and [e["step"] for e in state["evals"]] == [2, 4, 5]


def test_gradient_accumulation_matches_a_bigger_batch(model_dir, data_path, tmp_path):
    big = train(run_config(model_dir, data_path, tmp_path / "big", max_steps=3, batch_size=4, grad_accum=1))
    accum = train(run_config(model_dir, data_path, tmp_path / "acc", max_steps=3, batch_size=2, grad_accum=2))
    assert accum.losses == pytest.approx(big.losses, abs=1e-5)
    assert accum.tokens_seen == big.tokens_seen


def test_gradient_checkpointing_gives_the_same_losses(model_dir, data_path, tmp_path):
    plain = train(run_config(model_dir, data_path, tmp_path / "plain", max_steps=3))
    checkpointed = train(run_config(model_dir, data_path, tmp_path / "gc", max_steps=3, gradient_checkpointing=True))
    assert checkpointed.losses == pytest.approx(plain.losses, abs=1e-5)


def test_nan_loss_raises_training_diverged(model_dir, data_path, tmp_path, monkeypatch):
    def nan_loss(model, batch):
        return causal_lm_loss_sum(model, batch) * float("nan")

    monkeypatch.setattr(trainer_mod, "causal_lm_loss_sum", nan_loss)
    with pytest.raises(TrainingDiverged, match="learning rate"):
        train(run_config(model_dir, data_path, tmp_path / "out", max_steps=3))


def test_a_sequence_length_beyond_the_models_positions_is_a_clear_error(tmp_path):
    """GPT-2 has learned positions: rows past n_positions failed mid-run with an IndexError before."""
    from lora_engine.errors import ConfigError
    from lora_engine.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "gpt2-16", arch="gpt2", hidden_size=32, layers=1, heads=4, max_positions=16)
    data_path = write_text_jsonl(tmp_path / "train.jsonl", rows=4, text=" ".join([SENTENCE] * 4))
    config = run_config(model_dir, data_path, tmp_path / "out", max_steps=1, targets=("c_attn",))
    with pytest.raises(ConfigError, match=r"max_seq_len 32 .*16 positions.*n_positions.*at most 16"):
        train(config)


def _alpaca(path, short: int, long: int):
    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi."}] * short
    rows += [{"instruction": " ".join([SENTENCE] * 6), "input": "", "output": "Yes."}] * long
    path.write_text(json.dumps(rows))
    return path


def test_rows_left_out_of_training_are_reported_before_the_first_step(model_dir, tmp_path):
    """A prompt that fills the window leaves nothing to learn: the row is dropped, and the run says so."""
    data = _alpaca(tmp_path / "alpaca.json", short=5, long=3)
    recorder = Recorder()
    train(run_config(model_dir, data, tmp_path / "out", max_steps=1), [recorder])
    info = recorder.info
    assert (info.rows, info.skipped_rows, info.train_rows, info.max_seq_len) == (8, 3, 5, 32)
    warning = info.skipped_rows_warning
    assert warning.startswith("3 of 8 rows (38%) were left out of training") and "max_seq_len 32" in warning
    assert "raise max_seq_len" in warning and "shorten those prompts" in warning
    printed = io.StringIO()  # the CLI says it too
    ProgressPrinter(printed).on_train_start(info)
    assert printed.getvalue() == f"warning: {warning}\n"


def test_a_run_whose_every_row_is_dropped_fails_saying_what_to_change(model_dir, tmp_path):
    from lora_engine.errors import DataError

    data = _alpaca(tmp_path / "alpaca.json", short=0, long=4)
    with pytest.raises(DataError, match="every row of the training file has its answer cut off by max_seq_len=32; "
                                        "raise max_seq_len or shorten the prompts"):
        train(run_config(model_dir, data, tmp_path / "out", max_steps=1))


def test_out_of_memory_names_what_to_lower(model_dir, data_path, tmp_path, monkeypatch):
    def oom(model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer_mod, "causal_lm_loss_sum", oom)
    with pytest.raises(TrainingOutOfMemory) as excinfo:
        train(run_config(model_dir, data_path, tmp_path / "out", max_steps=3))
    message = str(excinfo.value)
    assert "--batch-size" in message and "--seq-len" in message and "nf4" in message


# fp16's grad scaler starts at 2**16 and skips the first few steps while it backs off from overflows
@pytest.mark.parametrize(("precision", "steps"), [("bf16", 3), ("fp16", 8)])
def test_mixed_precision_trains(model_dir, data_path, tmp_path, precision, steps):
    result = train(run_config(model_dir, data_path, tmp_path / "out", max_steps=steps, precision=precision,
                              learning_rate=1e-2))
    assert all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0]


def test_qlora_nf4_trains_on_cpu(model_dir, data_path, tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    config = run_config(model_dir, data_path, tmp_path / "out", quant="nf4", max_steps=3, learning_rate=1e-2)
    session = setup_session(config)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in session.model.modules())
    result = train(config)
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize(("arch", "train_head"), [("llama", False), ("gpt2", False), ("gpt_neox", False),
                                                  ("llama", True)])
def test_chunked_loss_equals_transformers_loss_and_gradients(arch, train_head, monkeypatch):
    monkeypatch.setattr(loss_mod, "CHUNK_BYTES", 4 * 512 * 3)  # 3 rows per chunk: many chunk boundaries
    model = build_tiny_model(arch, hidden_size=32, heads=4)
    for name, param in model.named_parameters():  # train the blocks, freeze embeddings and head as LoRA does
        param.requires_grad_(".h." in name or ".layers." in name or (train_head and "lm_head" in name))
    ids = torch.randint(3, 500, (2, 12))
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[0, :5] = -100  # a prompt
    mask[1, 9:], labels[1, 9:] = 0, -100  # padding
    reference = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    batch = make_loss_batch({"input_ids": ids, "labels": labels, "attention_mask": mask}, torch.device("cpu"))
    assert batch.n_targets == int((labels[:, 1:] != -100).sum())
    ours = causal_lm_loss_sum(model, batch) / batch.n_targets
    ours.backward()
    assert ours.item() == pytest.approx(reference.item(), abs=1e-5)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, expected[name], atol=1e-6, rtol=1e-4)


def test_loss_chunks_are_capped_in_rows_and_in_bytes():
    # a small vocabulary: the row cap, not one byte-sized chunk of every row (whose logits and log-softmax
    # were the largest transient of a step)
    assert loss_mod.logits_chunk_rows(4096, 1020) == loss_mod.CHUNK_ROWS
    # a large vocabulary: the byte cap
    assert loss_mod.logits_chunk_rows(262_144, 1020) == loss_mod.CHUNK_BYTES // (4 * 262_144) < loss_mod.CHUNK_ROWS
    assert loss_mod.logits_chunk_rows(4096, 7) == 7


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-5), ("bf16", 2e-2)])
@pytest.mark.parametrize("rows", [7, 300, 490])
def test_a_padded_last_chunk_gives_the_loss_and_gradient_of_its_rows_only(rows, precision, tolerance):
    # 4096-token vocabulary: 256-row chunks, the last one padded with zero rows to a multiple of ROW_BUCKET;
    # a padding row counted in the loss or the gradient would show as a larger loss or a wrong gradient
    generator = torch.Generator().manual_seed(rows)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    head = nn.Linear(64, 4096, bias=False).to(dtype).requires_grad_(False)
    hidden = torch.randn(rows, 64, generator=generator).to(dtype)
    targets = torch.randint(0, 4096, (rows,), generator=generator)
    results = []
    for chunked in (True, False):
        h = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if chunked:
                total = loss_mod.head_cross_entropy_sum(h, head, targets)
            else:
                total = F.cross_entropy(head(h).float(), targets, reduction="sum")
        total.backward()
        results.append((total.detach(), h.grad.float()))
    (ours, our_grad), (reference, reference_grad) = results
    torch.testing.assert_close(ours, reference, atol=tolerance * rows, rtol=tolerance)
    torch.testing.assert_close(our_grad, reference_grad, atol=tolerance, rtol=tolerance)


class _MatmulRows(TorchDispatchMode):
    """Records the row count of every matrix product run inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.rows.add(args[-2].shape[0])
        return func(*args, **(kwargs or {}))


def test_the_loss_matmuls_take_a_few_row_counts_whatever_the_labelled_rows():
    # oneDNN (bf16 on a CPU) builds and keeps a kernel per matmul shape: a new row count every step made the
    # process grow by ~2 MiB a step for the head's matmuls alone
    head = nn.Linear(64, 4096, bias=False).to(torch.bfloat16).requires_grad_(False)
    recorder = _MatmulRows()
    for rows in range(200, 520, 7):
        hidden = torch.randn(rows, 64, dtype=torch.bfloat16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16), recorder:
            loss_mod.head_cross_entropy_sum(hidden, head, torch.randint(0, 4096, (rows,))).backward()
    assert recorder.rows <= set(range(loss_mod.ROW_BUCKET, loss_mod.CHUNK_ROWS + 1, loss_mod.ROW_BUCKET))


def test_schedule_warms_up_then_decays():
    cosine = LRSchedule(1.0, total_steps=10, warmup_steps=2, kind="cosine")
    assert [cosine.get_lr(s) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert cosine.get_lr(6) == pytest.approx(0.5)
    assert cosine.get_lr(10) == pytest.approx(0.0)
    linear = LRSchedule(1.0, total_steps=10, warmup_steps=0, kind="linear")
    assert [linear.get_lr(s) for s in (0, 5)] == pytest.approx([1.0, 0.5])
    assert LRSchedule(0.3, 10, 0, "constant").get_lr(9) == 0.3
    lrs = [cosine.get_lr(s) for s in range(2, 11)]
    assert lrs == sorted(lrs, reverse=True)


class _Ballast(Recorder):
    """Touches 64 MB once training has started (after the model loaded) and keeps it to the end."""

    def on_train_start(self, info) -> None:
        super().on_train_start(info)
        self.ballast = torch.ones(64 << 20, dtype=torch.uint8)


def test_cpu_memory_is_growth_over_the_rss_before_the_model_loaded(model_dir, data_path, tmp_path):
    from lora_engine.device import memory_snapshot

    absolute_before, _ = memory_snapshot(torch.device("cpu"))  # the runtime: Python, torch, transformers
    recorder = _Ballast()
    result = train(run_config(model_dir, data_path, tmp_path / "out", max_steps=3), callbacks=[recorder])

    assert absolute_before > 100 << 20  # what the chart used to add to every point
    for metrics in recorder.steps:
        assert 64 << 20 <= metrics.memory_allocated_bytes <= metrics.memory_peak_bytes  # the ballast grew it ...
        assert metrics.memory_peak_bytes < absolute_before  # ... but the runtime underneath is not counted
    assert 64 << 20 <= result.peak_memory_bytes < absolute_before

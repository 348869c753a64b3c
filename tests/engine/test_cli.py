"""``python -m lora_engine``: train and validate end to end, estimate, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_engine.__main__ import build_parser, main

from ._trainer_helpers import make_model_dir, write_text_jsonl

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lora_engine", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (fast); :func:`run_cli` covers ``python -m lora_engine`` itself."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models"))


def test_train_end_to_end_then_resume_inspect_and_merge(model_dir, tmp_path, capsys):
    data = write_text_jsonl(tmp_path / "train.jsonl", rows=12)
    out_dir, metrics = tmp_path / "adapter", tmp_path / "metrics.jsonl"
    args = ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out_dir), "--rank", "4",
            "--alpha", "8", "--targets", "all-linear", "--batch-size", "4", "--seq-len", "32", "--lr", "1e-2",
            "--eval-fraction", "0.25", "--save-every", "2", "--seed", "5", "--metrics-jsonl", str(metrics)]
    done = run_cli(*args, "--max-steps", "4")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 4 and summary["stopped_early"] is False
    assert (out_dir / "adapter_model.safetensors").is_file() and (out_dir / "adapter_config.json").is_file()
    training_args = json.loads((out_dir / "training_args.json").read_text())
    assert training_args["lora"]["rank"] == 4 and training_args["lora"]["targets"] == ["all-linear"]
    assert training_args["train"]["max_steps"] == 4 and training_args["data"]["eval_fraction"] == 0.25
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r for r in records if r["split"] == "eval"][-1]["step"] == 4
    assert "4/4" in done.stderr  # the progress line

    code, out, err = run_main(capsys, *args, "--max-steps", "6", "--resume")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["start_step"] == 4 and summary["steps"] == 6

    code, out, err = run_main(capsys, "inspect", str(out_dir))
    assert code == 0, err
    assert json.loads(out)["rank"] == 4
    code, _, err = run_main(capsys, "merge", "--model", str(model_dir), "--adapter", str(out_dir), "--out",
                            str(tmp_path / "merged"))
    assert code == 0, err
    assert (tmp_path / "merged" / "config.json").is_file()


def test_validate_reports_problems_by_line(model_dir, tmp_path, capsys):
    good = write_text_jsonl(tmp_path / "good.jsonl", rows=3)
    done = run_cli("validate", "--data", str(good), "--model", str(model_dir))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["rows"] == 3 and report["ok"] is True
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    code, _, err = run_main(capsys, "validate", "--data", str(bad))
    assert code == 1
    assert "line 2" in err


def test_engine_errors_are_one_line_with_exit_status_2(model_dir, tmp_path, capsys):
    data = write_text_jsonl(tmp_path / "train.jsonl", rows=4)
    done = run_cli("train", "--model", str(tmp_path / "no-such-model"), "--data", str(data), "--out",
                   str(tmp_path / "out"), "--rank", "8", "--alpha", "16", "--max-steps", "1")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: ") and "Traceback" not in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.startswith("error: ")]) == 1
    code, _, err = run_main(capsys, "train", "--model", str(model_dir), "--data", str(data), "--out",
                            str(tmp_path / "out"), "--rank", "0", "--alpha", "16")
    assert code == 2 and err.startswith("error: invalid configuration: rank must be an integer")
    code, _, err = run_main(capsys, "train", "--model", str(model_dir), "--data", str(tmp_path / "missing.jsonl"),
                            "--out", str(tmp_path / "out"), "--max-steps", "1")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_estimate_prints_full_lora_and_qlora(model_dir, capsys):
    code, out, err = run_main(capsys, "estimate", "--model", str(model_dir), "--rank", "8", "--quant", "nf4",
                              "--batch-size", "2", "--seq-len", "64", "--json")
    assert code == 0, err
    estimate = json.loads(out)
    assert estimate["qlora"]["total"] < estimate["lora"]["total"] < estimate["full"]["total"]
    assert estimate["batch_size"] == 2 and estimate["seq_len"] == 64
    code, out, _ = run_main(capsys, "estimate", "--model", str(model_dir), "--rank", "8")
    assert code == 0 and "qlora" in out and "MiB" in out
    code, _, err = run_main(capsys, "estimate", "--model", str(model_dir.parent / "nothing"))
    assert code == 2 and "error: " in err


def test_parser_keeps_the_documented_options():
    parser = build_parser()
    args = parser.parse_args(["train", "--model", "m", "--data", "d", "--out", "o", "--rank", "8", "--alpha", "16",
                              "--targets", "q_proj,v_proj", "--quant", "nf4", "--epochs", "2", "--batch-size", "2",
                              "--grad-accum", "4", "--seq-len", "128", "--lr", "1e-4", "--precision", "bf16",
                              "--eval-fraction", "0.1", "--save-every", "10", "--resume", "--seed", "1",
                              "--metrics-jsonl", "m.jsonl"])
    assert (args.quant, args.epochs, args.grad_accum, args.precision, args.resume) == ("nf4", 2.0, 4, "bf16", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--model", "m", "--data", "d", "--out", "o", "--max-steps", "3", "--epochs", "1"])
    assert parser.parse_args(["inspect", "somewhere"]).adapter_dir == "somewhere"
    assert parser.parse_args(["merge", "--model", "m", "--adapter", "a", "--out", "o"]).command == "merge"

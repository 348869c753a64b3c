"""Command line: ``python -m lora_engine train|merge|estimate|inspect|validate``.

Every engine error prints one line (``error: <what went wrong and what to do>``) and exits with status 2;
``validate`` exits 1 when the file has problems. Results go to stdout as JSON; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .config import DataConfig, LoraConfig, QuantConfig, RunConfig, TrainConfig, parse_targets
from .errors import LoraEngineError, ModelLoadError

EXIT_ENGINE_ERROR = 2


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    t, d = TrainConfig(), DataConfig()
    p = sub.add_parser("train", help="fine-tune a model with LoRA/QLoRA and save the adapter")
    p.add_argument("--model", required=True, help="local model directory or hub id")
    p.add_argument("--data", required=True, help="JSONL, JSON, CSV, Parquet or .txt data file")
    p.add_argument("--out", required=True, help="output directory (adapter, checkpoints, metrics)")
    p.add_argument("--rank", type=int, default=LoraConfig.rank)
    p.add_argument("--alpha", type=float, default=LoraConfig.alpha)
    p.add_argument("--dropout", type=float, default=LoraConfig.dropout)
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module names, or all-linear")
    p.add_argument("--dora", action="store_true", help="weight-decomposed LoRA")
    p.add_argument("--rslora", action="store_true", help="rank-stabilised scaling alpha/sqrt(r)")
    p.add_argument("--quant", choices=("none", "nf4", "int8"), default="none")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, default=None)
    steps.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--grad-accum", type=int, default=t.grad_accum)
    p.add_argument("--seq-len", type=int, default=d.max_seq_len)
    p.add_argument("--lr", type=float, default=t.learning_rate)
    p.add_argument("--weight-decay", type=float, default=t.weight_decay)
    p.add_argument("--schedule", choices=("cosine", "linear", "constant"), default=t.schedule)
    p.add_argument("--warmup-steps", type=int, default=t.warmup_steps)
    p.add_argument("--max-grad-norm", type=float, default=t.max_grad_norm)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=t.precision)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--format", default=d.format, help="data format (default: detect)")
    p.add_argument("--train-on-all", action="store_true", help="compute the loss on prompt tokens too")
    p.add_argument("--packing", action="store_true")
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction)
    p.add_argument("--eval-data", default=None, help="a separate evaluation file")
    p.add_argument("--eval-every", type=int, default=t.eval_every)
    p.add_argument("--save-every", type=int, default=t.save_every)
    p.add_argument("--keep-checkpoints", type=int, default=t.keep_checkpoints)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--device", default="auto")
    p.add_argument("--metrics-jsonl", default=None, help="append one JSON line per step to this file")


def _run_config(args: argparse.Namespace) -> RunConfig:
    epochs = args.epochs if args.epochs is not None else TrainConfig.epochs
    return RunConfig(
        model=args.model, output_dir=args.out, resume=args.resume, device=args.device,
        lora=LoraConfig(rank=args.rank, alpha=args.alpha, dropout=args.dropout, targets=parse_targets(args.targets),
                        use_dora=args.dora, use_rslora=args.rslora),
        quant=QuantConfig(mode=args.quant),
        data=DataConfig(path=args.data, format=args.format, max_seq_len=args.seq_len, train_on_all=args.train_on_all,
                        packing=args.packing, eval_fraction=args.eval_fraction, eval_path=args.eval_data),
        train=TrainConfig(
            learning_rate=args.lr, weight_decay=args.weight_decay, schedule=args.schedule,
            warmup_steps=args.warmup_steps, epochs=epochs, max_steps=args.max_steps, batch_size=args.batch_size,
            grad_accum=args.grad_accum, max_grad_norm=args.max_grad_norm, precision=args.precision, seed=args.seed,
            eval_every=args.eval_every, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
            gradient_checkpointing=args.gradient_checkpointing,
        ),
    )


def _print_json(obj: Any) -> None:
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)
    print(json.dumps(obj, indent=2, default=str))


def cmd_train(args: argparse.Namespace) -> int:
    from transformers.utils import logging as hf_logging

    from .callbacks import JsonlMetricsWriter, ProgressPrinter
    from .trainer import train

    hf_logging.disable_progress_bar()  # our own progress line is the only one on the terminal
    callbacks: list[Any] = [ProgressPrinter(sys.stderr)]
    if args.metrics_jsonl:
        callbacks.append(JsonlMetricsWriter(args.metrics_jsonl))
    result = train(_run_config(args), callbacks)
    summary = {k: v for k, v in result.to_dict().items() if k not in ("losses", "evals")}
    _print_json(summary)
    print(f"adapter saved to {result.adapter_dir} after {result.steps} steps", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_adapter

    _print_json(merge_adapter(args.model, args.adapter, args.out))
    return 0


def _model_config(model: str) -> dict[str, Any]:
    path = Path(model)
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"{path} has no config.json; pass a Hugging Face model directory")
        return json.loads(config_file.read_text())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"model directory {model!r} does not exist; pass a Hugging Face model directory")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model).to_dict()
    except Exception as exc:  # transformers raises OSError/ValueError/HTTP errors here
        raise ModelLoadError(f"cannot read the config of {model!r} ({exc}); pass a local model directory") from exc


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def cmd_estimate(args: argparse.Namespace) -> int:
    from .memory import estimate_memory

    lora = LoraConfig(rank=args.rank, targets=parse_targets(args.targets))
    problems = lora.problems()
    if problems:
        raise LoraEngineError("; ".join(problems))
    try:
        est = estimate_memory(_model_config(args.model), lora, args.quant, args.batch_size, args.seq_len,
                              args.precision, args.gradient_checkpointing)
    except (TypeError, ValueError, KeyError) as exc:
        raise LoraEngineError(f"cannot estimate memory from this model's config.json ({exc!r})") from exc
    if args.json:
        _print_json(est.to_dict())
        return 0
    print(f"parameters: {est.total_params:,} total, {est.lora_trainable_params:,} trainable with LoRA r={args.rank}")
    print(f"{'':8}{'weights':>12}{'grads':>12}{'optimizer':>12}{'activations':>13}{'total':>12}")
    for name in ("full", "lora", "qlora"):
        b = getattr(est, name)
        cells = (b.weights, b.gradients, b.optimizer, b.activations, b.total)
        print(f"{name:8}" + "".join(f"{_human_bytes(c):>12}" for c in cells[:3])
              + f"{_human_bytes(cells[3]):>13}{_human_bytes(cells[4]):>12}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .analysis import adapter_spectrum

    _print_json(adapter_spectrum(args.adapter_dir))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .data import validate_file

    tokenizer = None
    if args.model:
        from .quant import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    report = validate_file(args.data, format=args.format, tokenizer=tokenizer, max_seq_len=args.seq_len)
    _print_json(report.to_dict())
    if not report.ok:
        for problem in report.problems[:20]:
            print(f"problem: {problem}", file=sys.stderr)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lora_engine", description="LoRA/QLoRA fine-tuning engine")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parser(sub)
    p = sub.add_parser("merge", help="merge an adapter into a copy of the base model")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("estimate", help="predict peak training memory")
    p.add_argument("--model", required=True)
    p.add_argument("--rank", type=int, default=LoraConfig.rank)
    p.add_argument("--targets", default="q_proj,v_proj")
    p.add_argument("--quant", choices=("none", "nf4", "int8"), default="none")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--seq-len", type=int, default=DataConfig.max_seq_len)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("inspect", help="ranks, parameters and per-layer spectrum of an adapter")
    p.add_argument("adapter_dir")
    p = sub.add_parser("validate", help="check a data file and report problems by line")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default=None, help="tokenize with this model's tokenizer for token statistics")
    p.add_argument("--format", default="auto")
    p.add_argument("--seq-len", type=int, default=None)
    return parser


COMMANDS = {"train": cmd_train, "merge": cmd_merge, "estimate": cmd_estimate, "inspect": cmd_inspect,
            "validate": cmd_validate}


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except LoraEngineError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, whatever the message holds
        return EXIT_ENGINE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""Side-by-side training benchmark: this engine's trainer against peft + a plain torch loop.

    python -m lora_engine.bench [--device auto|cpu|cuda] [--precision fp32|bf16] [--rank 8]
                                [--targets q_proj,v_proj|all-linear] [--quant none|nf4] [--seq-len 256]
                                [--steps 20] [--threads N] [--gradient-checkpointing] [--markdown FILE]
                                [--data-file alpaca.json]

Both sides train the same random-init Llama (a few million parameters, built with :mod:`lora_engine.tiny`)
on the same batches in the same order (the engine's data pipeline and
:class:`~lora_engine.session.MicroBatchStream` feed both), with the same rank, alpha, targets, AdamW
settings, gradient clipping, autocast precision, device and torch thread count (``--threads``, set in
both worker processes). The engine side is the public ``train()``; the peft side is ``get_peft_model`` and a
ten-line loop using the model's own loss.

Two kinds of data:

- by default, random sentences packed into full rows of ``--seq-len`` tokens, every token a target: no padding
  and no prompt, so both sides do exactly the same work (the kernels compared);
- ``--data-file``: a real instruction data set (Alpaca, ShareGPT, …, as users upload it), one example per row,
  the prompt masked, micro-batches right-padded to their longest row as Hugging Face's collators pad them (what
  the peft side trains on, like LLaMA-Factory's loop); the engine lays them end to end instead
  (:mod:`lora_engine.padding_free`) and computes the head only on the answer tokens. The tiny tokenizer is then
  trained on the file's own texts, so an example has about as many tokens as a real tokenizer would give it.

Each side runs in a fresh interpreter, so one side's peak resident memory cannot contaminate the other's.
Throughput counts non-padding tokens over the steps after the first ``--warmup`` ones.

Model FLOPs per token (the usual convention, adapted to LoRA where frozen weights need no weight gradients):

    4·N_frozen + 6·N_lora + 12·L·T·d
    # forward 2N, backward input-gradients 2N; adapters also get weight gradients (2N more);
    # attention scores and values: 4·T·d per layer and token forward, twice that backward
    # (T: the row length; with --data-file the examples' mean length, as attention stays within an example)

MFU divides achieved model FLOP/s by a measured matmul peak (a large fp32 matmul, and the bf16 one when
training in bf16), so it is honest on whatever CPU or GPU runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .bench_report import format_markdown, machine_description

SIDES = ("engine", "peft")
_SENTENCES = [
    "Low-rank adaptation freezes the pretrained weights and learns a small update.",
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is two plus two? Answer: four.",
    "Instruction: translate to French. Input: hello. Output: bonjour.",
    "def add(a, b):\n    return a + b\n",
]


@dataclass(frozen=True)
class BenchSpec:
    """One benchmark setting (identical for both sides)."""

    precision: str = "fp32"
    rank: int = 8
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    quant: str = "none"
    seq_len: int = 256
    steps: int = 20
    warmup: int = 3
    batch_size: int = 4
    learning_rate: float = 2e-4
    hidden_size: int = 256
    layers: int = 4
    heads: int = 8
    intermediate_size: int = 688
    vocab_size: int = 4096
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    """torch intra-op threads in both sides' processes (0: torch's default)."""
    gradient_checkpointing: bool = False
    data_file: str = ""
    """An instruction data set to train on (any format the engine reads); empty: packed random sentences."""
    model_dir: str = ""
    data_path: str = ""
    work_dir: str = ""


@dataclass
class SideResult:
    """What one side measured."""

    side: str
    tokens_per_second: float
    peak_memory_bytes: int
    baseline_memory_bytes: int
    """Resident memory after imports, before the model loads."""
    timed_tokens: int
    timed_seconds: float
    first_loss: float
    final_loss: float
    trainable_params: int
    mfu: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _import_libraries() -> None:
    """Import what both sides load anyway, so "baseline" memory covers the libraries on both sides alike."""
    import transformers  # noqa: F401

    from . import data, device, quant, session  # noqa: F401


def _start_measuring(device: str) -> int:
    """Start both sides' memory window alike, after their imports: the free heap handed back and the peak reset
    (as the engine's ``train()`` does again at its start); returns the baseline, the resident memory now."""
    from .device import reset_peak_memory, resolve_device

    reset_peak_memory(resolve_device(device))
    return _memory(device)[0]


def _memory(device: str) -> tuple[int, int]:
    """(now, peak) bytes: resident set size on CPU, the allocator's numbers on CUDA."""
    from .device import memory_snapshot, resolve_device

    return memory_snapshot(resolve_device(device))


class _StepClock:
    """Wall time and cumulative tokens at the start and after each optimizer step (index i = after step i)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []

    def start(self) -> None:
        from .device import synchronize

        synchronize(self.device)
        self.times, self.tokens = [time.perf_counter()], [0]

    def on_train_start(self, info: Any) -> None:  # the trainer's callback hook, after model and data are ready
        self.start()

    def record(self, tokens_seen: int, loss: float) -> None:  # ``loss`` is a Python float: the step is done
        self.times.append(time.perf_counter())
        self.tokens.append(tokens_seen)
        self.losses.append(loss)

    def on_step(self, metrics: Any) -> None:  # the trainer's callback hook
        self.record(metrics.tokens_seen, metrics.loss)

    def result(self, side: str, warmup: int, trainable: int, baseline: int) -> SideResult:
        start = min(warmup, len(self.times) - 2)  # time steps warmup+1 .. last
        tokens = self.tokens[-1] - self.tokens[start]
        seconds = self.times[-1] - self.times[start]
        peak = _memory(str(self.device))[1]
        return SideResult(side=side, tokens_per_second=tokens / seconds, peak_memory_bytes=peak,
                          baseline_memory_bytes=baseline, timed_tokens=tokens, timed_seconds=seconds,
                          first_loss=self.losses[0], final_loss=self.losses[-1], trainable_params=trainable)


def _run_config(spec: BenchSpec):
    from .config import DataConfig, LoraConfig, QuantConfig, RunConfig, TrainConfig

    return RunConfig(
        model=spec.model_dir, output_dir=str(Path(spec.work_dir) / "engine-out"), device=spec.device,
        lora=LoraConfig(rank=spec.rank, alpha=2.0 * spec.rank, targets=spec.targets),
        quant=QuantConfig(mode=spec.quant, compute_dtype=spec.precision),
        data=DataConfig(path=spec.data_path, format="auto" if spec.data_file else "text", max_seq_len=spec.seq_len,
                        packing=not spec.data_file),
        train=TrainConfig(learning_rate=spec.learning_rate, schedule="constant", max_steps=spec.steps,
                          batch_size=spec.batch_size, precision=spec.precision, seed=spec.seed, max_grad_norm=1.0,
                          gradient_checkpointing=spec.gradient_checkpointing),
    ).validate()


def run_engine_side(spec: BenchSpec) -> SideResult:
    """Train with this engine's public ``train()`` (call in a fresh process for a clean peak-memory number)."""
    from .device import resolve_device
    from .trainer import train

    _import_libraries()
    baseline = _start_measuring(spec.device)
    clock = _StepClock(resolve_device(spec.device))
    result = train(_run_config(spec), [clock])
    return clock.result("engine", spec.warmup, result.trainable_params, baseline)


def _peft_model(spec: BenchSpec, device: torch.device):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .device import amp_dtype

    kwargs: dict[str, Any] = {"dtype": amp_dtype(spec.precision)}  # the engine loads the base in this dtype too
    if spec.quant == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=amp_dtype(spec.precision))
        kwargs["device_map"] = {"": str(device)}
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, **kwargs)
    if spec.quant == "none":  # a 4-bit model is placed by its device_map (transformers refuses .to for it)
        model = model.to(device)
    model.config.use_cache = False
    if spec.quant == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing)
    elif spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    all_linear = [t.lower() for t in spec.targets] == ["all-linear"]  # peft takes this one as a string
    config = PeftLoraConfig(r=spec.rank, lora_alpha=2.0 * spec.rank, lora_dropout=0.0,
                            target_modules="all-linear" if all_linear else list(spec.targets))
    return get_peft_model(model, config)


def run_peft_side(spec: BenchSpec) -> SideResult:
    """Train with peft and a plain torch loop over the same batches (the reference side)."""
    from .data import prepare_data
    from .device import autocast
    from .quant import load_tokenizer
    from .session import MicroBatchStream

    _import_libraries()
    import peft  # noqa: F401

    from .device import resolve_device

    baseline = _start_measuring(spec.device)
    device = resolve_device(spec.device)
    config = _run_config(spec)
    torch.manual_seed(spec.seed)
    tokenizer = load_tokenizer(spec.model_dir)
    data = prepare_data(config.data, tokenizer, spec.seed)
    model = _peft_model(spec, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    stream = MicroBatchStream(data.train, spec.batch_size, tokenizer.pad_token_id, spec.seed)
    clock, tokens_seen = _StepClock(device), 0
    clock.start()
    for _ in range(spec.steps):
        batch = {name: tensor.to(device) for name, tensor in stream.next().items()}
        with autocast(device, spec.precision):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(batch["attention_mask"].sum())
        clock.record(tokens_seen, float(loss.detach()))
    return clock.result("peft", spec.warmup, sum(p.numel() for p in params), baseline)


def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 1.0,
                        device: torch.device | None = None) -> float:
    """FLOP/s of a large square matmul on ``device`` (CPU by default), best of repeated runs for about ``seconds``."""
    from .device import synchronize

    device = device or torch.device("cpu")
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.mm(a, b)  # warm-up
    synchronize(device)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def flops_per_token(spec: BenchSpec, trainable_params: int, row_tokens: float | None = None) -> float:
    """Model FLOPs per trained token (see the module docstring); ``row_tokens``: T (default ``spec.seq_len``)."""
    from transformers import AutoModelForCausalLM

    from .tiny import tiny_config

    config = tiny_config("llama", vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, layers=spec.layers,
                         heads=spec.heads, intermediate_size=spec.intermediate_size, max_positions=spec.seq_len)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    frozen = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    row = spec.seq_len if row_tokens is None else row_tokens
    return 4.0 * frozen + 6.0 * trainable_params + 12.0 * spec.layers * row * spec.hidden_size


def _texts(value: Any) -> list[str]:
    """Every string inside a parsed JSON value."""
    if isinstance(value, str):
        return [value]
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return [text for item in values for text in _texts(item)]


def _data_file_texts(path: str) -> list[str]:
    """The texts of a JSON or JSONL data set (the tokenizer's corpus)."""
    raw = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json":
        return _texts(json.loads(raw))
    return [text for line in raw.splitlines() if line.strip() for text in _texts(json.loads(line))]


def mean_example_tokens(spec: BenchSpec) -> float:
    """Mean tokens per training example of ``spec``'s data (prepared as both sides prepare it)."""
    from .data import prepare_data
    from .quant import load_tokenizer

    data = prepare_data(_run_config(spec).data, load_tokenizer(spec.model_dir), spec.seed)
    return sum(len(e.input_ids) for e in data.train) / len(data.train)


def prepare_inputs(spec: BenchSpec, work_dir: Path) -> BenchSpec:
    """Save the model and a text data file under ``work_dir``; return the spec pointing at them."""
    import random
    from dataclasses import replace

    from .tiny import save_tiny_model

    corpus = _data_file_texts(spec.data_file) if spec.data_file else ()
    model_dir = save_tiny_model(work_dir / "model", arch="llama", seed=spec.seed, hidden_size=spec.hidden_size,
                                layers=spec.layers, heads=spec.heads, intermediate_size=spec.intermediate_size,
                                vocab_size=spec.vocab_size, max_positions=max(512, spec.seq_len), corpus=corpus)
    if spec.data_file:
        return replace(spec, model_dir=str(model_dir), data_path=str(Path(spec.data_file).resolve()),
                       work_dir=str(work_dir))
    rng = random.Random(spec.seed)
    rows = max(64, spec.steps * spec.batch_size * spec.seq_len // 40)  # ~40+ tokens a row: several epochs' worth
    data_path = work_dir / "data.jsonl"
    with open(data_path, "w") as handle:
        for _ in range(rows):
            handle.write(json.dumps({"text": " ".join(rng.choices(_SENTENCES, k=3))}) + "\n")
    return replace(spec, model_dir=str(model_dir), data_path=str(data_path), work_dir=str(work_dir))


def _run_side(side: str, spec: BenchSpec) -> SideResult:
    spec_json = json.dumps(asdict(spec))
    process = subprocess.run([sys.executable, "-m", "lora_engine.bench", "--worker", side, "--spec", spec_json],
                             capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if process.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{process.stderr[-3000:]}")
    data = json.loads(process.stdout.strip().splitlines()[-1])
    return SideResult(**data)


def run_benchmark(spec: BenchSpec, repeats: int = 1) -> dict[str, Any]:
    """Prepare inputs, run both sides in fresh processes, and compute ratios and MFU.

    Args:
        spec: the setting; model/data paths are filled in here.
        repeats: run the sides alternately this many times and keep each side's fastest run (on a shared
            machine the load changes from one run to the next).

    Returns:
        A JSON-ready dict: ``spec``, ``machine``, ``peak_flops``, ``flops_per_token``, ``sides`` and ``ratios``
        (engine ÷ peft).
    """
    from .device import resolve_device

    device = resolve_device(spec.device)

    def measure_peaks() -> dict[str, float]:
        peaks = {"fp32": measure_matmul_peak(torch.float32, device=device)}
        if spec.precision == "bf16":  # a CPU without bf16 instructions emulates it slowly: a smaller matmul will do
            peaks["bf16"] = measure_matmul_peak(torch.bfloat16, size=2048 if device.type == "cuda" else 1024,
                                                device=device)
        return peaks

    before = measure_peaks()
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        spec = prepare_inputs(spec, Path(tmp))
        row_tokens = mean_example_tokens(spec) if spec.data_file else None
        runs: dict[str, list[SideResult]] = {side: [] for side in SIDES}
        for _ in range(max(1, repeats)):
            for side in SIDES:
                runs[side].append(_run_side(side, spec))
    # the best of a measurement before and one after the runs: a peak measured low while someone else used the
    # machine would overstate the MFU (one row read 71 GFLOP/s where the others of the same run read 80-91)
    after = measure_peaks()
    peak = {dtype: max(value, after[dtype]) for dtype, value in before.items()}
    sides = {side: max(results, key=lambda r: r.tokens_per_second) for side, results in runs.items()}
    for side, results in runs.items():
        sides[side].extra["tokens_per_second_all_runs"] = [r.tokens_per_second for r in results]
    per_token = flops_per_token(spec, sides["engine"].trainable_params, row_tokens)
    for result in sides.values():
        result.mfu = result.tokens_per_second * per_token / peak["fp32"]
        if "bf16" in peak:
            result.extra["mfu_vs_bf16_peak"] = result.tokens_per_second * per_token / peak["bf16"]
    engine, ref = sides["engine"], sides["peft"]
    ratios = {
        "tokens_per_second": engine.tokens_per_second / ref.tokens_per_second,
        "peak_memory": engine.peak_memory_bytes / ref.peak_memory_bytes,
        "memory_growth": (engine.peak_memory_bytes - engine.baseline_memory_bytes)
        / max(1, ref.peak_memory_bytes - ref.baseline_memory_bytes),
    }
    spec_dict = {k: v for k, v in asdict(spec).items() if k not in ("model_dir", "data_path", "work_dir")}
    spec_dict["data_file"] = Path(spec.data_file).name if spec.data_file else ""
    spec_dict["mean_example_tokens"] = row_tokens
    return {"spec": spec_dict, "machine": machine_description(), "peak_flops": peak, "flops_per_token": per_token,
            "sides": {name: asdict(r) for name, r in sides.items()}, "ratios": ratios}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = BenchSpec()
    p = argparse.ArgumentParser(prog="python -m lora_engine.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N (lora_engine.device)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads in both sides' processes and the peak measurement (0: torch's default)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=d.precision)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--targets", default=",".join(d.targets), help="comma-separated module names, or all-linear")
    p.add_argument("--quant", choices=("none", "nf4"), default=d.quant)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--warmup", type=int, default=d.warmup, help="steps left out of the timing")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--intermediate-size", type=int, default=None,
                   help="MLP width (default: 2.6875 × hidden size, which gives 688 at 256, 1376 at 512)")
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--data-file", default="", help="an instruction data set (JSON/JSONL) instead of packed rows")
    p.add_argument("--repeats", type=int, default=1, help="alternate the sides this many times; keep the fastest")
    p.add_argument("--markdown", default=None, help="also write the results as Markdown to this file")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--worker``, one side of it); return the exit status."""
    import warnings

    args = _parse_args(argv)
    if args.worker:
        warnings.simplefilter("ignore")
        spec_data = json.loads(args.spec)
        spec = BenchSpec(**{**spec_data, "targets": tuple(spec_data["targets"])})
        if spec.threads:
            torch.set_num_threads(spec.threads)
        result = run_engine_side(spec) if args.worker == "engine" else run_peft_side(spec)
        print(json.dumps(asdict(result)))
        return 0
    from .config import parse_targets
    from .device import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    intermediate = args.intermediate_size or round(args.hidden_size * 2.6875 / 8) * 8
    spec = BenchSpec(precision=args.precision, rank=args.rank, targets=parse_targets(args.targets), quant=args.quant,
                     seq_len=args.seq_len, steps=args.steps, warmup=min(args.warmup, max(0, args.steps - 2)),
                     batch_size=args.batch_size, hidden_size=args.hidden_size, layers=args.layers,
                     heads=args.heads, intermediate_size=intermediate, threads=args.threads,
                     device=str(resolve_device(args.device)), gradient_checkpointing=args.gradient_checkpointing,
                     data_file=args.data_file)
    report = run_benchmark(spec, repeats=args.repeats)
    text = format_markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

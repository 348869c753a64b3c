"""The benchmark's report: the machine it ran on and the Markdown section ``python -m lora_engine.bench`` writes.

Several settings' sections concatenate into the ``engine`` section of docs/BENCHMARKS.md (each starts with
its own ``###`` heading); ``benchmarks/report.py`` puts a file into that section.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def machine_description() -> dict[str, Any]:
    """CPU model, cores, torch/transformers versions and thread count."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cuda": torch.cuda.is_available()}


def format_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section (machine, setting, a table per side, ratios)."""
    mib = 1024**2
    m, s, sides = report["machine"], report["spec"], report["sides"]
    quant = "LoRA" if s["quant"] == "none" else f"QLoRA {s['quant'].upper()}"
    lines = [
        f"### {quant}, {s['precision']}, rank {s['rank']}, {','.join(s['targets'])}: lora_engine vs peft + torch loop",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
        f"torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}, "
        f"Python {m['python']}, CUDA: {m['cuda']}.", "",
        f"Setting: Llama d={s['hidden_size']} L={s['layers']} vocab={s['vocab_size']}, rank {s['rank']}, targets "
        f"{','.join(s['targets'])}, quant {s['quant']}, precision {s['precision']}, {_data(s)}, "
        f"{s['steps']} AdamW steps ({s['warmup']} untimed), device {s.get('device', 'cpu')}, "
        f"gradient checkpointing {'on' if s.get('gradient_checkpointing') else 'off'}.", "",
        f"Measured matmul peak: {report['peak_flops']['fp32'] / 1e9:.1f} GFLOP/s fp32"
        + (f", {report['peak_flops']['bf16'] / 1e9:.1f} GFLOP/s bf16" if "bf16" in report["peak_flops"] else "")
        + f"; model FLOPs per token: {report['flops_per_token'] / 1e6:.1f} M.", "",
        "| side | tokens/s | peak memory (MiB) | growth (MiB) | MFU (vs fp32 peak) | first loss | final loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in sides.items():
        growth = (r["peak_memory_bytes"] - r["baseline_memory_bytes"]) / mib
        lines.append(f"| {name} | {r['tokens_per_second']:.0f} | {r['peak_memory_bytes'] / mib:.0f} | {growth:.0f} | "
                     f"{100 * r['mfu']:.1f} % | {r['first_loss']:.3f} | {r['final_loss']:.3f} |")
    ratios = report["ratios"]
    memory = "peak reserved CUDA memory" if s.get("device", "cpu").startswith("cuda") else "peak RSS"
    lines += ["", f"Engine ÷ peft: tokens/s ×{ratios['tokens_per_second']:.2f}, {memory} ×{ratios['peak_memory']:.2f}, "
              f"growth over the post-import baseline ×{ratios['memory_growth']:.2f}.", ""]
    return "\n".join(lines)


def _data(spec: dict[str, Any]) -> str:
    if not spec.get("data_file"):
        return (f"batch {spec['batch_size']} × seq {spec['seq_len']} (packed rows, every token a target; greedy "
                "packing leaves a row a little short of seq: ~7% padding at seq 256)")
    return (f"batch {spec['batch_size']} examples of {spec['data_file']} (up to {spec['seq_len']} tokens, mean "
            f"{spec.get('mean_example_tokens') or 0:.0f}; prompt masked; the peft side pads each batch to its longest "
            "example, the engine lays the examples end to end)")


def _setting(spec: dict[str, Any]) -> str:
    quant = "LoRA" if spec["quant"] == "none" else f"QLoRA {spec['quant'].upper()}"
    size = f"d={spec['hidden_size']} L={spec['layers']}"
    if spec.get("data_file"):  # examples of their own lengths, not full rows
        shape = (f"{spec['batch_size']} examples ≤{spec['seq_len']} (mean {spec.get('mean_example_tokens') or 0:.0f})"
                 f" of {spec['data_file']}")
    else:
        shape = f"{spec['batch_size']}×{spec['seq_len']}"
    gc = " GC" if spec.get("gradient_checkpointing") else ""
    return f"{quant} {spec['precision']} r{spec['rank']} {','.join(spec['targets'])}, {size}, {shape}{gc}"


def summary_markdown(reports: list[dict[str, Any]], speed_target: float = 1.3, memory_target: float = 0.8) -> str:
    """One table over several reports: engine ÷ peft ratios against the targets, MFU and final losses.

    Args:
        reports: :func:`lora_engine.bench.run_benchmark` results (``--json`` output).
        speed_target: the tokens/s ratio to reach. memory_target: the peak-memory ratio to stay under.

    Returns:
        A Markdown table, one row per report, in the given order.
    """
    lines = ["| setting | tokens/s engine / peft | ×tokens/s | ×peak memory | engine MFU (vs the fp32 or bf16 peak) "
             "| final loss engine / peft |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for report in reports:
        engine, peft = report["sides"]["engine"], report["sides"]["peft"]
        ratios = report["ratios"]
        speed = f"×{ratios['tokens_per_second']:.2f}" + (" ✓" if ratios["tokens_per_second"] >= speed_target else "")
        memory = f"×{ratios['peak_memory']:.2f}" + (" ✓" if ratios["peak_memory"] <= memory_target else "")
        throughput = f"{engine['tokens_per_second']:.0f} / {peft['tokens_per_second']:.0f}"
        mfu = engine.get("extra", {}).get("mfu_vs_bf16_peak", engine["mfu"])  # against the row's own precision
        lines.append(f"| {_setting(report['spec'])} | {throughput} | {speed} | {memory} | {100 * mfu:.1f} % "
                     f"| {engine['final_loss']:.4f} / {peft['final_loss']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m lora_engine.bench_report REPORT.json...``: the summary table, then each report's section."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m lora_engine.bench_report", description=main.__doc__)
    parser.add_argument("reports", nargs="+", help="files written by python -m lora_engine.bench --json")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        with open(path) as handle:
            reports.append(json.load(handle))
    print("\n\n".join([summary_markdown(reports)] + [format_markdown(r) for r in reports]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

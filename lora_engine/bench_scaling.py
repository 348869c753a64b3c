"""Scaling tables over several ``python -m lora_engine.bench --json`` reports: sequence length, batch, rank.

    python -m lora_engine.bench_scaling --seq R128.json R512.json ... --batch B1.json B4.json ... \\
                                        --rank R8.json R64.json ... > scaling.md

Each series is a list of reports that differ in one setting. For the sequence-length and batch series the
table is followed by a linearity check of each side's peak-memory growth (peak minus the post-import
baseline) against the tokens in one step (batch × sequence length): a least-squares line, its R², and the
growth per 1,000 tokens between consecutive settings. With gradient checkpointing and an attention kernel that
keeps no T×T matrix, growth is linear in T: the increments stay flat. A term in T² doubles the increment per
token each time T doubles, so the last increment over the one before it is the quadratic test (≈1 linear, ≈2
quadratic); the check passes at R² ≥ 0.97 and that ratio ≤ 1.4.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

MIB = 1024**2
R2_MIN = 0.97
INCREMENT_RATIO_MAX = 1.4
SERIES = {"seq": ("sequence length", lambda s: s["seq_len"]),
          "batch": ("batch size", lambda s: s["batch_size"]),
          "rank": ("rank", lambda s: s["rank"])}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares ``y ≈ slope·x + intercept``.

    Returns:
        ``(slope, intercept, r2)``; R² is 1.0 when the ys do not vary at all.

    Raises:
        ValueError: fewer than two points, or all xs equal.
    """
    n = len(xs)
    if n < 2 or n != len(ys) or len(set(xs)) < 2:
        raise ValueError("a line needs at least two points with different x")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, intercept, 1.0 - residual / total if total else 1.0


def linearity(tokens: list[int], growth_mib: list[float]) -> dict[str, Any]:
    """How well memory growth follows a line in tokens per step (see the module docstring).

    Returns:
        ``slope_per_1k`` (MiB per 1,000 tokens), ``intercept`` (MiB), ``r2``, ``increments_per_1k`` (between
        consecutive points), ``increment_ratio`` (last ÷ the one before; None with fewer than 3 points) and
        ``linear`` (the verdict).
    """
    slope, intercept, r2 = linear_fit([float(t) for t in tokens], growth_mib)
    increments = [1000 * (growth_mib[i + 1] - growth_mib[i]) / (tokens[i + 1] - tokens[i])
                  for i in range(len(tokens) - 1)]
    ratio = increments[-1] / increments[-2] if len(increments) >= 2 and increments[-2] > 0 else None
    linear = r2 >= R2_MIN and (ratio is None or ratio <= INCREMENT_RATIO_MAX)
    return {"slope_per_1k": 1000 * slope, "intercept": intercept, "r2": r2, "increments_per_1k": increments,
            "increment_ratio": ratio, "linear": linear}


def _growth_mib(side: dict[str, Any]) -> float:
    return (side["peak_memory_bytes"] - side["baseline_memory_bytes"]) / MIB


def _series_table(kind: str, reports: list[dict[str, Any]]) -> list[str]:
    label, value = SERIES[kind]
    first = reports[0]["spec"]
    fixed = {"seq": f"batch {first['batch_size']}, rank {first['rank']} {','.join(first['targets'])}",
             "batch": f"seq {first['seq_len']}, rank {first['rank']} {','.join(first['targets'])}",
             "rank": f"batch {first['batch_size']} × seq {first['seq_len']}, {','.join(first['targets'])}"}[kind]
    gc = "gradient checkpointing on" if first.get("gradient_checkpointing") else "gradient checkpointing off"
    lines = [f"### Growing the {label} (d={first['hidden_size']} L={first['layers']}, {fixed}, {gc}, "
             f"{first['precision']})", "",
             f"| {label} | tokens/step | tokens/s engine / peft | ×tokens/s | peak MiB engine / peft | "
             "growth MiB engine / peft | ×peak | trainable params |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for report in reports:
        spec, engine, peft = report["spec"], report["sides"]["engine"], report["sides"]["peft"]
        lines.append(
            f"| {value(spec)} | {spec['batch_size'] * spec['seq_len']} | {engine['tokens_per_second']:.0f} / "
            f"{peft['tokens_per_second']:.0f} | ×{report['ratios']['tokens_per_second']:.2f} | "
            f"{engine['peak_memory_bytes'] / MIB:.0f} / {peft['peak_memory_bytes'] / MIB:.0f} | "
            f"{_growth_mib(engine):.0f} / {_growth_mib(peft):.0f} | ×{report['ratios']['peak_memory']:.2f} | "
            f"{engine['trainable_params']:,} |")
    if kind in ("seq", "batch") and len(reports) >= 2:
        tokens = [r["spec"]["batch_size"] * r["spec"]["seq_len"] for r in reports]
        lines += ["",
                  "| side | growth ≈ | R² | growth per 1k tokens, interval by interval | last ÷ previous | linear |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for side in ("engine", "peft"):
            fit = linearity(tokens, [_growth_mib(r["sides"][side]) for r in reports])
            steps = ", ".join(f"{x:.1f}" for x in fit["increments_per_1k"])
            ratio = "—" if fit["increment_ratio"] is None else f"{fit['increment_ratio']:.2f}"
            lines.append(f"| {side} | {fit['intercept']:.0f} MiB + {fit['slope_per_1k']:.1f} MiB/1k tokens | "
                         f"{fit['r2']:.3f} | {steps} | {ratio} | {'yes' if fit['linear'] else '**no**'} |")
    return lines + [""]


def scaling_markdown(series: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown for each series (``seq``, ``batch``, ``rank``: lists of bench reports in increasing order)."""
    unknown = set(series) - set(SERIES)
    if unknown:
        raise ValueError(f"unknown series {sorted(unknown)}; use {', '.join(SERIES)}")
    reports = [r for kind in SERIES for r in series.get(kind, [])]
    if not reports:
        return ""
    m, spec = reports[0]["machine"], reports[0]["spec"]
    memory = "peak reserved CUDA memory" if spec.get("device", "cpu").startswith("cuda") else "peak RSS (VmHWM)"
    lines = [
        "## Scaling (`bash benchmarks/engine_scaling.sh`: `python -m lora_engine.bench` per row, then "
        "`python -m lora_engine.bench_scaling`)", "",
        f"_{m['cpu']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, torch {m['torch']} "
        f"({m['torch_threads']} threads per side), transformers {m['transformers']}, "
        f"device {spec.get('device', 'cpu')}; "
        f"{spec['steps']} AdamW steps per run ({spec['warmup']} untimed)._ Memory is {memory}; growth is the peak "
        "minus the resident set after imports (model, adapters, AdamW state, activations). Linearity: a "
        "least-squares line of growth against tokens per step, its R², the growth per 1k tokens between "
        "consecutive settings, and the last of those over the one before (≈1 for linear growth, ≈2 for growth "
        f"in T²); linear means R² ≥ {R2_MIN} and that ratio ≤ {INCREMENT_RATIO_MAX}.", "",
    ]
    for kind in SERIES:
        if series.get(kind):
            lines += _series_table(kind, series[kind])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the scaling tables for the given report files."""
    parser = argparse.ArgumentParser(prog="python -m lora_engine.bench_scaling", description=main.__doc__)
    for kind, (label, _) in SERIES.items():
        parser.add_argument(f"--{kind}", nargs="+", default=[], metavar="REPORT",
                            help=f"bench --json files, increasing {label}")
    args = parser.parse_args(argv)
    series = {}
    for kind in SERIES:
        reports = []
        for path in getattr(args, kind):
            with open(path) as handle:
                reports.append(json.load(handle))
        series[kind] = reports
    print(scaling_markdown(series))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The token-length histogram of the data set page, laid out for HTML: bars, axis ticks and the mark of the
chosen sequence length, each placed in percent of the plot (no chart library; the page has no script).

Bins are equal-width ``[start, end)`` from ``lora_engine`` (see ``TokenStats``); the x axis runs from 0 to the
last bin's end, or on to the sequence length when that is at most ``MARK_HEADROOM`` times further (so the
mark shows how much room is left), the y axis from 0 to a round number of rows at or above the tallest bar.
"""

from __future__ import annotations

import math
from typing import Any

X_TICKS = 5            # about this many ticks (and gaps) along each axis, at round values
Y_TICKS = 4
MARK_HEADROOM = 2.0    # the x axis stretches to a sequence length at most this many times the longest bin's end


def nice_step(span: float, target_ticks: int) -> int:
    """The whole-number tick step (1, 2 or 5 times a power of ten) whose count of gaps over ``span`` is closest
    to ``target_ticks``; between two as close, the one leaving less empty room above ``span``."""
    if span <= target_ticks:
        return 1
    magnitude = 10 ** math.floor(math.log10(span / target_ticks))
    steps = [m * magnitude * scale for scale in (0.1, 1, 10) for m in (1, 2, 5) if m * magnitude * scale >= 1]

    def badness(step: float) -> tuple[float, float]:
        gaps = math.ceil(span / step)
        return abs(gaps - target_ticks), gaps * step - span

    return int(min(steps, key=badness))


def tick_label(value: int) -> str:
    """``950``, ``2,048``, ``12k``, ``1.5M``: short enough for five ticks across a phone."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:,}"


def _pct(value: float, span: float) -> float:
    return round(100.0 * value / span, 2) if span else 0.0


def histogram_chart(histogram: list[dict], max_seq_len: int | None) -> dict[str, Any] | None:
    """Bars and axes for ``histogram`` (``[{"start", "end", "count", "over"}]``), with ``max_seq_len`` marked.

    Returns:
        ``{"bars": [bin + {"left", "width", "height"} in %], "x_ticks"/"y_ticks": [{"value", "label", "at"}]
        (``at``: % from the left / from the bottom), "x_max", "y_max", "mark": {"value", "label", "at"} or
        None, "longest": the last bin's end}``; None for an empty histogram.
    """
    if not histogram:
        return None
    longest = max(b["end"] for b in histogram)
    x_max = longest
    if max_seq_len and longest < max_seq_len <= MARK_HEADROOM * longest:
        x_max = max_seq_len
    peak = max(b["count"] for b in histogram)
    y_step = nice_step(peak, Y_TICKS)
    y_max = max(y_step, math.ceil(peak / y_step) * y_step)
    x_step = nice_step(x_max, X_TICKS)
    bars = [dict(b, left=_pct(b["start"], x_max), width=_pct(b["end"] - b["start"], x_max),
                 height=_pct(b["count"], y_max)) for b in histogram]
    x_ticks = [{"value": v, "label": tick_label(v), "at": _pct(v, x_max)} for v in range(0, x_max + 1, x_step)]
    y_ticks = [{"value": v, "label": tick_label(v), "at": _pct(v, y_max)} for v in range(0, y_max + 1, y_step)]
    mark = None
    if max_seq_len and max_seq_len <= x_max:
        mark = {"value": max_seq_len, "label": tick_label(max_seq_len), "at": _pct(max_seq_len, x_max)}
    return {"bars": bars, "x_ticks": x_ticks, "y_ticks": y_ticks, "x_max": x_max, "y_max": y_max, "mark": mark,
            "longest": longest}

"""Number formats for the compare tables: a dash for a missing value, never "None"."""

from __future__ import annotations

import math
from typing import Any

from django import template
from django.template.defaultfilters import filesizeformat

register = template.Library()
DASH = "–"


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and not math.isfinite(value))


@register.filter
def num(value: Any, digits: int = 4) -> str:
    """A float with ``digits`` decimals (trailing zeros kept, so a column lines up)."""
    return DASH if _missing(value) else f"{float(value):.{int(digits)}f}"


@register.filter
def count(value: Any) -> str:
    """A whole number with thousands separators."""
    return DASH if _missing(value) else f"{int(value):,}"


@register.filter
def size(value: Any) -> str:
    return DASH if _missing(value) else filesizeformat(value)


@register.filter
def seconds(value: Any) -> str:
    if _missing(value):
        return DASH
    total = int(round(float(value)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"


@register.filter
def cell(value: Any) -> str:
    """A config value: booleans as yes/no, None as a dash."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


@register.filter
def percent(value: Any) -> str:
    """0.015 -> "1.5%"."""
    return DASH if _missing(value) else f"{float(value) * 100:g}%"

"""Template filters for model sizes: ``1234567|params`` → "1.23M"."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def params(value) -> str:
    """A parameter count in K/M/B with three significant digits; "–" when unknown."""
    if value is None or value == "":
        return "–"
    number = float(value)
    for limit, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= limit:
            return f"{number / limit:.3g}{unit}"
    return str(int(number))

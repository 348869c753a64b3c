"""Cursor pagination the way OpenAI's lists do it: ``after=<id of the last item you saw>``, ``limit``, ``has_more``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import Q, QuerySet
from django.http import HttpRequest

from .errors import ApiError


def parse_limit(request: HttpRequest, default: int, maximum: int) -> int:
    raw = request.GET.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(f"limit must be an integer from 1 to {maximum} (got {raw!r}).", param="limit") from None
    if not 1 <= limit <= maximum:
        raise ApiError(f"limit must be an integer from 1 to {maximum} (got {limit}).", param="limit")
    return limit


def parse_order(request: HttpRequest, default: str = "desc") -> str:
    order = request.GET.get("order") or default
    if order not in ("asc", "desc"):
        raise ApiError(f"order must be 'asc' or 'desc' (got {order!r}).", param="order")
    return order


def after_anchor(queryset: QuerySet, anchor: Any, field: str = "created_at", descending: bool = True) -> QuerySet:
    """Rows strictly after ``anchor`` in the order (``field``, pk) (descending or ascending)."""
    value = getattr(anchor, field)
    if descending:
        return queryset.filter(Q(**{f"{field}__lt": value}) | Q(**{field: value, "pk__lt": anchor.pk}))
    return queryset.filter(Q(**{f"{field}__gt": value}) | Q(**{field: value, "pk__gt": anchor.pk}))


def ordered(queryset: QuerySet, field: str = "created_at", descending: bool = True) -> QuerySet:
    sign = "-" if descending else ""
    return queryset.order_by(f"{sign}{field}", f"{sign}pk")


def take_page(rows: Sequence[Any] | QuerySet, limit: int) -> tuple[list[Any], bool]:
    """The first ``limit`` rows and whether more exist (reads ``limit + 1`` rows)."""
    items = list(rows[: limit + 1])
    return items[:limit], len(items) > limit


def list_object(items: list[Any], has_more: bool, serialize: Callable[[Any], dict]) -> dict:
    data = [serialize(item) for item in items]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }

"""Template filters for the merges section of the adapter page (formatted like static/js/merges.js does)."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def merge_duration(merge) -> str:
    """How long a finished merge took: "42s", "3m 5s", "1h 2m" (or "–")."""
    if not (merge.started_at and merge.finished_at):
        return "–"
    seconds = round((merge.finished_at - merge.started_at).total_seconds())
    hours, minutes, secs = seconds // 3600, (seconds % 3600) // 60, seconds % 60
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {secs}s" if minutes else f"{secs}s"


@register.filter
def gguf_export(merge):
    """The merge's GGUF export (or None when none was requested)."""
    from webapp.adapters.gguf_exports import current_export

    return current_export(merge)


@register.filter
def gguf_downloadable(export) -> bool:
    """Whether the export's complete file is offered for download."""
    from webapp.adapters.gguf_exports import downloadable_gguf

    return downloadable_gguf(export) is not None


@register.filter
def gguf_stage(export) -> str:
    """The export's state for people, as static/js/merges.js shows it: "running (writing)"."""
    from webapp.adapters.gguf_exports import stage_of

    return f"running ({stage_of(export)})" if export.state == "running" else export.state

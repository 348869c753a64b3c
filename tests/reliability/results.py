"""What the reliability suite observed, written as JSON for ``scripts/reliability_report.py`` to render.

Tests call :func:`record` (section, entry); at the end of the session the conftest writes one
``<section>.json`` per section under :func:`results_dir`: ``$RELIABILITY_RESULTS``, or
``$DATA_DIR/reliability`` (``./data/reliability`` without DATA_DIR). Read at import time, before the tests
point ``settings.DATA_DIR`` at their own temporary directories.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
_RESULTS: dict[str, list[dict[str, Any]]] = defaultdict(list)
_META: dict[str, dict[str, Any]] = defaultdict(dict)


def results_dir() -> Path:
    configured = os.environ.get("RELIABILITY_RESULTS")
    if configured:
        return Path(configured)
    return Path(os.environ.get("DATA_DIR") or ROOT / "data") / "reliability"


RESULTS_DIR = results_dir()


def record(section: str, **entry: Any) -> None:
    """Keep one observation (a bad input and its answer, a matrix cell, a fuzz figure...)."""
    _RESULTS[section].append(entry)


def set_meta(section: str, **values: Any) -> None:
    """Section-wide figures (e.g. how many fuzz examples ran)."""
    _META[section].update(values)


def write_all(directory: Path | None = None) -> list[Path]:
    """Write every section seen in this session; returns the files written."""
    directory = directory or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for section in sorted(set(_RESULTS) | set(_META)):
        path = directory / f"{section}.json"
        payload = {"section": section, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "meta": _META.get(section, {}), "entries": _RESULTS.get(section, [])}
        path.write_text(json.dumps(payload, indent=1, default=str))
        written.append(path)
    return written

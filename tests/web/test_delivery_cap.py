"""Merges, GGUF exports and playground sessions whose deliveries fail before the claim: capped like training's.

Before, only training counted its deliveries: a merge, export or session whose worker failed (or died) before
claiming it stayed queued, and the reconciler delivered it again forever. Each kind is driven here through its
real worker function, with its claim made to raise, against the real database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from webapp.adapters import gguf_exports, merges
from webapp.adapters.models import Adapter, GGUFExport, Merge
from webapp.playground import actions as playground_actions
from webapp.playground.models import PlaygroundSession
from worker.gguf_tasks import run_gguf_export
from worker.merge_tasks import run_merge
from worker.playground_tasks import run_playground_session

from .jobs_factories import make_base_model

MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Kind:
    name: str
    module: Any  # where the claim the worker calls lives
    claim: str  # its name there
    run: Any  # the worker's function for one delivery
    again: str  # what the failure message tells people to do
    cap: Any  # the kind's DeliveryCap


KINDS = [
    Kind("merge", merges, "claim_merge", run_merge, "pressing Merge again", merges.MERGES.deliveries),
    Kind("GGUF export", gguf_exports, "claim_gguf_export", run_gguf_export, "pressing Export GGUF again",
         gguf_exports.GGUF_EXPORTS.deliveries),
    Kind("playground session", playground_actions, "start_session", run_playground_session,
         "running the prompt again", playground_actions.SESSION_DELIVERIES),
]


def make_row(owner, kind: Kind):
    base_model = make_base_model(owner, name=f"tiny-{kind.claim}")
    if kind.name == "playground session":
        return PlaygroundSession.objects.create(owner=owner, base_model=base_model, prompt="Hello?", outputs=[
            {"key": "base", "label": "base", "state": "pending", "text": "", "tokens": 0, "finish_reason": None,
             "seconds": None}])
    adapter = Adapter.objects.create(owner=owner, name="tiny adapter", storage_path="adapters/x",
                                     base_model=base_model, rank=4, alpha=8.0)
    merge = Merge.objects.create(owner=owner, adapter=adapter)
    if kind.name == "merge":
        return merge
    merge.state = Merge.State.SUCCEEDED
    merge.save()
    return GGUFExport.objects.create(owner=owner, merge=merge)


@pytest.fixture(params=KINDS, ids=lambda kind: kind.name)
def kind(request, settings) -> Kind:
    settings.JOB_MAX_ATTEMPTS = MAX_ATTEMPTS
    settings.JOB_HEARTBEAT_SECONDS = 600
    return request.param


@pytest.fixture
def broken_claim(monkeypatch, kind) -> list[str]:
    """The kind's claim raises, as a setup that breaks before the claim would; returns the ids it was asked for."""
    calls: list[str] = []

    def claim(row_id, *args):
        calls.append(str(row_id))
        raise RuntimeError("setup broke")

    monkeypatch.setattr(kind.module, kind.claim, claim)
    return calls


def test_failing_deliveries_fail_the_row_at_the_cap_and_later_ones_are_dropped(owner, kind, broken_claim,
                                                                                monkeypatch):
    row = make_row(owner, kind)
    for delivery in range(1, MAX_ATTEMPTS):
        with pytest.raises(RuntimeError, match="setup broke"):
            kind.run(str(row.pk))
        row.refresh_from_db()
        assert (row.state, row.unclaimed_deliveries) == ("queued", delivery)
        assert row.error_message == "The last delivery failed with RuntimeError: setup broke."

    assert kind.run(str(row.pk)) == "failed"
    row.refresh_from_db()
    assert row.state == "failed" and row.finished_at is not None
    assert row.error_message.startswith(f"The {kind.name} could not be started: its worker failed {MAX_ATTEMPTS} "
                                        "times before it began, each time with RuntimeError: setup broke.")
    assert kind.again in row.error_message
    assert "Traceback" in row.error and "setup broke" in row.error
    assert len(broken_claim) == MAX_ATTEMPTS
    monkeypatch.undo()  # the real claim: a later delivery finds nothing to claim
    assert kind.run(str(row.pk)) == "dropped"
    row.refresh_from_db()
    assert row.state == "failed"


def test_deliveries_that_died_silently_fail_the_row_at_the_next_one(owner, kind):
    row = make_row(owner, kind)
    for _ in range(MAX_ATTEMPTS):
        assert kind.cap.count(row.pk)  # ... and the worker process died before it claimed the row
    assert kind.run(str(row.pk)) == "failed"

    row.refresh_from_db()
    assert row.state == "failed"
    assert f"its worker stopped {MAX_ATTEMPTS} times before it began" in row.error_message
    if kind.name == "playground session":
        assert [output["state"] for output in row.outputs] == ["failed"]


def test_the_claim_resets_the_count(owner, kind):
    row = make_row(owner, kind)
    assert kind.cap.count(row.pk) and kind.cap.count(row.pk)
    getattr(kind.module, kind.claim)(row.pk, *([] if kind.name == "playground session" else ["host:1:abc"]))
    row.refresh_from_db()
    assert (row.state, row.unclaimed_deliveries) == ("running", 0)


def test_a_merge_requested_again_after_the_cap_starts_a_fresh_count(owner, settings, monkeypatch):
    settings.JOB_MAX_ATTEMPTS = MAX_ATTEMPTS
    monkeypatch.setattr(merges, "enqueue_merge", lambda merge_id: True)
    merge = make_row(owner, KINDS[0])
    for _ in range(MAX_ATTEMPTS + 1):
        merges.MERGES.deliveries.count(merge.pk)
    merge.refresh_from_db()
    assert merge.state == Merge.State.FAILED

    merge, queued = merges.request_merge(merge.adapter, merge.dtype)
    assert queued and (merge.state, merge.unclaimed_deliveries, merge.error_message) == (Merge.State.QUEUED, 0, "")

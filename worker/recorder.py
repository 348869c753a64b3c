"""The recorder: the training callback that pushes every step to the job's watchers and stores it.

A training step never waits on PostgreSQL or Redis. ``on_step`` numbers the point (worker.live: the lease makes
this recorder the job's only writer) and hands it to the live pusher, which sends it at once, and to a buffer
that a background thread writes about once a second (one transaction: the points with those numbers, the job's
progress), then pushes the job's state. Writing rarely keeps the work that competes with training (the GIL,
the CPU, PostgreSQL's own) small; the live push keeps the browser's curve within a step of the trainer. If
PostgreSQL restarts, the thread keeps the buffer and retries; training goes on meanwhile.

Numbers start once the run's start is written (the newest stored seq, and the steps a resumed run replays are
only known then); points reported before that wait in the buffer and are numbered and pushed with it.

The thread also reads the job's cancel flag every CANCEL_POLL_SECONDS (and with every write), so
``should_stop()`` answers from memory: a cancel request stops training after the step in progress.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from lora_engine.callbacks import Callback, EvalMetrics, RunInfo, StepMetrics
from webapp.jobs.actions import add_event
from webapp.jobs.leases import (
    Lease,
    cancel_flag,
    record_checkpoint,
    record_metric_points,
    record_run_info,
    stored_point_keys,
)
from webapp.jobs.models import Job

from .db import CONNECTION_ERRORS, drop_connection
from .live import LivePusher, PointNumbers

logger = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 1.0  # one transaction a second at most (the points reach the browsers live meanwhile)
WRITE_MAX_POINTS = 256  # ... or sooner when this many points wait, so a batch stays small when steps are fast
CANCEL_POLL_SECONDS = 0.1  # how stale the cancel flag may get between two writes
CLOSE_TIMEOUT_SECONDS = 120.0
MAX_RETRIES = 3  # for errors other than a lost connection (those are retried until close's deadline)


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities are not JSON (PostgreSQL rejects them): store them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def device_label(device: str) -> str:
    """``cuda:0 (NVIDIA A100 …)`` for a GPU, ``cpu`` otherwise."""
    if not device.startswith("cuda"):
        return device
    try:
        import torch

        index = int(device.split(":")[1]) if ":" in device else torch.cuda.current_device()
        return f"{device} ({torch.cuda.get_device_name(index)})"
    except Exception:  # noqa: BLE001 - a label only
        return device


class LeaseLostError(RuntimeError):
    """Another worker holds the job now: stop at once, without writing a checkpoint into its directory."""


class JobRecorder(Callback):
    """A lora_engine TrainingCallback writing to the job held by ``lease``. Call :meth:`start` before
    training and :meth:`close` after it (it writes and pushes what is left)."""

    def __init__(self, lease: Lease, lease_lost: threading.Event | None = None, output_dir: str | Path | None = None):
        self.lease = lease
        self.output_dir = Path(output_dir) if output_dir else None
        self.lease_lost = lease_lost or threading.Event()
        self._lock = threading.Lock()  # guards _pending and _numbers (the trainer's thread and the writer's)
        self._pending: list[tuple[str, Any]] = []
        self._pending_points = 0
        self._urgent = False  # write at once: the run's start (numbering waits on it), or a full batch
        self._numbers: PointNumbers | None = None  # set once the run's start is written
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._cancel_seen = False  # written by the writer thread, read by should_stop (a plain bool)
        self._last_train: dict[str, Any] = {}
        self._last_eval: dict[str, Any] = {}
        self._last_write = self._last_check = 0.0
        # When the lease was last confirmed (by a write or a cancel poll). Points go live only while that is
        # recent: a worker cut off from the database may have been replaced, and its successor reuses the seqs.
        self._lease_seen = time.monotonic()
        self._live_window = settings.JOB_LEASE_SECONDS / 2
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=f"recorder-{lease.row_id}", daemon=True)
        self._live = LivePusher(lease.row_id)
        self._close_deadline = math.inf

    # --- the trainer's side (hot path: no I/O) ---------------------------------------------------------

    def on_train_start(self, info: RunInfo) -> None:
        self._put(("info", (info, device_label(info.device))), urgent=True)

    def on_step(self, m: StepMetrics) -> None:
        if self.lease_lost.is_set():
            raise LeaseLostError(f"job {self.lease.row_id}: the lease was lost (the job was given to another worker)")
        values = _finite(m.to_dict())
        del values["step"], values["split"]
        values["attempt"] = self.lease.attempt
        self._last_train = {"step": m.step, **values}
        progress = {"current_step": m.step, "total_steps": m.total_steps, "eta_seconds": values["eta_seconds"],
                    "tokens_seen": m.tokens_seen, "peak_memory_bytes": m.memory_peak_bytes}
        self._put_point({"step": m.step, "split": "train", "values": values}, progress)

    def on_eval(self, m: EvalMetrics) -> None:
        values = _finite(m.to_dict())
        del values["step"], values["split"]
        values["attempt"] = self.lease.attempt
        self._last_eval = {"step": m.step, **values}
        self._put_point({"step": m.step, "split": "eval", "values": values}, None)

    def on_checkpoint(self, step: int, path: Path) -> None:
        metrics: dict[str, Any] = {"step": step}
        if self._last_train.get("step") == step:
            metrics.update(train_loss=self._last_train.get("loss"), tokens_seen=self._last_train.get("tokens_seen"))
        if self._last_eval.get("step") == step:
            metrics["valid_loss"] = self._last_eval.get("eval_loss")
        self._put(("checkpoint", (step, Path(path), metrics)))

    def should_stop(self) -> bool:
        return self._cancel_seen

    def _put_point(self, point: dict[str, Any], progress: dict[str, Any] | None) -> None:
        with self._lock:
            if self._numbers is not None:
                point = self._numbers.number(point)
                if point is None:
                    return  # a replayed step an earlier attempt stored
            self._pending.append(("point", (point, progress)))
            self._pending_points += 1
            urgent = self._pending_points >= WRITE_MAX_POINTS
        if "seq" in point and time.monotonic() - self._lease_seen < self._live_window:
            self._live.points([point])
        if urgent:
            self._urge()

    def _put(self, item: tuple[str, Any], urgent: bool = False) -> None:
        with self._lock:
            self._pending.append(item)
        if urgent:
            self._urge()

    def _urge(self) -> None:
        self._urgent = True
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> JobRecorder:
        self._live.start()
        self._thread.start()
        return self

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Write what is left and stop the threads. False if some records could not be written in time."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout + 5)
        self._live.close()
        with self._lock:
            left = len(self._pending)
        if left:
            logger.error("job %s: %d records could not be written before the deadline", self.lease.row_id, left)
        return left == 0

    # --- the writer thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                closing = self._closing.is_set()
                now = time.monotonic()
                with self._lock:
                    due = closing or self._urgent or (self._pending and now - self._last_write >= WRITE_EVERY_SECONDS)
                    items = self._take_pending() if due else []
                if items:
                    self._flush(items)
                elif now - self._last_check >= CANCEL_POLL_SECONDS and not closing:
                    self._check_stop()
                with self._lock:
                    empty = not self._pending
                if closing and (empty or self.lease_lost.is_set() or time.monotonic() > self._close_deadline):
                    return
                if not closing:
                    self._wake.wait(CANCEL_POLL_SECONDS)
                    self._wake.clear()
        finally:
            drop_connection()

    def _take_pending(self) -> list[tuple[str, Any]]:
        items, self._pending, self._pending_points, self._urgent = self._pending, [], 0, False
        return items

    def _flush(self, items: list[tuple[str, Any]]) -> None:
        self._last_write = time.monotonic()
        done = 0
        while done < len(items) and not self.lease_lost.is_set():
            try:
                done += self._write_group(items, done)
                self._failures = 0
            except Exception as exc:
                drop_connection()
                self._failures += 1
                if not isinstance(exc, CONNECTION_ERRORS) and self._failures > MAX_RETRIES:
                    # not the database going away but something wrong with this record: skip it
                    logger.exception("job %s: could not record %s; skipped", self.lease.row_id, items[done][0])
                    self._failures, done = 0, done + 1
                    continue
                with self._lock:
                    self._pending[:0] = items[done:]  # keep the order; training goes on meanwhile
                    self._pending_points += sum(kind == "point" for kind, _ in items[done:])
                delay = min(0.5 * 2 ** (self._failures - 1), 5.0)
                logger.warning("job %s: cannot write to the database (%r); %d records buffered, retrying in "
                               "%.1fs", self.lease.row_id, exc, len(items) - done, delay)
                time.sleep(delay)
                return

    def _write_group(self, items: list[tuple[str, Any]], start: int) -> int:
        """Write items[start] (and the metric points right after it, as one batch). Returns how many."""
        kind, payload = items[start]
        if kind == "info":
            self._write_start(payload, items, start + 1)
            return 1
        if kind == "checkpoint":
            step, path, metrics = payload
            if not record_checkpoint(self.lease, step, path, metrics):
                self.lease_lost.set()
            return 1
        end = start
        while end < len(items) and items[end][0] == "point":
            end += 1
        batch = [items[i][1] for i in range(start, end)]
        progress = next((p for _, p in reversed(batch) if p is not None), None)
        stored, job = record_metric_points(self.lease, [point for point, _ in batch], dict(progress or {}))
        if self._numbers is None:  # the run's start was never written: these got their seq only now
            self._live.points(stored)
        self._after_write(job)
        return end - start

    def _write_start(self, payload: tuple[RunInfo, str], items: list[tuple[str, Any]], rest: int) -> None:
        """The run's start: what it is about to do, the steps a killed attempt computed but never stored; then
        number (and push) the points reported meanwhile."""
        info, device = payload
        job = record_run_info(self.lease, info, device)
        restored: list[dict[str, Any]] = []
        if job is not None and info.start_step:
            restored, job = record_metric_points(self.lease, self._lost_records(info.start_step), None)
        self._live.points(restored)
        self._after_write(job)
        if job is None:
            return
        numbers = PointNumbers(job.last_seq, stored_point_keys(self.lease, info.start_step))
        with self._lock:  # the trainer numbers new points itself from here on: number the older ones first
            self._numbers = numbers
            items[rest:] = self._numbered(items[rest:])  # the rest of the batch being written (by _flush)
            self._pending = self._numbered(self._pending)
            self._pending_points = sum(kind == "point" for kind, _ in self._pending)

    def _numbered(self, items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        """``items`` with their points numbered (and pushed live), those already stored left out."""
        kept, pushed = [], []
        for kind, payload in items:
            if kind == "point" and "seq" not in payload[0]:
                point = self._numbers.number(payload[0])
                if point is None:
                    continue
                payload = (point, payload[1])
                pushed.append(point)
            kept.append((kind, payload))
        self._live.points(pushed)
        return kept

    def _after_write(self, job) -> None:
        self._last_check = time.monotonic()
        if job is not None:
            self._lease_seen = self._last_check
        if job is None:
            logger.error("job %s: the lease is no longer ours; stopping", self.lease.row_id)
            self.lease_lost.set()
            return
        if job.cancel_requested and not self._cancel_seen:
            self._on_cancel_seen(job)
        self._live.state(job)

    def _check_stop(self) -> None:
        self._last_check = time.monotonic()
        try:
            flag = cancel_flag(self.lease)
            if flag is None:
                self.lease_lost.set()
                return
            self._lease_seen = self._last_check
            if flag and not self._cancel_seen:
                self._on_cancel_seen(Job.objects.get(pk=self.lease.row_id))
        except CONNECTION_ERRORS:
            drop_connection()

    def _on_cancel_seen(self, job) -> None:
        self._cancel_seen = True
        step = self._last_train.get("step", 0)
        logger.info("job %s: cancel requested; stopping after step %s", self.lease.row_id, step + 1)
        add_event(job, f"Cancel request received at step {step}: stopping after the step in progress.", step=step)

    def _lost_records(self, start_step: int) -> list[dict[str, Any]]:
        """Steps up to the resumed checkpoint that an earlier attempt computed but died before writing.

        Their full records died with that worker; the checkpoint keeps every step's loss and every
        evaluation, which is what is written back (marked ``restored``). Steps already stored are skipped.
        """
        from lora_engine.checkpoint import latest_checkpoint

        path = latest_checkpoint(self.output_dir) if self.output_dir else None
        if path is None:
            return []
        state = json.loads((path / "trainer_state.json").read_text()).get("state", {})
        if state.get("step") != start_step:
            return []
        points = [{"step": i, "split": "train", "values": {"loss": loss, "restored": True, "attempt": None}}
                  for i, loss in enumerate(state.get("losses", []), start=1)]
        points += [{"step": e["step"], "split": "eval",
                    "values": {"eval_loss": e["eval_loss"], "perplexity": e.get("perplexity"), "restored": True,
                               "attempt": None}} for e in state.get("evals", [])]
        return [{**p, "values": _finite(p["values"])} for p in sorted(points, key=lambda p: p["step"])]

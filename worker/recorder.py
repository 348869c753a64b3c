"""The recorder: the training callback that persists every step and pushes it to the job's watchers.

A training step never waits on PostgreSQL or Redis. ``on_step`` only appends the record to a buffer; a
background thread writes the buffer in batches (one transaction: the points with their sequence numbers,
the job's progress) as soon as a batch has formed and at least every second, then sends the stored points
and the job's state through webapp.jobs.events (best-effort: if Redis is down the page catches up from the
database). If PostgreSQL restarts, the thread keeps the buffer and retries; training goes on meanwhile.

The same thread reads the job row on every write (and every half second when idle), so ``should_stop()``
answers from memory: a cancel request stops training after the step in progress.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from pathlib import Path
from typing import Any

from lora_engine.callbacks import Callback, EvalMetrics, RunInfo, StepMetrics
from webapp.jobs import events
from webapp.jobs.actions import add_event
from webapp.jobs.leases import Lease, cancel_flag, record_checkpoint, record_metric_points, record_run_info
from webapp.jobs.models import Job

from .db import CONNECTION_ERRORS, drop_connection

logger = logging.getLogger(__name__)

MIN_BATCH_SECONDS = 0.05  # lets a batch form when steps are fast; bounds the step → browser latency
IDLE_POLL_SECONDS = 0.5  # how stale the cancel flag may get when no step is being written
STATE_EVERY_SECONDS = 0.5  # job state pushes to the lists (the points go out on every write)
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
    training and :meth:`close` after it (it flushes what is left)."""

    def __init__(self, lease: Lease, lease_lost: threading.Event | None = None, output_dir: str | Path | None = None):
        self.lease = lease
        self.output_dir = Path(output_dir) if output_dir else None
        self.lease_lost = lease_lost or threading.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Any]] = []
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._cancel_seen = False  # written by the flusher thread, read by should_stop (a plain bool)
        self._last_train: dict[str, Any] = {}
        self._last_eval: dict[str, Any] = {}
        self._last_flush = self._last_check = self._last_state = 0.0
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name=f"recorder-{lease.job_id}", daemon=True)
        # Pushes to Redis go out from their own thread, so a slow or absent Redis never delays the writes
        # (nor the cancel flag, which is read with them).
        self._emits: queue.SimpleQueue = queue.SimpleQueue()
        self._emitter = threading.Thread(target=self._emit_loop, name=f"emitter-{lease.job_id}", daemon=True)
        self._close_deadline = math.inf

    # --- the trainer's side (hot path: no I/O) ---------------------------------------------------------

    def on_train_start(self, info: RunInfo) -> None:
        self._put(("info", (info, device_label(info.device))))

    def on_step(self, m: StepMetrics) -> None:
        if self.lease_lost.is_set():
            raise LeaseLostError(f"job {self.lease.job_id}: the lease was lost (the job was given to another worker)")
        values = _finite(m.to_dict())
        del values["step"], values["split"]
        values["attempt"] = self.lease.attempt
        self._last_train = {"step": m.step, **values}
        progress = {"current_step": m.step, "total_steps": m.total_steps, "eta_seconds": values["eta_seconds"],
                    "tokens_seen": m.tokens_seen, "peak_memory_bytes": m.memory_peak_bytes}
        self._put(("point", ({"step": m.step, "split": "train", "values": values}, progress)))

    def on_eval(self, m: EvalMetrics) -> None:
        values = _finite(m.to_dict())
        del values["step"], values["split"]
        values["attempt"] = self.lease.attempt
        self._last_eval = {"step": m.step, **values}
        self._put(("point", ({"step": m.step, "split": "eval", "values": values}, None)))

    def on_checkpoint(self, step: int, path: Path) -> None:
        metrics: dict[str, Any] = {"step": step}
        if self._last_train.get("step") == step:
            metrics.update(train_loss=self._last_train.get("loss"), tokens_seen=self._last_train.get("tokens_seen"))
        if self._last_eval.get("step") == step:
            metrics["valid_loss"] = self._last_eval.get("eval_loss")
        self._put(("checkpoint", (step, Path(path), metrics)))

    def should_stop(self) -> bool:
        return self._cancel_seen

    def _put(self, item: tuple[str, Any]) -> None:
        with self._lock:
            self._pending.append(item)
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> JobRecorder:
        self._thread.start()
        self._emitter.start()
        return self

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Write what is left and stop the thread. False if some records could not be written in time."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout + 5)
        self._emits.put(None)
        self._emitter.join(timeout=10)
        with self._lock:
            left = len(self._pending)
        if left:
            logger.error("job %s: %d records could not be written before the deadline", self.lease.job_id, left)
        return left == 0

    # --- the flusher thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                closing = self._closing.is_set()
                if not closing:
                    self._closing.wait(max(0.0, self._last_flush + MIN_BATCH_SECONDS - time.monotonic()))
                with self._lock:
                    items, self._pending = self._pending, []
                if items:
                    self._flush(items)
                elif time.monotonic() - self._last_check >= IDLE_POLL_SECONDS and not closing:
                    self._check_stop()
                with self._lock:
                    empty = not self._pending
                if closing and (empty or self.lease_lost.is_set() or time.monotonic() > self._close_deadline):
                    return
        finally:
            drop_connection()

    def _flush(self, items: list[tuple[str, Any]]) -> None:
        self._last_flush = time.monotonic()
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
                    logger.exception("job %s: could not record %s; skipped", self.lease.job_id, items[done][0])
                    self._failures, done = 0, done + 1
                    continue
                with self._lock:
                    self._pending[:0] = items[done:]  # keep the order; training goes on meanwhile
                delay = min(0.5 * 2 ** (self._failures - 1), 5.0)
                logger.warning("job %s: cannot write to the database (%r); %d records buffered, retrying in "
                               "%.1fs", self.lease.job_id, exc, len(items) - done, delay)
                time.sleep(delay)
                self._wake.set()
                return

    def _write_group(self, items: list[tuple[str, Any]], start: int) -> int:
        """Write items[start] (and the metric points right after it, as one batch). Returns how many."""
        kind, payload = items[start]
        if kind == "info":
            info, device = payload
            job = record_run_info(self.lease, info, device)
            stored: list[dict[str, Any]] = []
            if job is not None and info.start_step:
                stored, job = record_metric_points(self.lease, self._lost_records(info.start_step), None)
            self._after_write(job, stored, force_state=True)
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
        self._after_write(job, stored)
        return end - start

    def _after_write(self, job, stored: list[dict[str, Any]], force_state: bool = False) -> None:
        now = time.monotonic()
        self._last_check = now
        if job is None:
            logger.error("job %s: the lease is no longer ours; stopping", self.lease.job_id)
            self.lease_lost.set()
            return
        if job.cancel_requested and not self._cancel_seen:
            self._on_cancel_seen(job)
        if stored:
            self._emits.put((events.emit_metrics, (job.pk, stored)))
        if force_state or now - self._last_state >= STATE_EVERY_SECONDS:
            self._last_state = now
            self._emits.put((events.emit_state, (job,)))

    def _emit_loop(self) -> None:
        while (item := self._emits.get()) is not None:
            emit, args = item
            try:
                emit(*args)
            except Exception:  # noqa: BLE001 - the emitter never raises by contract; belt and braces
                logger.exception("job %s: live update failed", self.lease.job_id)

    def _check_stop(self) -> None:
        self._last_check = time.monotonic()
        try:
            flag = cancel_flag(self.lease)
            if flag is None:
                self.lease_lost.set()
            elif flag and not self._cancel_seen:
                self._on_cancel_seen(Job.objects.get(pk=self.lease.job_id))
        except CONNECTION_ERRORS:
            drop_connection()

    def _on_cancel_seen(self, job) -> None:
        self._cancel_seen = True
        step = self._last_train.get("step", 0)
        logger.info("job %s: cancel requested; stopping after step %s", self.lease.job_id, step + 1)
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

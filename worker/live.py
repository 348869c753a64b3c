"""The recorder's fast path: number each metric point as it happens and push it to the job's watchers at once.

The lease makes one recorder the only writer of its job's points, so it can hand out the job's ``seq`` numbers
itself, without a database round trip, and push a step to the browsers the moment the trainer reports it. The
database stores the same points with the same numbers a little later, in batches, always in seq order: what is
stored is the prefix 1..N of what was pushed. A page that joins late, or missed a push (Redis down), asks the
database for the points after its last seq and keeps asking until the gap fills, so it never sees a hole or a
point twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from webapp.jobs import events

logger = logging.getLogger(__name__)


class PointNumbers:
    """The next seq numbers of one job, from the newest stored one on; steps already stored get none.

    Args:
        last_seq: the job's newest stored seq when this attempt's run starts.
        stored: the (step, split) of points stored after the step the run resumes from: a resumed run replays
            the steps an earlier attempt stored after its checkpoint, which must not be stored or pushed again.
    """

    def __init__(self, last_seq: int, stored: set[tuple[int, str]]):
        self.last_seq = last_seq
        self._stored = stored

    def number(self, point: dict[str, Any]) -> dict[str, Any] | None:
        """``point`` with its ``seq``, or None when that step is stored already."""
        if (point["step"], point["split"]) in self._stored:
            return None
        self.last_seq += 1
        return {**point, "seq": self.last_seq}


class LivePusher:
    """A thread sending metric points and job states to the job's watchers through webapp.jobs.events.

    Pushes are best-effort (the emitter never raises) and go out from this thread, so a slow or absent Redis
    never delays training or the database writes. Points queued while a send was in flight go out together
    in one message.
    """

    def __init__(self, job_id: Any):
        self.job_id = job_id
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"live-{job_id}", daemon=True)

    def start(self) -> LivePusher:
        self._thread.start()
        return self

    def points(self, points: list[dict[str, Any]]) -> None:
        """Push numbered points (in seq order)."""
        if points:
            self._queue.put(("points", points))

    def state(self, job) -> None:
        """Push the job's state (its row as just written)."""
        self._queue.put(("state", job))

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while True:  # whatever piled up during the last send goes out in as few messages as possible
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stopping = batch[-1] is None
            self._send([item for item in batch if item is not None])

    def _send(self, batch: list[tuple[str, Any]]) -> None:
        points: list[dict[str, Any]] = []
        for kind, payload in batch:
            if kind == "points":
                points.extend(payload)
            else:  # a state goes out after the points queued before it
                self._emit(events.emit_metrics, self.job_id, points)
                points = []
                self._emit(events.emit_state, payload)
        self._emit(events.emit_metrics, self.job_id, points)  # nothing is sent for no points

    def _emit(self, emit, *args: Any) -> None:
        try:
            emit(*args)
        except Exception:  # noqa: BLE001 - the emitter never raises by contract; belt and braces
            logger.exception("job %s: live update failed", self.job_id)

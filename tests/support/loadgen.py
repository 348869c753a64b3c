"""Load for the web server, shared by the load test and the benchmarks: closed-loop keep-alive HTTP clients,
websocket watchers of a job, and a job emitting steps through the real recorder.

Everything that measures runs in the calling process, so a step's end (the emitter's thread) and its arrival
at a watcher (the event loop) are read on the same clock (``time.perf_counter``). Latencies are in ms;
percentiles are nearest-rank on the sorted values.

    result = asyncio.run(closed_loop(base_url, ["/v1/fine_tuning/jobs?limit=20"], clients=50, seconds=10,
                                     headers={"Authorization": f"Bearer {key}"}))
    result.p95, result.failures

    sockets = await open_watchers(ws_url, origin=base_url, count=100)
    emitter = StepEmitter(job, steps=150, rate=20).start()
    arrivals = await watch_all(sockets, steps=150)
    emitter.join()
    latencies = arrival_latencies_ms(arrivals, emitter.step_end)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile of ``values`` (nearest rank); NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


@dataclass
class LoadResult:
    """What a closed-loop run saw: every request's latency (ms) and every failure (a status or an error)."""

    clients: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # the path of each latency, in the same order
    failures: list[str] = field(default_factory=list)

    def for_path(self, path: str) -> LoadResult:
        """The requests for ``path`` alone (its failures included)."""
        return LoadResult(self.clients, self.seconds,
                          [ms for ms, p in zip(self.latencies_ms, self.paths, strict=True) if p == path],
                          [path] * self.paths.count(path), [f for f in self.failures if f.startswith(f"GET {path}:")])

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p95(self) -> float:
        return percentile(self.latencies_ms, 95)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    def summary(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests": self.requests, "rps": round(self.rps, 1),
                "p50_ms": round(self.p50, 1), "p95_ms": round(self.p95, 1), "p99_ms": round(self.p99, 1),
                "failures": len(self.failures)}


# ---------------------------------------------------------------------------------------------------------
# HTTP


class KeepAliveConnection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams: little CPU, so the server is what is measured."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of ``GET path``. A kept-alive connection the server closed meanwhile (its idle timeout)
        is opened again and the request sent once more, as browsers do; any other failure raises."""
        if self.writer is not None:
            try:
                return await self._get(path)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise  # the server had started answering: a real failure
                await self.close()
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return await self._get(path)

    async def _get(self, path: str) -> tuple[int, bytes]:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.extra}\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = await self._chunked()
        else:
            body = await self.reader.read()
            await self.close()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            parts.append((await self.reader.readexactly(size + 2))[:-2])
            if size == 0:
                return b"".join(parts)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def closed_loop(base_url: str, paths: Sequence[str], clients: int, seconds: float,
                      headers: dict[str, str] | None = None, stop: asyncio.Event | None = None) -> LoadResult:
    """``clients`` keep-alive clients, each sending its next GET as soon as the last one answered, for ``seconds``
    (or until ``stop`` is set). Client i asks for ``paths`` in turn from ``paths[i % len(paths)]``; each client's
    first request (connecting, warming up) is not measured. Anything but a 200 is a failure."""
    result = LoadResult(clients=clients, seconds=0.0)
    stop_at = time.perf_counter() + seconds

    def running() -> bool:
        return time.perf_counter() < stop_at and not (stop is not None and stop.is_set())

    async def client(index: int) -> None:
        connection = KeepAliveConnection(base_url, headers)
        turn = index
        try:
            await connection.get(paths[turn % len(paths)])
            while running():
                path = paths[turn % len(paths)]
                turn += 1
                started = time.perf_counter()
                try:
                    status, _ = await connection.get(path)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.failures.append(f"GET {path}: {exc!r}")
                    await connection.close()
                    continue
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.paths.append(path)
                if status != 200:
                    result.failures.append(f"GET {path}: {status}")
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------------------
# Websockets


async def open_watchers(url: str, origin: str, count: int, concurrent_handshakes: int = 10,
                        open_timeout: float = 60.0) -> list[Any]:
    """``count`` websockets on a job (``ws/jobs/<id>/?key=...``), each past its first message (the job's state,
    sent once the socket has joined the job's group). Handshakes go ``concurrent_handshakes`` at a time: each
    one authenticates against the database, and a hundred at once on a loaded 2-core box time out."""
    import websockets

    gate = asyncio.Semaphore(concurrent_handshakes)

    async def one() -> Any:
        async with gate:
            socket = await websockets.connect(url, origin=origin, max_size=None, open_timeout=open_timeout)
            first = json.loads(await asyncio.wait_for(socket.recv(), timeout=open_timeout))
            if first.get("type") != "state":
                raise AssertionError(f"the first message was not the job's state: {first}")
            return socket

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def collect_train_points(socket: Any, steps: int, timeout: float = 30.0) -> list[tuple[int, float]]:
    """(step, arrival time) of each train point pushed to ``socket`` until it has ``steps`` of them (or nothing
    came for ``timeout`` s: then what arrived so far). Closes the socket."""
    arrivals: list[tuple[int, float]] = []
    try:
        while len(arrivals) < steps:
            try:
                message = json.loads(await asyncio.wait_for(socket.recv(), timeout=timeout))
            except TimeoutError:
                break
            now = time.perf_counter()
            if message.get("type") == "points":
                arrivals += [(point["step"], now) for point in message["points"] if point["split"] == "train"]
    finally:
        await socket.close()
    return arrivals


async def watch_all(sockets: Sequence[Any], steps: int, timeout: float = 30.0) -> list[list[tuple[int, float]]]:
    """:func:`collect_train_points` on every socket at once: one list of arrivals per watcher."""
    return list(await asyncio.gather(*(collect_train_points(s, steps, timeout) for s in sockets)))


def arrival_latencies_ms(arrivals: Sequence[Sequence[tuple[int, float]]], step_end: dict[int, float]) -> list[float]:
    """Every point's step end → arrival latency (ms), all watchers together, sorted."""
    return sorted((arrived - step_end[step]) * 1000 for watcher in arrivals for step, arrived in watcher)


def complete(arrivals: Sequence[Sequence[tuple[int, float]]], steps: int) -> bool:
    """Every watcher got every step 1..steps exactly once."""
    return all(sorted(step for step, _ in watcher) == list(range(1, steps + 1)) for watcher in arrivals)


# ---------------------------------------------------------------------------------------------------------
# A job emitting steps


def step_record(step: int, total: int):
    """A lora_engine StepMetrics shaped like a real run's."""
    from lora_engine.callbacks import StepMetrics

    return StepMetrics(step=step, total_steps=total, epoch=step / total, loss=2.0 / step ** 0.1, learning_rate=2e-4,
                       grad_norm=1.0, tokens_seen=step * 512, tokens_per_second=10_000.0, elapsed_seconds=step * 0.05,
                       eta_seconds=(total - step) * 0.05, memory_allocated_bytes=1 << 30, memory_peak_bytes=1 << 31)


class StepEmitter:
    """Ends a 'training step' every 1/rate seconds in a thread and hands it to the worker's recorder (the job is
    claimed with a lease, as a worker does: the points are pushed live and stored in batches), or straight to
    the emitter (``through_recorder=False``). ``step_end[step]`` is when each step ended (perf_counter).

    The job must be queued (it is claimed); with ``through_recorder=False`` any job will do.
    """

    def __init__(self, job: Any, steps: int, rate: float, through_recorder: bool = True):
        self.job, self.steps, self.rate, self.through_recorder = job, steps, rate, through_recorder
        self.step_end: dict[int, float] = {}
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run_safely, name=f"emitter-{job.pk}", daemon=True)

    def start(self) -> StepEmitter:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def _run_safely(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in join()
            self.error = exc
        finally:
            from django.db import connection

            connection.close()  # this thread's connection: a test database must be droppable afterwards

    def run(self) -> None:
        from lora_engine.callbacks import RunInfo
        from webapp.jobs import events

        recorder = None
        if self.through_recorder:
            from webapp.jobs.leases import claim_job
            from webapp.lib.leased_work import new_lease_owner
            from worker.recorder import JobRecorder

            lease = claim_job(self.job.pk, new_lease_owner())
            if lease is None:
                raise RuntimeError(f"job {self.job.pk} could not be claimed (is it queued?)")
            recorder = JobRecorder(lease).start()
            recorder.on_train_start(RunInfo(total_steps=self.steps, start_step=0, trainable_params=1, total_params=1,
                                            adapter_bytes=1, train_rows=1, eval_rows=0, device="cpu"))
        interval = 1.0 / self.rate
        next_at = time.perf_counter()
        try:
            for step in range(1, self.steps + 1):
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
                self.step_end[step] = time.perf_counter()
                if recorder is not None:
                    recorder.on_step(step_record(step, self.steps))
                else:
                    values = step_record(step, self.steps).to_dict()
                    events.emit_metrics(self.job.pk, [{"seq": step, "step": step, "split": "train",
                                                       "values": values}])
        finally:
            if recorder is not None:
                recorder.close()

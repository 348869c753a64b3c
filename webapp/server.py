"""The web server: uvicorn serving ``webapp.asgi:application`` (pages, both APIs and the websockets).

    python -m webapp.server [--host 127.0.0.1] [--port 8000] [--workers N] [--reload]

Why uvicorn: it hands Django a request body as it arrives (spooled to a temporary file past 5 MB, in
FILE_UPLOAD_TEMP_DIR on the data disk, and refused with 413 past the limit of the view it is for:
webapp/lib/asgi_body.py), so a 1 GB ``POST /v1/files`` costs the server a few MB of memory, not 1 GB; and
it runs several worker processes on one address, so the web side is not held to one core.

Worker processes: ``--workers``, else ``WEB_CONCURRENCY``, else 1. One suits ``make run`` and a small team:
each process imports torch with the views (about 300 MB resident). Set WEB_CONCURRENCY to the number of
cores for many concurrent API clients or watchers; live pushes reach every process (Redis pub/sub), so a
page may be served by any of them.

Each worker process listens on a socket of its own bound to the same address (SO_REUSEPORT, where the system
has it), so the kernel spreads new connections evenly over the processes. uvicorn's supervisor hands every
worker the one listening socket it bound, and whichever process is idle at the moment accepts: a burst of
keep-alive connections (a dashboard's clients, a load balancer's pool) then piled onto one process while the
other idled, and with 50 API clients on two processes the p95 latency was 109–137 ms where even spreading gives
77–80 ms (docs/BENCHMARKS.md, api-load). The supervisor's own socket is bound but never listens: it keeps the
address while workers come and go, and receives no connections.

uvloop and httptools are used when installed (requirements.txt pins both; uvicorn falls back to asyncio and
h11 without them). No access log: a line per request costs CPU under load (a reverse proxy logs requests).
A worker process gets ``WORKER_START_SECONDS`` to answer uvicorn's health check: importing torch and Django
on a slow 2-core machine can take far longer than uvicorn's default 5 s, and a worker not answering in time
is killed and started again, for ever.

The processes it starts are marked (``LORA_STUDIO_WEB_SERVER=1``) so that the settings give them a pool of
``DB_POOL_SIZE`` PostgreSQL connections each (Celery workers keep their own connection handling).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from uvicorn.supervisors import Multiprocess, multiprocess

APP = "webapp.asgi:application"
WORKER_START_SECONDS = 120
GRACEFUL_SHUTDOWN_SECONDS = 10
WEB_SERVER_FLAG = "LORA_STUDIO_WEB_SERVER"


def worker_count(requested: int | None = None) -> int:
    """``requested``, else ``WEB_CONCURRENCY``, else 1 (at least 1)."""
    if requested is None:
        configured = os.environ.get("WEB_CONCURRENCY", "").strip()
        requested = int(configured) if configured else 1
    return max(1, requested)


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int | None = None, reload: bool = False) -> None:
    """Run uvicorn in the foreground until SIGINT/SIGTERM (one process, or a supervisor and its workers)."""
    import uvicorn

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    os.environ[WEB_SERVER_FLAG] = "1"  # the settings give web processes a database connection pool
    options = dict(
        host=host,
        port=port,
        workers=None if reload else worker_count(workers),
        reload=reload,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        ws="auto",  # websockets (sans-I/O)
        ws_per_message_deflate=False,  # small JSON pushes to many sockets: compressing each costs more than it saves
        lifespan="off",  # Django's ASGI handler has no lifespan events
        access_log=False,
        timeout_worker_healthcheck=WORKER_START_SECONDS,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    if options["workers"] and options["workers"] > 1 and hasattr(socket, "SO_REUSEPORT"):
        config = uvicorn.Config(APP, **options)
        address = reuse_port_socket(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))
        logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d with %d worker processes, a "
                                                "listening socket each", host, address.getsockname()[1],
                                                config.workers)
        multiprocess.Process = OwnSocketProcess  # how uvicorn's supervisor makes (and remakes) its workers
        Multiprocess(config, sockets=[address]).run()
    else:
        uvicorn.run(APP, **options)


def reuse_port_socket(family: socket.AddressFamily, address: tuple) -> socket.socket:
    """A TCP socket bound to ``address`` with SO_REUSEPORT, not listening yet (sockets bound so by one user
    share the address; the kernel spreads connections over those that listen)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


class OwnSocketProcess(multiprocess.Process):
    """A uvicorn worker process that listens on a socket of its own at the supervisor's address."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        own = []
        for shared in sockets or []:
            own.append(reuse_port_socket(shared.family, shared.getsockname()[:2]))
            shared.close()
        super().target(own)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: WEB_CONCURRENCY or 1)")
    parser.add_argument("--reload", action="store_true", help="restart on code changes (development; one process)")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.workers, args.reload)
    return 0


if __name__ == "__main__":
    sys.exit(main())

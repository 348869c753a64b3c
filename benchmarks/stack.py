"""The real stack for the dashboard benchmarks: a throwaway PostgreSQL database, Redis, Django, uvicorn.

Call :func:`prepare` before importing anything from webapp: it points DATABASE_URL at a new database
(``lora_bench_<name>_<pid>``, created on the server of ``--pg``), REDIS_URL at a Redis database of the
benchmarks' own (so a benchmark's Celery worker never takes a message meant for someone's test worker)
and DATA_DIR at a temporary directory, then sets Django up and applies the migrations. :meth:`Stack.close`
drops the database unless ``--keep-db`` was given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/11"


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the stack")
    group.add_argument("--pg", default=os.environ.get("BENCH_PG_URL", DEFAULT_PG),
                       help="a PostgreSQL server URL (any database on it) where the throwaway database is created")
    group.add_argument("--database", default=None,
                       help="use this database name instead of a new throwaway one (created if missing, kept)")
    group.add_argument("--keep-db", action="store_true", help="do not drop the throwaway database at the end")
    group.add_argument("--redis", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS),
                       help="Redis URL for Celery and Channels (a database number of the benchmarks' own)")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def _admin_execute(pg_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(statement)


def database_exists(pg_url: str, name: str) -> bool:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


@dataclass
class Stack:
    """What :func:`prepare` set up."""

    pg_url: str
    database: str
    database_url: str
    redis_url: str
    data_dir: Path
    keep_db: bool
    created_db: bool
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lora-bench-work-")))

    def close(self) -> None:
        from django.db import connections

        connections.close_all()
        if self.created_db and not self.keep_db:
            _admin_execute(self.pg_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        elif self.created_db:
            print(f"kept database {self.database} ({self.database_url})")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.work_dir, ignore_errors=True)


def prepare(name: str, args: argparse.Namespace, migrate: bool = True) -> Stack:
    """Create (or reuse) the database, set the environment, ``django.setup()`` and migrate."""
    database = args.database or f"lora_bench_{name}_{os.getpid()}_{uuid.uuid4().hex[:4]}"
    created = False
    if not database_exists(args.pg, database):
        _admin_execute(args.pg, f'CREATE DATABASE "{database}"')
        created = args.database is None
    data_dir = Path(tempfile.mkdtemp(prefix=f"lora-bench-{name}-data-"))
    database_url = _with_database(args.pg, database)
    os.environ.update({"DATABASE_URL": database_url, "REDIS_URL": args.redis, "DATA_DIR": str(data_dir),
                       "DJANGO_SETTINGS_MODULE": "webapp.settings.local", "LOG_LEVEL": "WARNING"})
    stack = Stack(args.pg, database, database_url, args.redis, data_dir, args.keep_db or args.database is not None,
                  created)
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
    return stack


def make_user(username: str = "bench"):
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def session_cookie_for(user) -> str:
    """A logged-in session for ``user`` (what the browser holds after signing in): the sessionid value."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def read_rss(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes of a process, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _unit = line.split()
                values[key[:-1]] = int(amount) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)

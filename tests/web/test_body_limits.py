"""The web server refuses a request body past the limit of the view it is for, and spools a large body to disk
only for a signed-in user (webapp/lib/body_limits.py, webapp/lib/asgi_body.py).

These call the server's application (webapp.asgi) the way uvicorn does, and watch what it receives and what it
keeps under FILE_UPLOAD_TEMP_DIR while the body arrives.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from dataclasses import dataclass, field

import pytest
from asgiref.sync import async_to_sync
from django.urls import URLResolver, get_resolver

from tests.support.data import CHAT_ROWS, jsonl
from tests.support.disk import files_under
from webapp.accounts.keys import create_api_key
from webapp.accounts.scope_auth import signed_in
from webapp.asgi import application
from webapp.datasets.models import Dataset
from webapp.datasets.uploads import CHUNK_BYTES
from webapp.lib.asgi_body import ANONYMOUS_BODY_BYTES
from webapp.lib.body_limits import FRAMING_BYTES, body_limit

from .test_asgi_body import bearer, multipart, open_files_under, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

MEMORY = 1024  # both memory limits: bodies past this are spooled (or refused)
PIECE = 4096  # bytes per body message


@dataclass
class Exchange:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    pieces_received: int  # how many body messages the application asked for
    spooled_while_receiving: list[list[str]] = field(default_factory=list)  # open spool files before each piece

    def error(self) -> dict:
        return json.loads(self.body)["error"]


def send(path: str, body: bytes, headers: list[tuple[bytes, bytes]], declare_length: bool = True,
         spool: str | None = None, declared: int | None = None) -> Exchange:
    """POST ``body`` to the application in PIECE-sized messages, with a Content-Length (``declared`` if given,
    else the body's length) unless ``declare_length`` is false (a chunked body). Records what was spooled under
    ``spool`` before each piece is handed over."""
    pieces = [body[i:i + PIECE] for i in range(0, len(body), PIECE)] or [b""]
    messages = [{"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
                for i, piece in enumerate(pieces)]
    sent: list[dict] = []
    seen: list[list[str]] = []
    answered = asyncio.Event()
    received = 0

    async def receive() -> dict:
        nonlocal received
        if received == len(messages):  # the client waits for the answer, then goes away
            await answered.wait()
            return {"type": "http.disconnect"}
        if spool is not None:
            seen.append(open_files_under(spool))
        received += 1
        return messages[received - 1]

    async def send_message(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    all_headers = [(b"host", b"testserver"), *headers]
    if declare_length:
        all_headers.append((b"content-length", str(len(body) if declared is None else declared).encode()))
    else:
        all_headers.append((b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": all_headers,
             "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    async_to_sync(application)(scope, receive, send_message)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Exchange(start["status"], {k.lower(): v for k, v in start["headers"]},
                    b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"), received, seen)


@pytest.fixture
def spool(settings, tmp_path):
    """A spool directory of its own, and small memory limits, so the bodies below would be spooled."""
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = MEMORY
    settings.FILE_UPLOAD_TEMP_DIR = directory = tmp_path / "spool"
    directory.mkdir()
    return directory


def nothing_left(spool) -> bool:
    return open_files_under(spool) == [] and files_under(spool) == []


@pytest.mark.parametrize("path", ["/v1/files", "/adapters/upload/", "/datasets/upload/"])
def test_a_content_length_past_the_upload_limit_is_a_413_before_anything_is_received(owner, owner_key, settings,
                                                                                      spool, path):
    settings.MAX_UPLOAD_BYTES = 20 * 1024**3
    credentials = bearer(owner_key) if path.startswith("/v1/") else session_cookie(owner)

    answer = send(path, b"x" * PIECE, [credentials, (b"content-type", b"multipart/form-data; boundary=b")],
                  declared=20 * 1024**3 + FRAMING_BYTES + 1, spool=spool)

    assert answer.status == 413, answer.body[:300]
    assert answer.pieces_received == 0  # not one byte taken from the client
    assert answer.headers[b"connection"] == b"close"  # the unread rest is not waited for
    message = answer.error()["message"] if path.startswith("/v1/") else answer.body.decode()
    assert "upload limit of 21,474,836,480 bytes (MAX_UPLOAD_BYTES" in message
    if path.startswith("/v1/"):
        assert answer.error()["code"] == "request_too_large"
    assert nothing_left(spool)


def test_a_chunked_body_growing_past_the_upload_limit_is_dropped_there_and_answered_413(owner_key, settings, spool):
    settings.MAX_UPLOAD_BYTES = 4 * PIECE
    limit = settings.MAX_UPLOAD_BYTES + FRAMING_BYTES
    body = b"x" * (limit + 3 * PIECE)

    answer = send("/v1/files", body, [bearer(owner_key)], declare_length=False, spool=spool)

    assert answer.status == 413, answer.body[:300]
    assert answer.error()["code"] == "request_too_large"
    assert str(f"{settings.MAX_UPLOAD_BYTES:,}") in answer.error()["message"]
    assert answer.pieces_received == -(-(limit + 1) // PIECE)  # stopped at the piece that passed the limit
    assert len(answer.spooled_while_receiving[-1]) == 1  # it was being spooled until then ...
    assert nothing_left(spool)  # ... and its spool is gone with it
    assert answer.headers[b"connection"] == b"close"


def test_an_upload_of_exactly_max_upload_bytes_is_stored(owner, owner_key, settings, spool):
    """(With a Content-Length: Django reads no multipart form without one.)"""
    content = jsonl(CHAT_ROWS * 20)
    settings.MAX_UPLOAD_BYTES = len(content)  # the file is exactly at the limit; the form around it adds framing
    content_type, body = multipart("fine-tune", content)

    answer = send("/v1/files", body, [bearer(owner_key), (b"content-type", content_type.encode())], spool=spool)

    assert answer.status == 200, answer.body[:500]
    assert any(answer.spooled_while_receiving)  # a signed-in user's large body is spooled
    assert Dataset.objects.get(owner=owner).path.read_bytes() == content
    assert nothing_left(spool)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("credentials", [None, bearer("lsk-not-a-key")], ids=["anonymous", "bad-key"])
def test_an_anonymous_large_upload_is_refused_without_spooling_it(settings, spool, declare_length, credentials):
    content_type, body = multipart("fine-tune", jsonl(CHAT_ROWS * 20))
    headers = [(b"content-type", content_type.encode())] + ([credentials] if credentials else [])

    answer = send("/v1/files", body, headers, declare_length=declare_length, spool=spool)

    assert answer.status == 401, answer.body[:300]
    assert answer.error()["code"] == "invalid_api_key"
    assert all(seen == [] for seen in answer.spooled_while_receiving)  # never on disk, not even for a moment
    # with a Content-Length nothing is received; without one, no more than fits in memory
    assert answer.pieces_received == (0 if declare_length else -(-(MEMORY + 1) // PIECE))
    assert nothing_left(spool) and not Dataset.objects.exists()


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_an_anonymous_body_past_64_kib_is_not_held_in_memory(owner_key, declare_length):
    """Under the 5 MB in-memory limit too: an anonymous client gets the login answer after at most 64 KiB, so it
    cannot make the process hold 5 MB per connection; a signed-in one reaches the view."""
    body = json.dumps({"model": "x", "training_file": "file-x", "padding": "x" * 200_000}).encode()
    json_type = (b"content-type", b"application/json")

    anonymous = send("/v1/fine_tuning/jobs", body, [json_type], declare_length=declare_length)
    assert anonymous.status == 401 and anonymous.error()["code"] == "invalid_api_key"
    assert anonymous.pieces_received == (0 if declare_length else -(-(ANONYMOUS_BODY_BYTES + 1) // PIECE))
    login = send("/accounts/login/", body, [(b"content-type", b"application/x-www-form-urlencoded")])
    assert login.status == 302 and login.pieces_received == 0

    signed_in_answer = send("/v1/fine_tuning/jobs", body, [bearer(owner_key), json_type], declare_length=declare_length)
    assert signed_in_answer.status == 400 and "padding" in signed_in_answer.error()["message"]  # the view's answer


def test_an_anonymous_large_page_upload_is_sent_to_the_login_page(spool):
    content_type, body = multipart("fine-tune", jsonl(CHAT_ROWS * 20))

    answer = send("/adapters/upload/", body, [(b"content-type", content_type.encode())], spool=spool)

    assert answer.status == 302
    assert answer.headers[b"location"] == b"/accounts/login/?next=/adapters/upload/"
    assert answer.pieces_received == 0 and nothing_left(spool)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_a_6_mb_body_to_a_view_that_takes_no_upload_is_a_413(owner_key, settings, tmp_path, declare_length):
    settings.FILE_UPLOAD_TEMP_DIR = spool = tmp_path / "spool"
    spool.mkdir()
    body = json.dumps({"model": "x", "training_file": "file-x", "padding": "x" * 6_000_000}).encode()

    answer = send("/v1/fine_tuning/jobs", body, [bearer(owner_key), (b"content-type", b"application/json")],
                  declare_length=declare_length, spool=spool)

    assert answer.status == 413, answer.body[:300]
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert answer.error()["message"].startswith(f"The request body is larger than {limit:,} bytes")
    assert answer.pieces_received == (0 if declare_length else -(-(limit + 1) // PIECE))
    assert all(seen == [] for seen in answer.spooled_while_receiving)  # held in memory, never spooled
    assert nothing_left(spool)


def test_a_page_view_past_its_limit_gets_a_plain_413(owner, settings):
    answer = send("/datasets/uploads/abc/chunk", b"x", [session_cookie(owner)],
                  declared=settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)

    assert answer.status == 413
    assert answer.headers[b"content-type"].startswith(b"text/plain")
    assert b"is larger than 5,242,880 bytes, the limit for this URL" in answer.body


def test_the_data_set_pages_chunks_fit_their_limit(settings):
    scope = {"type": "http", "path": "/datasets/uploads/abc/chunk", "root_path": "", "headers": []}
    assert body_limit(scope).max_bytes >= CHUNK_BYTES
    assert not body_limit(scope).upload


def test_signed_in_is_what_the_middleware_decides(owner, stranger):
    def scope_with(*headers: tuple[bytes, bytes]) -> dict:
        return {"type": "http", "headers": list(headers)}

    _, stranger_key = create_api_key(stranger)
    assert signed_in(scope_with(session_cookie(owner)))
    assert signed_in(scope_with(bearer(stranger_key)))
    assert not signed_in(scope_with())
    assert not signed_in(scope_with((b"cookie", b"sessionid=not-a-session")))
    assert not signed_in(scope_with(bearer("lsk-not-a-key")))

    ended = session_cookie(owner)
    owner.set_password("a-new-password-1234")  # a password change ends the user's other sessions
    owner.save()
    assert not signed_in(scope_with(ended))
    stranger.is_active = False
    stranger.save()
    assert not signed_in(scope_with(bearer(stranger_key)))


def test_every_module_of_views_that_read_files_marks_its_upload_views():
    """A view that reads ``request.FILES`` without the mark would get a 413 past 5 MB: a module of views that
    reads it must mark at least one of its views ``accepts_upload``."""
    views_by_module: dict[str, list] = {}

    def collect(patterns) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                collect(pattern.url_patterns)
            else:
                views_by_module.setdefault(inspect.unwrap(pattern.callback).__module__, []).append(pattern.callback)

    collect(get_resolver().url_patterns)
    reading_files = [module for module in views_by_module  # (the admin's models have no file fields)
                     if module.startswith("webapp.") and "request.FILES" in inspect.getsource(sys.modules[module])]
    assert {"webapp.api.views.files", "webapp.adapters.views", "webapp.datasets.views"} <= set(reading_files)
    unmarked = [module for module in reading_files
                if not any(getattr(view, "accepts_upload", False) for view in views_by_module[module])]
    assert unmarked == []

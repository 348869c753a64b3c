"""Request bodies the web server receives are spooled under FILE_UPLOAD_TEMP_DIR (the data disk), not in the
system temporary directory; a body that fills that disk is answered 507 with the disk-full message.

Django's test client does not go through the ASGI handler, so these tests call the server's application
(webapp.asgi) the way uvicorn does: the body arrives in chunks.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from tests.support.data import CHAT_ROWS, jsonl
from tests.support.disk import files_under, fill_up
from webapp.asgi import application
from webapp.datasets.models import Dataset
from webapp.datasets.uploads import CHUNK_BYTES
from webapp.lib.asgi_body import DataDirASGIHandler

MEMORY = 1024  # both memory limits here: the uploads below are larger, so they are spooled to disk
CHUNKS = 4


def multipart(purpose: str, content: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", body


def bearer(api_key: str) -> tuple[bytes, bytes]:
    return b"authorization", f"Bearer {api_key}".encode()


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()


def open_files_under(directory: Path) -> list[str]:
    """What this process has open under ``directory`` (a spooled body has no name, but its descriptor says where
    it is)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def post(path: str, content_type: str, body: bytes, credentials: tuple[bytes, bytes],
         before_last_chunk=lambda: None) -> tuple[int, bytes]:
    """POST ``body`` to the server's application in CHUNKS messages; ``before_last_chunk()`` runs just before the
    last one is handed over (everything else is spooled by then). Returns (status, response body)."""
    size = -(-len(body) // CHUNKS)
    messages = [{"type": "http.request", "body": body[i:i + size], "more_body": i + size < len(body)}
                for i in range(0, len(body), size)]
    sent: list[dict] = []
    answered = asyncio.Event()

    async def receive() -> dict:
        if not messages:  # the client waits for the answer, then goes away
            await answered.wait()
            return {"type": "http.disconnect"}
        if len(messages) == 1:
            before_last_chunk()
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            answered.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", content_type.encode()),
                         (b"content-length", str(len(body)).encode()),
                         credentials],
             "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    async_to_sync(application)(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_large_upload_is_spooled_under_file_upload_temp_dir(transactional_db, owner, owner_key, settings,
                                                             tmp_path):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = MEMORY
    settings.FILE_UPLOAD_TEMP_DIR = spool = tmp_path / "uploads"
    spool.mkdir()
    content = jsonl(CHAT_ROWS * 20)
    assert len(content) > 4 * MEMORY
    seen_while_receiving: list[list[str]] = []

    status, answer = post("/v1/files", *multipart("fine-tune", content), bearer(owner_key),
                          before_last_chunk=lambda: seen_while_receiving.append(open_files_under(spool)))

    assert status == 200, answer[:500]
    assert len(seen_while_receiving[0]) == 1, seen_while_receiving  # the body, spooled in FILE_UPLOAD_TEMP_DIR
    assert Dataset.objects.get(owner=owner).path.read_bytes() == content
    assert open_files_under(spool) == [] and files_under(spool) == []  # nothing left behind


@pytest.mark.parametrize("path", ["/v1/files", "/datasets/upload/"])
def test_a_body_that_fills_the_disk_while_spooled_is_a_507(transactional_db, owner, owner_key, settings,
                                                           small_disk, tmp_path, path):
    disk = small_disk(tmp_path / "disk", 256)
    settings.DATA_DIR, settings.FILE_UPLOAD_TEMP_DIR = disk, disk / "tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = MEMORY
    fill_up(disk)
    before = files_under(disk)
    # the API with its key; the page as a browser sends it (its CSRF token is in the body nobody could store)
    credentials = bearer(owner_key) if path.startswith("/v1/") else session_cookie(owner)

    status, answer = post(path, *multipart("fine-tune", jsonl(CHAT_ROWS * 20)), credentials)

    assert status == 507, answer[:500]
    assert b"The server&#x27;s disk is full" in answer or b"The server's disk is full" in answer, answer[:500]
    assert b'"code": "disk_full"' in answer if path.startswith("/v1/") else b"<html" in answer  # the page
    assert files_under(disk) == before and not Dataset.objects.exists()


def test_a_body_up_to_the_data_upload_limit_stays_in_memory(settings, tmp_path):
    """The data set page's upload chunks (4 MB, under DATA_UPLOAD_MAX_MEMORY_SIZE): the view streams them into
    the upload file, so spooling them first would write every byte twice. One byte more is spooled."""
    settings.FILE_UPLOAD_TEMP_DIR = spool = tmp_path / "uploads"
    spool.mkdir()
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    assert limit >= CHUNK_BYTES > settings.FILE_UPLOAD_MAX_MEMORY_SIZE

    def spooled(size: int) -> list[str]:
        messages = [{"type": "http.request", "body": b"x" * (size - 1), "more_body": True},
                    {"type": "http.request", "body": b"x", "more_body": False}]
        seen: list[str] = []

        async def receive() -> dict:
            if len(messages) == 1:
                seen.extend(open_files_under(spool))
            return messages.pop(0)

        body = async_to_sync(DataDirASGIHandler().read_body)(receive)
        assert len(body.read()) == size
        body.close()
        return seen

    assert spooled(limit) == []
    assert len(spooled(limit + 2)) == 1

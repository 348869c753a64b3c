"""A big upload through the real server streams to disk: the server's peak memory barely moves.

The file is sent the way the page sends it (chunked requests), and in one multipart ``POST /v1/files`` (which
the web server must stream to Django: a server buffering whole bodies grows by the file's size). W1_UPLOAD_MB
sets the size (default 64 MB; the product promise is "a 1 GB file raises the server's memory by less than
~100 MB": try W1_UPLOAD_MB=1024).
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.support.processes import start_asgi_server
from webapp.datasets.models import Dataset

UPLOAD_MB = int(os.environ.get("W1_UPLOAD_MB", "64"))
MAX_GROWTH_MB = 100 if UPLOAD_MB >= 1024 else 40
LINE = (json.dumps({"text": "The quick brown fox jumps over the lazy dog. " * 20}) + "\n").encode()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def write_lines(fh, megabytes: int) -> int:
    """Append about ``megabytes`` MiB of JSONL lines to ``fh``; returns the bytes written."""
    block = LINE * 1000
    blocks = megabytes * 1024 * 1024 // len(LINE) // 1000
    for _ in range(blocks):
        fh.write(block)
    return blocks * len(block)


def make_file(path: Path, megabytes: int) -> int:
    with open(path, "wb") as fh:
        return write_lines(fh, megabytes)


class Browserless:
    """urllib with a cookie jar: logs in like a browser and sends the page's chunked-upload requests."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def post(self, path: str, body: bytes, content_type: str) -> dict:
        request = urllib.request.Request(f"{self.base_url}{path}", data=body, method="POST", headers={
            "Content-Type": content_type, "X-CSRFToken": self.csrf(), "Referer": self.base_url + "/"})
        with self.opener.open(request, timeout=600) as response:
            return json.loads(response.read() or b"{}")

    def log_in(self, username: str) -> None:
        self.opener.open(f"{self.base_url}/accounts/login/").read()
        form = urllib.parse.urlencode({"username": username, "password": PASSWORD,
                                       "csrfmiddlewaretoken": self.csrf()}).encode()
        request = urllib.request.Request(f"{self.base_url}/accounts/login/", data=form,
                                         headers={"Referer": self.base_url + "/"})
        with self.opener.open(request) as response:
            assert "/accounts/login/" not in response.url, "the login failed"


@pytest.mark.slow
@pytest.mark.stack
def test_a_big_upload_does_not_grow_the_servers_memory(transactional_db, owner, tmp_path):
    data_file = tmp_path / "big.jsonl"
    size = make_file(data_file, UPLOAD_MB)
    server, base_url = start_asgi_server(tmp_path, PYTHONWARNINGS="ignore")
    try:
        client = Browserless(base_url)
        client.log_in(owner.username)
        before = peak_rss_mb(server.pid)
        started = client.post("/datasets/uploads/", json.dumps({"name": "big.jsonl", "size": size}).encode(),
                              "application/json")
        with open(data_file, "rb") as fh:
            offset = 0
            while chunk := fh.read(started["chunk_bytes"]):
                answer = client.post(f"/datasets/uploads/{started['id']}/chunk?offset={offset}", chunk,
                                     "application/octet-stream")
                offset = answer["received"]
        finished = client.post(f"/datasets/uploads/{started['id']}/finish", b"{}", "application/json")
        growth = peak_rss_mb(server.pid) - before
        dataset = Dataset.objects.get()
        assert finished["rows"] == dataset.rows > 0 and dataset.size_bytes == size
        assert growth < MAX_GROWTH_MB, f"the server's peak memory grew by {growth:.0f} MB for a {UPLOAD_MB} MB file"
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.stack
def test_a_big_v1_files_upload_is_streamed_not_buffered_by_the_server(transactional_db, owner, owner_key, tmp_path):
    boundary = "lora-studio-memory-test"
    body_path = tmp_path / "body.multipart"
    with open(body_path, "wb") as body:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
                   f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
                   f"Content-Type: application/octet-stream\r\n\r\n".encode())
        size = write_lines(body, UPLOAD_MB)
        body.write(f"\r\n--{boundary}--\r\n".encode())
    server, base_url = start_asgi_server(tmp_path, PYTHONWARNINGS="ignore")
    try:
        host, port = urllib.parse.urlsplit(base_url).netloc.split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=600)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        before = peak_rss_mb(server.pid)
        with open(body_path, "rb") as body:  # http.client sends a file in blocks: the client holds no copy either
            connection.request("POST", "/v1/files", body=body, headers={
                "Authorization": f"Bearer {owner_key}", "Content-Length": str(body_path.stat().st_size),
                "Content-Type": f"multipart/form-data; boundary={boundary}"})
            response = connection.getresponse()
            answer = json.loads(response.read())
        growth = peak_rss_mb(server.pid) - before
        print(f"POST /v1/files: the server's peak memory grew by {growth:.1f} MB for a {UPLOAD_MB} MB body")
        assert response.status == 200, answer
        dataset = Dataset.objects.get()
        assert answer["bytes"] == dataset.size_bytes == size and dataset.rows > 0
        assert growth < MAX_GROWTH_MB, f"the server's peak memory grew by {growth:.0f} MB for a {UPLOAD_MB} MB body"
    finally:
        server.stop()

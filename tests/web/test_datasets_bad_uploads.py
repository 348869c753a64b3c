"""Every bad upload gets a 4xx whose message names the problem (and the line), and leaves nothing stored."""

from __future__ import annotations

import json
import os

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from webapp.datasets.models import Dataset

from ._datasets_helpers import peer_file, stored_dataset_files, upload_in_chunks

CHAT_OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
NO_ANSWER = {"messages": [{"role": "user", "content": "is anyone there?"}]}


def lines(*rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


# (file name, content, words the message must contain)
BAD_DATA = [
    pytest.param("notjson.jsonl", lines(CHAT_OK) + b"{this is not json}\n", ["line 2", "JSON"], id="not-json-line"),
    pytest.param("notjson.json", b"[{\"text\": \"a\"}, this is not json]", ["line 1", "JSON"], id="not-json-array"),
    pytest.param("schema.jsonl", lines({"question": "a", "reply": "b"}), ["line 1", "unrecognised fields"],
                 id="wrong-schema"),
    pytest.param("noanswer.jsonl", lines(CHAT_OK, CHAT_OK, NO_ANSWER), ["line 3", "no answer"], id="no-answer"),
    pytest.param("noanswer.json", json.dumps([{"instruction": "a", "input": "", "output": "b"},
                                              {"instruction": "c", "input": "", "output": ""}], indent=1).encode(),
                 ["output", "empty"], id="alpaca-empty-output"),
    pytest.param("prose.json", b"hello, this is prose and not JSON", ["line 1", "JSON"], id="not-json-at-all"),
    pytest.param("latin1.jsonl", b'{"text": "caf\xe9"}\n', ["line 1", "UTF-8"], id="wrong-encoding-jsonl"),
    pytest.param("latin1.txt", "caf\u00e9 au lait\n".encode("latin-1"), ["line 1", "UTF-8"], id="wrong-encoding"),
    pytest.param("binary.jsonl", os.urandom(4096).replace(b"\n", b"") + b"\x00", ["binary"], id="binary-data"),
    pytest.param("fake.parquet", b"PAR1 this is not parquet", ["Parquet"], id="broken-parquet"),
    pytest.param("dpo_en_demo.json", None, ["preference data is not supported (yet)"], id="preference-data"),
]


@pytest.mark.parametrize(("name", "content", "words"), BAD_DATA)
def test_bad_data_is_refused_with_the_line(owner_client, name, content, words):
    content = peer_file(name) if content is None else content
    response = upload_in_chunks(owner_client, name, content, chunk_bytes=1024 * 1024)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    for word in words:
        assert word in error["message"], error
    assert error["problems"], "the page lists each problem"
    assert not Dataset.objects.exists() and stored_dataset_files() == []


@pytest.mark.parametrize(("name", "size", "words"), [
    pytest.param("empty.jsonl", 0, "The file is empty", id="empty-file"),
    pytest.param("data.xlsx", 10, "Unsupported file type '.xlsx'", id="unknown-type"),
    pytest.param("data", 10, "Unsupported file type '(none)'", id="no-suffix"),
    pytest.param("x" * 250 + ".jsonl", 10, "longer than 200 characters", id="over-long-name"),
    pytest.param("../../etc/passwd.jsonl", 10, "contains a path", id="path-in-name"),
    pytest.param("C:\\Users\\me\\data.jsonl", 10, "contains a path", id="windows-path-in-name"),
    pytest.param("big.jsonl", 10**15, "larger than the limit", id="too-large"),
])
def test_bad_names_and_sizes_are_refused_before_any_byte_is_sent(owner_client, name, size, words):
    response = owner_client.post("/datasets/uploads/", {"name": name, "size": size}, content_type="application/json")
    assert response.status_code == 400 and words in response.json()["error"]["message"], response.content
    assert stored_dataset_files() == []


def test_an_unknown_format_is_refused(owner_client):
    response = owner_client.post("/datasets/uploads/", {"name": "a.jsonl", "size": 5, "format": "yaml"},
                                 content_type="application/json")
    assert response.status_code == 400 and "Unknown format 'yaml'" in response.json()["error"]["message"]


def test_a_chosen_format_that_does_not_fit_is_refused(owner_client):
    response = upload_in_chunks(owner_client, "chat.jsonl", lines(CHAT_OK), data_format="alpaca")
    assert response.status_code == 400 and "line 1" in response.json()["error"]["message"]
    assert stored_dataset_files() == []


def test_chunks_past_the_declared_size_are_refused(owner_client, settings):
    started = owner_client.post("/datasets/uploads/", {"name": "a.jsonl", "size": 4},
                                content_type="application/json").json()
    response = owner_client.post(f"/datasets/uploads/{started['id']}/chunk?offset=0", b"12345678",
                                 content_type="application/octet-stream")
    assert response.status_code == 400 and "more than the declared size" in response.json()["error"]["message"]


def test_an_incomplete_upload_is_refused_and_removed(owner_client):
    started = owner_client.post("/datasets/uploads/", {"name": "a.jsonl", "size": 100},
                                content_type="application/json").json()
    owner_client.post(f"/datasets/uploads/{started['id']}/chunk?offset=0", b'{"text": "a"}\n',
                      content_type="application/octet-stream")
    response = owner_client.post(f"/datasets/uploads/{started['id']}/finish")
    assert response.status_code == 400 and "incomplete: 14 of 100 bytes" in response.json()["error"]["message"]
    assert not Dataset.objects.exists() and stored_dataset_files() == []


def test_a_garbled_start_request_is_refused(owner_client):
    for body in (b"not json", b"[1, 2]"):
        response = owner_client.post("/datasets/uploads/", body, content_type="application/json")
        assert response.status_code == 400 and "JSON object" in response.json()["error"]["message"]
    response = owner_client.post("/datasets/uploads/", {"name": "a.jsonl", "size": "lots"},
                                 content_type="application/json")
    assert response.status_code == 400 and "size must be" in response.json()["error"]["message"]


@pytest.mark.parametrize(("name", "content", "words"), [
    pytest.param("empty.jsonl", b"", "The file is empty", id="empty"),
    pytest.param("noanswer.jsonl", lines(CHAT_OK, NO_ANSWER), "line 2", id="no-answer"),
    pytest.param("data.exe", b"MZ\x90\x00", "Unsupported file type", id="unknown-type"),
])
def test_the_plain_form_shows_the_problem(owner_client, name, content, words):
    response = owner_client.post("/datasets/upload/", {"file": SimpleUploadedFile(name, content)})
    assert response.status_code == 400 and words in response.content.decode()
    assert not Dataset.objects.exists() and stored_dataset_files() == []


def test_the_plain_form_refuses_a_too_large_file(owner_client, settings):
    settings.MAX_UPLOAD_BYTES = 100
    response = owner_client.post("/datasets/upload/", {"file": SimpleUploadedFile("big.jsonl", lines(*[CHAT_OK] * 5))})
    assert response.status_code == 400 and "larger than the limit of 100 bytes" in response.content.decode()
    assert not Dataset.objects.exists() and stored_dataset_files() == []


def test_the_plain_form_needs_a_file(owner_client):
    response = owner_client.post("/datasets/upload/", {"format": "auto"})
    assert response.status_code == 400 and "Choose a file" in response.content.decode()

"""POST/GET /v1/files, GET/DELETE /v1/files/{id}, GET /v1/files/{id}/content."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test import Client

from webapp.accounts.keys import create_api_key
from webapp.datasets.actions import create_dataset
from webapp.datasets.models import Dataset

from .conftest import CHAT_ROWS, jsonl, make_job, upload


def stored_files() -> list[Path]:
    return sorted(p for p in (Path(settings.DATA_DIR) / "datasets").rglob("*") if p.is_file())


def test_it_uploads(api, owner):
    response = upload(api)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "file" and body["id"].startswith("file-")
    assert body["filename"] == "train.jsonl" and body["purpose"] == "fine-tune"
    assert body["bytes"] == len(jsonl(CHAT_ROWS)) and body["status"] == "processed"
    dataset = Dataset.objects.get()
    assert dataset.owner == owner and body["id"] == f"file-{dataset.id.hex}" and dataset.rows == len(CHAT_ROWS)


def test_it_lists_and_retrieves(api, dataset, stranger):
    create_dataset(stranger, "theirs.jsonl", [jsonl(CHAT_ROWS)])
    second = create_dataset(dataset.owner, "second.jsonl", [jsonl(CHAT_ROWS)])
    listing = api.get("/v1/files").json()
    assert [f["filename"] for f in listing["data"]] == ["second.jsonl", "train.jsonl"]
    assert listing["has_more"] is False
    page = api.get("/v1/files", {"limit": 1}).json()
    assert page["has_more"] is True and page["data"][0]["id"] == f"file-{second.id.hex}"
    rest = api.get("/v1/files", {"limit": 1, "after": page["last_id"]}).json()
    assert [f["filename"] for f in rest["data"]] == ["train.jsonl"] and rest["has_more"] is False
    one = api.get(f"/v1/files/file-{dataset.id.hex}")
    assert one.status_code == 200 and one.json()["rows"] == len(CHAT_ROWS)


def test_it_streams_content(api, dataset):
    response = api.get(f"/v1/files/file-{dataset.id.hex}/content")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == jsonl(CHAT_ROWS)


def test_it_deletes(api, dataset, django_capture_on_commit_callbacks):
    path = dataset.path
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/files/file-{dataset.id.hex}")
    assert response.status_code == 200 and response.json() == {
        "id": f"file-{dataset.id.hex}", "object": "file", "deleted": True}
    assert not Dataset.objects.exists() and not path.exists()


def test_it_refuses_to_delete_a_file_a_job_uses(api, dataset, base_model):
    make_job(dataset.owner, dataset, base_model)
    response = api.delete(f"/v1/files/file-{dataset.id.hex}")
    assert response.status_code == 409 and "jobs" in response.json()["error"]["message"]
    assert Dataset.objects.filter(pk=dataset.pk).exists() and dataset.path.exists()


def test_it_validates_ownership(stranger_api, dataset):
    file_id = f"file-{dataset.id.hex}"
    for response in (stranger_api.get(f"/v1/files/{file_id}"), stranger_api.get(f"/v1/files/{file_id}/content"),
                     stranger_api.delete(f"/v1/files/{file_id}")):
        assert response.status_code == 404
        assert response.json()["error"]["message"] == f"No such File: '{file_id}'."
    assert stranger_api.get("/v1/files").json()["data"] == []
    assert Dataset.objects.filter(pk=dataset.pk).exists()


def test_staff_see_everything(dataset, staff):
    client = Client(HTTP_AUTHORIZATION=f"Bearer {create_api_key(staff)[1]}")
    assert client.get(f"/v1/files/file-{dataset.id.hex}").status_code == 200


def test_it_requires_authentication(anonymous, dataset):
    for response in (anonymous.get("/v1/files"), anonymous.get(f"/v1/files/file-{dataset.id.hex}"),
                     upload(anonymous)):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_wrong_key_is_refused(dataset):
    response = Client(HTTP_AUTHORIZATION="Bearer lsk-not-a-key").get("/v1/files")
    assert response.status_code == 401


def test_bad_rows_name_the_line_and_store_nothing(api):
    rows = jsonl(CHAT_ROWS[:2]) + b'{"messages": [{"role": "user", "content": "no answer"}]}\n' + b"not json\n"
    response = upload(api, rows)
    assert response.status_code == 400
    error = response.json()["error"]
    assert "line 3" in error["message"] and error["param"] == "file"
    assert {p["line"] for p in error["problems"]} >= {3, 4}
    assert not Dataset.objects.exists() and stored_files() == []


def test_bad_uploads(api):
    cases = [
        (upload(api, b""), "empty"),
        (upload(api, name="train.exe"), "Unsupported file type"),
        (upload(api, name="x" * 300 + ".jsonl"), "longer than"),
        (upload(api, purpose="assistants"), "purpose"),
        (upload(api, purpose=None), "purpose"),
        (api.post("/v1/files", {"purpose": "fine-tune"}), "'file'"),
        (upload(api, bytes(range(256)) * 8), "binary"),
        (upload(api, '{"text": "caf\u00e9"}\n'.encode("latin-1")), "line 1"),
    ]
    for response, words in cases:
        assert response.status_code == 400, response.content
        assert words.lower() in response.json()["error"]["message"].lower(), response.json()
    assert not Dataset.objects.exists() and stored_files() == []


def test_a_path_in_the_file_name_is_only_a_name(api):
    response = upload(api, name="../../etc/train.jsonl")
    assert response.status_code == 200 and response.json()["filename"] == "train.jsonl"
    assert Path(settings.DATA_DIR).resolve() in Dataset.objects.get().path.resolve().parents


def test_unknown_ids_answer_404(api):
    for file_id in ("file-nothex", "file-" + "0" * 32, "x" * 200):
        response = api.get(f"/v1/files/{file_id}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert api.get("/v1/files", {"after": "file-nope"}).status_code == 404
    assert api.get("/v1/files", {"limit": "0"}).status_code == 400


def test_sessions_need_a_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.get("/v1/files").status_code == 200
    response = upload(client)
    assert response.status_code == 403 and "CSRF" in response.json()["error"]["message"]
    # an API GET sets no cookie: make one the way the pages get theirs
    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    ok = client.post("/v1/files", {"purpose": "fine-tune", "file": _file()},
                     HTTP_X_CSRFTOKEN=_mask_cipher_secret(secret))
    assert ok.status_code == 200, ok.content


def _file():
    return SimpleUploadedFile("train.jsonl", jsonl(CHAT_ROWS))


def test_wrong_methods_answer_405(api):
    response = api.put("/v1/files")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"

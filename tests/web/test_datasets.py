"""Data set pages: list, chunked and plain uploads of real files, detail with preview and stats, delete, access."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from webapp.datasets.actions import create_dataset
from webapp.datasets.histogram import histogram_chart
from webapp.datasets.models import Dataset

from ._datasets_helpers import (
    CHAT_ROWS,
    jsonl,
    peer_file,
    register_tiny_model,
    stored_dataset_files,
    upload_in_chunks,
)


@pytest.fixture
def base_model(owner):
    return register_tiny_model(owner)


@pytest.fixture
def dataset(owner):
    return create_dataset(owner, "chat.jsonl", [jsonl(CHAT_ROWS)])


@pytest.mark.parametrize(("name", "data_format", "rows"), [
    ("alpaca_en_demo.json", "alpaca", 999),
    ("glaive_toolcall_en_demo.json", "sharegpt", 300),
    ("c4_demo.jsonl", "text", 300),
    ("wiki_demo.txt", "text", 30),
])
def test_it_uploads_real_files_in_chunks(owner_client, owner, name, data_format, rows):
    content = peer_file(name)
    response = upload_in_chunks(owner_client, name, content, chunk_bytes=256 * 1024)
    assert response.status_code == 201, response.content
    dataset = Dataset.objects.get()
    assert response.json()["url"] == f"/datasets/{dataset.id}/"
    assert (dataset.owner, dataset.name, dataset.format, dataset.rows) == (owner, name, data_format, rows)
    assert dataset.path.read_bytes() == content and dataset.size_bytes == len(content)
    assert stored_dataset_files() == [dataset.storage_path.removeprefix("datasets/")]  # incoming/ is empty


def test_the_plain_form_uploads_too(owner_client):
    content = peer_file("identity.json")
    response = owner_client.post("/datasets/upload/", {"file": SimpleUploadedFile("identity.json", content),
                                                       "format": "auto"})
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/datasets/{dataset.id}/"
    assert (dataset.format, dataset.rows) == ("alpaca", 91)
    assert stored_dataset_files() == [dataset.storage_path.removeprefix("datasets/")]


def test_a_line_cut_short_is_refused_naming_its_line_and_column(owner_client):
    content = b'{"instruction": "a", "output": "b"}\n{"instruction":"e", "output": \n'
    response = owner_client.post("/datasets/upload/", {"file": SimpleUploadedFile("cut.jsonl", content),
                                                       "format": "auto"})
    assert response.status_code == 400
    assert "line 2: malformed JSON at column 31" in response.content.decode()
    assert not Dataset.objects.exists()


def test_a_big_form_upload_is_moved_not_copied(owner_client, settings, monkeypatch):
    """Over FILE_UPLOAD_MAX_MEMORY_SIZE Django spools to a temp file, which is moved into DATA_DIR."""
    import webapp.datasets.actions as actions

    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.FILE_UPLOAD_TEMP_DIR = str(Path(settings.DATA_DIR))  # same file system as DATA_DIR
    monkeypatch.setattr(actions, "create_dataset", lambda *a, **k: pytest.fail("the upload was copied"))
    content = peer_file("c4_demo.jsonl")
    response = owner_client.post("/datasets/upload/", {"file": SimpleUploadedFile("c4.jsonl", content)})
    assert response.status_code == 302
    dataset = Dataset.objects.get()
    assert dataset.path.read_bytes() == content and dataset.rows == 300


def test_preference_data_is_refused(owner_client):
    response = upload_in_chunks(owner_client, "dpo_en_demo.json", peer_file("dpo_en_demo.json"),
                                chunk_bytes=512 * 1024)
    assert response.status_code == 400
    assert "preference data is not supported (yet)" in response.json()["error"]["message"]
    assert not Dataset.objects.exists() and stored_dataset_files() == []


def test_the_list_shows_own_data_sets_only(owner_client, stranger, dataset):
    create_dataset(stranger, "theirs.jsonl", [jsonl(CHAT_ROWS)])
    response = owner_client.get("/datasets/")
    assert response.status_code == 200
    assert b"chat.jsonl" in response.content and b"theirs.jsonl" not in response.content
    assert b'data-testid="dropzone"' in response.content


def test_the_detail_page_previews_with_the_models_tokenizer(owner_client, dataset, base_model):
    response = owner_client.get(f"/datasets/{dataset.id}/", {"base_model": str(base_model.id), "max_seq_len": 64})
    assert response.status_code == 200
    page = response.content.decode()
    assert "What colour is the sky?" in page and "Blue, on a clear day." in page
    assert '<span class="token trained">' in page  # the answer's tokens are marked
    assert 'data-testid="histogram"' in page
    preview = response.context["preview"]
    first = preview["rows"][0]
    trained_text = "".join(t["text"] for t in first["tokens"] if t["trained"])
    untrained_text = "".join(t["text"] for t in first["tokens"] if not t["trained"])
    assert "Blue, on a clear day." in trained_text and "sky" not in trained_text and "sky" in untrained_text
    dataset.refresh_from_db()
    assert dataset.stats_base_model == base_model and dataset.token_stats["max_seq_len"] == 64


def test_the_stats_count_rows_that_would_be_truncated(owner_client, owner, base_model):
    dataset = create_dataset(owner, "alpaca.json", [peer_file("identity.json")])
    short = owner_client.get(f"/datasets/{dataset.id}/", {"base_model": str(base_model.id), "max_seq_len": 100})
    long = owner_client.get(f"/datasets/{dataset.id}/", {"base_model": str(base_model.id), "max_seq_len": 4096})
    cut_short, cut_long = short.context["stats"]["truncated_rows"], long.context["stats"]["truncated_rows"]
    assert 0 < cut_short < 91 and cut_long == 0
    assert f'data-testid="truncated">{cut_short}<' in short.content.decode()
    assert any(bar["over"] for bar in short.context["histogram"]["bars"])
    assert not any(bar["over"] for bar in long.context["histogram"]["bars"])
    # The histogram's axes: tokens per row along x, rows up y, at round ticks; the sequence length marked when
    # it falls on the chart (4096 is far past the longest row: the page says every row fits instead).
    chart, html = short.context["histogram"], short.content.decode()
    assert "tokens per row" in html and ">rows<" in html and 'data-testid="seq-mark"' in html
    assert chart["mark"]["value"] == 100 and 0 < chart["mark"]["at"] < 100
    assert [t["label"] for t in chart["x_ticks"]][:3] == ["0", "100", "200"]
    assert chart["y_ticks"][0]["value"] == 0 and chart["y_max"] >= max(b["count"] for b in chart["bars"])
    assert long.context["histogram"]["mark"] is None and 'data-testid="seq-mark"' not in long.content.decode()
    assert "Every row fits in the sequence length of 4096 tokens." in long.content.decode()


def test_the_histogram_axes_have_round_ticks_and_mark_the_sequence_length():
    bins = [{"start": i * 700, "end": (i + 1) * 700, "count": c, "over": False} for i, c in enumerate([3, 41, 17])]
    chart = histogram_chart(bins, max_seq_len=2048)
    assert [t["label"] for t in chart["x_ticks"]] == ["0", "500", "1,000", "1,500", "2,000"]
    assert [t["value"] for t in chart["y_ticks"]] == [0, 10, 20, 30, 40, 50] and chart["y_max"] == 50
    assert chart["mark"] == {"value": 2048, "label": "2,048", "at": 97.52}  # of 0..2100 tokens
    assert [b["height"] for b in chart["bars"]] == [6.0, 82.0, 34.0]
    # a sequence length a little past the longest row stretches the axis to show it; a far one does not
    assert histogram_chart(bins, max_seq_len=4096)["mark"]["at"] == 100.0
    assert histogram_chart(bins, max_seq_len=8192)["mark"] is None
    assert [t["label"] for t in histogram_chart(
        [{"start": 0, "end": 60_000, "count": 1, "over": True}], 4096)["x_ticks"]][::2] == ["0", "20k", "40k", "60k"]
    assert histogram_chart([], 512) is None


def test_a_bad_sequence_length_is_explained(owner_client, dataset, base_model):
    response = owner_client.get(f"/datasets/{dataset.id}/", {"base_model": str(base_model.id), "max_seq_len": "-3"})
    assert response.status_code == 200 and "sequence length must be a whole number" in response.content.decode()


def test_it_validates_ownership(owner_client, stranger_client, dataset):
    assert stranger_client.get(f"/datasets/{dataset.id}/").status_code == 404
    assert stranger_client.post(f"/datasets/{dataset.id}/delete").status_code == 404
    assert owner_client.get(f"/datasets/{uuid.uuid4()}/").status_code == 404
    assert Dataset.objects.filter(pk=dataset.pk).exists()


def test_staff_see_every_data_set(staff, dataset):
    client = Client()
    client.force_login(staff)
    assert client.get(f"/datasets/{dataset.id}/").status_code == 200
    assert b"chat.jsonl" in client.get("/datasets/").content


def test_anonymous_visitors_are_sent_to_log_in(client, dataset):
    for url in ("/datasets/", f"/datasets/{dataset.id}/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert client.post(f"/datasets/{dataset.id}/delete").status_code == 302
    assert client.post("/datasets/uploads/", "{}", content_type="application/json").status_code == 302
    assert Dataset.objects.filter(pk=dataset.pk).exists()


def test_delete_removes_the_record_and_the_file(owner_client, dataset, django_capture_on_commit_callbacks):
    path = dataset.path
    with django_capture_on_commit_callbacks(execute=True):
        response = owner_client.post(f"/datasets/{dataset.id}/delete")
    assert response.status_code == 302 and response["Location"] == "/datasets/"
    assert not Dataset.objects.exists() and not path.exists()


def test_delete_is_refused_while_a_job_uses_it(owner_client, owner, dataset, base_model):
    from webapp.jobs.models import Job

    Job.objects.create(owner=owner, dataset=dataset, base_model=base_model, config={}, rank=8, alpha=16)
    response = owner_client.post(f"/datasets/{dataset.id}/delete", follow=True)
    assert "is used by 1 job(s); delete those jobs first" in response.content.decode()
    assert Dataset.objects.filter(pk=dataset.pk).exists() and dataset.path.exists()


def test_chunks_must_arrive_in_order(owner_client):
    content = jsonl(CHAT_ROWS)
    started = owner_client.post("/datasets/uploads/", {"name": "c.jsonl", "size": len(content)},
                                content_type="application/json").json()
    skipped = owner_client.post(f"/datasets/uploads/{started['id']}/chunk?offset=10", content[10:],
                                content_type="application/octet-stream")
    assert skipped.status_code == 409 and skipped.json()["error"]["expected_offset"] == 0
    whole = owner_client.post(f"/datasets/uploads/{started['id']}/chunk?offset=0", content,
                              content_type="application/octet-stream")
    assert whole.status_code == 200 and whole.json()["received"] == len(content)
    assert owner_client.post(f"/datasets/uploads/{started['id']}/finish").status_code == 201


def test_nobody_else_can_write_to_an_upload(owner_client, stranger_client):
    started = owner_client.post("/datasets/uploads/", {"name": "c.jsonl", "size": 10},
                                content_type="application/json").json()
    response = stranger_client.post(f"/datasets/uploads/{started['id']}/chunk?offset=0", b"x" * 10,
                                    content_type="application/octet-stream")
    assert response.status_code == 404
    assert stranger_client.post(f"/datasets/uploads/{started['id']}/finish").status_code == 404


def test_stats_of_a_big_file_are_computed_on_request(owner_client, dataset, base_model, monkeypatch):
    import webapp.datasets.detail as detail

    monkeypatch.setattr(detail, "STATS_ON_REQUEST_BYTES", 10)
    url = f"/datasets/{dataset.id}/"
    first = owner_client.get(url, {"base_model": str(base_model.id)})
    assert first.context["stats"] is None and b'data-testid="stats-on-request"' in first.content
    assert first.context["preview"]["rows"], "the preview is cheap: it is always shown"
    asked = owner_client.get(url, {"base_model": str(base_model.id), "stats": "1"})
    assert asked.context["stats"]["rows"] == 2
    again = owner_client.get(url, {"base_model": str(base_model.id)})
    assert again.context["stats"]["rows"] == 2  # kept on the data set

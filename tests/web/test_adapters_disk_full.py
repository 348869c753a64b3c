"""The disk fills up under the adapter pages and API: a 507 with the disk-full message, nothing half-written.

The data directory is a small tmpfs (as root; skipped elsewhere), filled to the last byte once the adapter the
test works on is stored. Uploading, reducing and downloading (the archive is built on first download) are
refused; the analysis, whose file is only a cache, is still shown.
"""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.support.disk import files_under, fill_up
from webapp.adapters.models import Adapter

from ._adapter_analysis_helpers import make_adapter_dir, register, save_tiny_dirs

DISK_FULL = "The server's disk is full"
FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_dirs(tmp_path_factory, ("llama",))


@pytest.fixture
def full_disk(settings, small_disk, tmp_path, owner, tiny_dirs):
    """(the owner's adapter, the data directory): an adapter stored, then every byte of the disk taken."""
    disk = small_disk(tmp_path / "disk", 1024)
    settings.DATA_DIR, settings.FILE_UPLOAD_TEMP_DIR = disk, disk / "tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    adapter = register(owner, tiny_dirs, tmp_path)
    fill_up(disk)
    return adapter, disk


def nothing_new(disk: Path, adapter: Adapter, before: list[Path]) -> None:
    assert files_under(disk) == before, "no partial file is left"
    assert list((disk / "adapters").iterdir()) == [adapter.path], "no adapter directory but the first one"


def text_of(response) -> str:
    return html.unescape(response.content.decode())


def test_an_adapter_upload_to_a_full_disk_is_a_507_and_nothing_is_kept(owner_client, full_disk, tmp_path):
    adapter, disk = full_disk
    before = files_under(disk)
    source = make_adapter_dir(tmp_path / "to-upload")
    uploads = [SimpleUploadedFile(name, (source / name).read_bytes()) for name in FILES]

    response = owner_client.post("/adapters/upload/", {"name": "another", "base_model": str(adapter.base_model.id),
                                                       "files": uploads})

    assert response.status_code == 507, response.content[:500]
    assert DISK_FULL in text_of(response) and "the adapter could not be written" in text_of(response)
    assert list(Adapter.objects.values_list("pk", flat=True)) == [adapter.pk]
    nothing_new(disk, adapter, before)


def test_reducing_an_adapter_on_a_full_disk_is_a_507_and_nothing_is_kept(owner_client, api, full_disk):
    adapter, disk = full_disk
    before = files_under(disk)

    page = owner_client.post(f"/adapters/{adapter.id}/reduce", {"rank": "2"})
    answer = api.post(f"/api/adapters/{adapter.id}/reduce", {"rank": 2}, content_type="application/json")

    assert page.status_code == 507 and DISK_FULL in text_of(page), page.content[:500]
    assert answer.status_code == 507, answer.content
    assert answer.json()["error"]["code"] == "disk_full" and DISK_FULL in answer.json()["error"]["message"]
    assert Adapter.objects.count() == 1
    nothing_new(disk, adapter, before)


def test_downloading_an_adapter_whose_archive_cannot_be_built_is_a_507(owner_client, api, full_disk):
    adapter, disk = full_disk
    before = files_under(disk)

    page = owner_client.get(f"/adapters/{adapter.id}/download")
    answer = api.get(f"/api/adapters/{adapter.id}/download")

    assert page.status_code == 507 and DISK_FULL in text_of(page), page.content[:500]
    assert answer.status_code == 507 and answer.json()["error"]["code"] == "disk_full", answer.content
    assert "download archive" in answer.json()["error"]["message"]
    nothing_new(disk, adapter, before)


def test_the_analysis_is_shown_when_its_cache_cannot_be_written(owner_client, api, full_disk):
    adapter, disk = full_disk
    before = files_under(disk)

    answer = api.get(f"/api/adapters/{adapter.id}/analysis")
    page = owner_client.get(f"/adapters/{adapter.id}/analysis")

    assert answer.status_code == 200 and answer.json()["layers"], answer.content[:500]
    assert page.status_code == 200
    assert files_under(disk) == before


def test_a_multipart_upload_spooled_to_a_full_disk_is_a_507_even_before_the_view(owner, full_disk, tmp_path, settings):
    """A browser's POST passes the CSRF check, which reads the multipart body first: Django spools the files to
    FILE_UPLOAD_TEMP_DIR there, before any view runs."""
    adapter, disk = full_disk
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # the weights are spooled to the (full) disk
    before = files_under(disk)
    browser = Client(enforce_csrf_checks=True, raise_request_exception=False)
    browser.force_login(owner)
    token = browser.get("/adapters/upload/").cookies["csrftoken"].value
    source = make_adapter_dir(tmp_path / "to-upload")
    uploads = [SimpleUploadedFile(name, (source / name).read_bytes()) for name in FILES]

    page = browser.post("/adapters/upload/", {"csrfmiddlewaretoken": token, "name": "another", "files": uploads,
                                              "base_model": str(adapter.base_model.id)})
    answer = browser.post("/datasets/upload/", {"csrfmiddlewaretoken": token, "format": "auto",
                                                "file": SimpleUploadedFile("train.jsonl", b'{"text": "hi"}\n' * 200)})

    for response in (page, answer):
        assert response.status_code == 507, response.content[:300]
        assert DISK_FULL in text_of(response) and "what you sent could not be written" in text_of(response)
    nothing_new(disk, adapter, before)

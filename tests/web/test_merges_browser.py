"""A real browser (Debian's Chromium) on a live uvicorn server and a real Celery worker: press Merge on the
adapter page, watch it finish, download the merged model; then press Export GGUF, watch the worker write it,
download the GGUF."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import gguf
import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server, start_worker
from tests.support.workers import wait_for_worker
from tests.web._merge_helpers import assert_manifest_matches, extract_archive, register_adapter, save_tiny_base
from webapp.adapters.models import Merge


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return save_tiny_base(tmp_path_factory.mktemp("merge-browser-base"))


@pytest.mark.browser
@pytest.mark.stack
def test_press_merge_and_download_the_merged_model(transactional_db, owner, page, base_dir, tmp_path):
    adapter = register_adapter(owner, base_dir, tmp_path, name="browser adapter")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    worker = start_worker(tmp_path, name="merge-browser")
    server, base_url = start_asgi_server(tmp_path)
    try:
        wait_for_worker(worker)
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/adapters/{adapter.id}/")
        assert page.get_by_test_id("no-merges").is_visible()
        page.get_by_test_id("merge-button").click()
        page.wait_for_url(f"{base_url}/adapters/{adapter.id}/")
        # the page polls the merge until it succeeds, then offers the download and shows the verification
        link = page.get_by_test_id("merge-download")
        link.wait_for(timeout=120_000)
        row = page.get_by_test_id("merge-row")
        assert row.get_attribute("data-state") == "succeeded"
        assert re.fullmatch(r"\d\.\d\de-\d\d", page.get_by_test_id("merge-diff").inner_text())
        merge = Merge.objects.get(adapter=adapter)
        assert merge.max_abs_diff < 1e-4

        with page.expect_download() as download_info:
            link.click()
        download = download_info.value
        assert download.suggested_filename == "browser-adapter-merged-auto.tar"
        folder = extract_archive(Path(download.path()).read_bytes(), tmp_path / "downloaded")
        assert_manifest_matches(folder)
        assert {"config.json", "README.md", "model.safetensors"} <= {p.name for p in folder.iterdir()}

        # the merge ended while the page watched: its Export GGUF button asks the API, then the page polls
        page.get_by_test_id("gguf-export-button").click()
        gguf_link = page.get_by_test_id("gguf-download")
        gguf_link.wait_for(timeout=120_000)
        assert page.get_by_test_id("gguf-state").inner_text() == "succeeded"
        with page.expect_download() as gguf_info:
            gguf_link.click()
        gguf_download = gguf_info.value
        assert gguf_download.suggested_filename == "browser-adapter-merged-f16.gguf"
        export = merge.gguf_exports.get()
        assert hashlib.sha256(Path(gguf_download.path()).read_bytes()).hexdigest() == export.sha256
        reader = gguf.GGUFReader(gguf_download.path())
        assert reader.fields["general.type"].contents() == "model"
        assert errors == []
    finally:
        server.stop()
        worker.kill()
        worker.stop()

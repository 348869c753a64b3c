"""A real browser (Debian's Chromium) on a live uvicorn server: the analysis charts draw, and reducing works."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server
from webapp.adapters.models import Adapter

from ._adapter_analysis_helpers import register, save_tiny_dirs


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    return save_tiny_dirs(tmp_path_factory, archs=("llama",))


@pytest.mark.browser
@pytest.mark.stack
def test_analysis_page_draws_spectra_and_reduces(transactional_db, owner, page, tiny_dirs, tmp_path):
    adapter = register(owner, tiny_dirs, tmp_path)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    server, base_url = start_asgi_server(tmp_path)
    try:
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/adapters/{adapter.id}/")
        page.get_by_test_id("analysis-link").click()
        assert "r=8 but layers use ~2 directions" in page.get_by_test_id("summary").inner_text()
        page.wait_for_selector("#chart-ranks canvas")
        page.wait_for_selector("#chart-spectrum canvas")
        page.get_by_test_id("layer-select").select_option("3")
        page.wait_for_function("document.querySelector('#chart-spectrum .u-title').textContent.startsWith('1.v_proj')")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the charts follow their container
        page.wait_for_function("document.documentElement.scrollWidth <= window.innerWidth")
        page.set_viewport_size({"width": 1280, "height": 800})
        page.get_by_test_id("reduce-rank").fill("1")
        page.wait_for_function("document.querySelector('[data-testid=reduce-estimate]').textContent.includes('keeps')")
        assert "100.00%" not in page.get_by_test_id("reduce-estimate").inner_text()
        page.get_by_test_id("reduce-rank").fill("2")
        page.wait_for_function(
            "document.querySelector('[data-testid=reduce-estimate]').textContent.startsWith('keeps 100.00%')")
        page.get_by_test_id("reduce").click()
        page.wait_for_url(lambda url: str(adapter.id) not in url and "/adapters/" in url)
        reduced = Adapter.objects.exclude(pk=adapter.pk).get()
        assert page.url.endswith(f"/adapters/{reduced.id}/") and reduced.rank == 2
        assert "keeps 100.00% of ΔW" in page.content()
        assert errors == []
    finally:
        server.stop()

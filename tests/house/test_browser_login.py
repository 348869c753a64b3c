"""A real browser logs in and sees the dashboard (Debian's Chromium through Playwright)."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD
from tests.support.browser import log_in
from tests.support.processes import start_asgi_server


@pytest.mark.browser
def test_log_in_and_see_the_dashboard(transactional_db, owner, page, tmp_path):
    server, base_url = start_asgi_server(tmp_path)
    try:
        page.goto(f"{base_url}/jobs/")
        assert "/accounts/login/" in page.url
        log_in(page, base_url, owner.username, PASSWORD)
        page.goto(f"{base_url}/")
        assert page.locator("h1").inner_text() == "Dashboard"
        for section in ("Datasets", "Models", "Jobs", "Compare", "Adapters"):
            assert page.locator("nav.nav a", has_text=section).count() == 1
        assert page.get_by_test_id("count-jobs").inner_text() == "0"
        assert page.locator(".user span").inner_text() == owner.username
    finally:
        server.stop()

"""A missing page or a server error in production (DEBUG off): the site's layout for pages, JSON for the API."""

from __future__ import annotations

import pytest
from django.test import Client


@pytest.fixture(autouse=True)
def production(settings):
    settings.DEBUG = False


def test_a_missing_page_has_the_layout_and_navigation(owner_client, stranger):
    for url in ("/no-such-page/", "/jobs/00000000-0000-0000-0000-000000000000/"):
        response = owner_client.get(url)
        assert response.status_code == 404, url
        page = response.content.decode()
        assert 'data-testid="not-found"' in page and "Page not found" in page
        assert 'class="topbar"' in page and 'href="/jobs/"' in page and "alice" in page  # nav and user


def test_a_missing_api_url_answers_json(api, owner_client):
    for client in (api, owner_client):
        for url in ("/v1/no-such-thing", "/api/no-such-thing", "/api/jobs/00000000-0000-0000-0000-000000000000"):
            response = client.get(url)
            assert response.status_code == 404, url
            assert response["Content-Type"] == "application/json", url
            assert response.json()["error"]["code"] == "not_found", url


def test_a_server_error_has_the_layout_for_pages_and_json_for_the_api(owner, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("webapp.jobs.views._jobs", broken)
    monkeypatch.setattr("webapp.basemodels.models.BaseModel.objects.visible_to", broken)
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    page = client.get("/jobs/")
    assert page.status_code == 500
    assert 'data-testid="server-error"' in page.content.decode() and 'class="topbar"' in page.content.decode()
    api = client.get("/v1/models")
    assert api.status_code == 500 and api.json()["error"]["type"] == "server_error"

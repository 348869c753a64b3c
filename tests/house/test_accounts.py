"""Login is required everywhere; API keys are made by a command, stored hashed, and work as Bearer tokens."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import Client

from webapp.accounts.keys import hash_key, revoke_api_key
from webapp.accounts.models import ApiKey


@pytest.mark.django_db
def test_pages_redirect_anonymous_to_login():
    response = Client().get("/jobs/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/jobs/")


@pytest.mark.django_db
def test_api_answers_401_to_anonymous_in_openai_error_shape():
    response = Client().get("/v1/fine_tuning/jobs")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_dashboard_shows_the_users_counts(owner_client):
    response = owner_client.get("/")
    assert response.status_code == 200
    assert b'data-testid="count-jobs">0<' in response.content


def test_create_api_key_prints_the_key_last_and_stores_only_its_hash(owner):
    out = StringIO()
    call_command("create_api_key", owner.username, stdout=out, stderr=StringIO())
    raw_key = out.getvalue().strip().splitlines()[-1]
    stored = ApiKey.objects.get(user=owner)
    assert stored.key_hash == hash_key(raw_key)
    assert raw_key not in (stored.key_hash, stored.prefix)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}").get("/").status_code == 200


def test_create_api_key_for_unknown_user_fails_clearly(db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No user named 'nobody'"):
        call_command("create_api_key", "nobody", stdout=StringIO())


def test_a_wrong_or_revoked_key_is_refused(owner, owner_key):
    assert Client(HTTP_AUTHORIZATION="Bearer lsk-not-a-key").get("/healthz").status_code == 401
    revoke_api_key(ApiKey.objects.get(user=owner))
    response = Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}").get("/")
    assert response.status_code == 401


def test_a_key_of_a_deactivated_user_is_refused(owner, owner_key):
    owner.is_active = False
    owner.save()
    assert Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}").get("/").status_code == 401


def test_session_posts_need_csrf_but_bearer_posts_do_not(owner, owner_key):
    session_client = Client(enforce_csrf_checks=True)
    session_client.force_login(owner)
    assert session_client.post("/accounts/logout/").status_code == 403
    bearer = Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}", enforce_csrf_checks=True)
    assert bearer.post("/accounts/logout/").status_code in (200, 302)

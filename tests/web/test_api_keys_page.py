"""The API keys page: a user makes a key (shown once, stored hashed), uses it, revokes it; nobody else's keys."""

from __future__ import annotations

import re

from django.test import Client

from webapp.accounts.keys import MAX_ACTIVE_KEYS, hash_key
from webapp.accounts.models import ApiKey


def _new_key(response) -> str:
    return re.search(rb'data-testid="new-key-value" readonly size="56" value="([^"]+)"', response.content)[1].decode()


def test_a_key_made_on_the_page_is_shown_once_and_works_until_revoked(owner, owner_client):
    response = owner_client.post("/accounts/keys/", {"name": "laptop"})
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    raw_key = _new_key(response)
    stored = ApiKey.objects.get(user=owner, name="laptop")
    assert stored.key_hash == hash_key(raw_key) and stored.prefix == raw_key[:12]

    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api.get("/v1/fine_tuning/jobs").status_code == 200
    listing = owner_client.get("/accounts/keys/")
    assert raw_key.encode() not in listing.content  # the list shows the prefix only
    assert stored.prefix.encode() in listing.content and b"laptop" in listing.content

    response = owner_client.post(f"/accounts/keys/{stored.pk}/revoke/", follow=True)
    assert b"revoked" in response.content
    stored.refresh_from_db()
    assert stored.revoked_at is not None
    assert api.get("/v1/fine_tuning/jobs").status_code == 401
    assert b'data-testid="revoke"' not in owner_client.get("/accounts/keys/").content


def test_other_users_keys_are_neither_listed_nor_revocable(owner, owner_client, stranger_client, stranger_key):
    theirs = ApiKey.objects.get(name="tests", user__username="mallory")
    assert theirs.prefix.encode() not in owner_client.get("/accounts/keys/").content
    assert owner_client.post(f"/accounts/keys/{theirs.pk}/revoke/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.revoked_at is None
    assert Client(HTTP_AUTHORIZATION=f"Bearer {stranger_key}").get("/v1/fine_tuning/jobs").status_code == 200


def test_bad_requests_are_refused_with_the_reason(owner, owner_client):
    response = owner_client.post("/accounts/keys/", {"name": "x" * 101})
    assert response.status_code == 400 and b"at most 100 are allowed" in response.content
    for number in range(MAX_ACTIVE_KEYS):
        assert owner_client.post("/accounts/keys/", {"name": f"k{number}"}).status_code == 201
    response = owner_client.post("/accounts/keys/", {"name": "one too many"})
    assert response.status_code == 400 and f"already have {MAX_ACTIVE_KEYS} active keys".encode() in response.content
    assert ApiKey.objects.filter(user=owner).count() == MAX_ACTIVE_KEYS
    assert owner_client.get(f"/accounts/keys/{ApiKey.objects.first().pk}/revoke/").status_code == 405


def test_the_page_needs_a_browser_session_not_a_key(owner, owner_key):
    assert Client().get("/accounts/keys/").status_code == 302
    with_key = Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}")
    for response in (with_key.get("/accounts/keys/"), with_key.post("/accounts/keys/", {"name": "minted"}),
                     with_key.post(f"/accounts/keys/{ApiKey.objects.get(user=owner).pk}/revoke/")):
        assert response.status_code == 403 and b"signed-in browser session" in response.content
    assert list(ApiKey.objects.filter(user=owner).values_list("name", "revoked_at")) == [("tests", None)]


def test_a_user_changes_their_password(owner, owner_client):
    assert owner_client.get("/accounts/password/").status_code == 200
    response = owner_client.post("/accounts/password/", {"old_password": "wrong", "new_password1": "n3w-Passw0rd!x",
                                                         "new_password2": "n3w-Passw0rd!x"})
    assert response.status_code == 200 and b"role=\"alert\"" in response.content
    from tests.conftest import PASSWORD

    response = owner_client.post("/accounts/password/", {"old_password": PASSWORD, "new_password1": "n3w-Passw0rd!x",
                                                         "new_password2": "n3w-Passw0rd!x"}, follow=True)
    assert b'data-testid="password-changed"' in response.content
    owner.refresh_from_db()
    assert owner.check_password("n3w-Passw0rd!x")
    assert owner_client.get("/jobs/").status_code == 200  # this session stays signed in

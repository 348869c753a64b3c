"""Shared fixtures: the users every access test needs (owner, teammate, stranger, staff) and API clients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.support.disk import small_disk  # noqa: F401 - a fixture: a small tmpfs for the disk-full tests
from webapp.accounts.keys import create_api_key

# Playwright's sync API keeps an event loop running in the test thread; the ORM calls the tests make
# around it are still synchronous.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str, **extra):
    return get_user_model().objects.create_user(username=username, password=PASSWORD, **extra)


@pytest.fixture
def owner(db):
    return make_user("alice")


@pytest.fixture
def stranger(db):
    return make_user("mallory")


@pytest.fixture
def staff(db):
    return make_user("root", is_staff=True)


@pytest.fixture
def owner_client(owner) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def stranger_client(stranger) -> Client:
    client = Client()
    client.force_login(stranger)
    return client


@pytest.fixture
def staff_client(staff) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def owner_key(owner) -> str:
    return create_api_key(owner, name="tests")[1]


@pytest.fixture
def stranger_key(stranger) -> str:
    return create_api_key(stranger, name="tests")[1]


@pytest.fixture
def staff_key(staff) -> str:
    return create_api_key(staff, name="tests")[1]


@pytest.fixture
def api(owner_key) -> Client:
    """A client that authenticates every request with the owner's Bearer key (no session, no CSRF token)."""
    return Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}", enforce_csrf_checks=True)


pytest_plugins = ["tests.support.browser"]


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path_factory) -> Path:
    """Every test gets its own DATA_DIR, so files one test leaves never confuse another."""
    settings.DATA_DIR = tmp_path_factory.mktemp("data")
    return settings.DATA_DIR

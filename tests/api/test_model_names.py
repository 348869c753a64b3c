"""Base model names are unique per owner: registering one tells nobody whether another user's private model has
that name, and a name means the caller's own model first, then a shared (public) one."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import make_user
from webapp.basemodels.actions import ModelRejected, register_local_model, register_model
from webapp.basemodels.models import BaseModel


@pytest.fixture
def model_dir(tiny_model_dir, settings):
    settings.MODEL_ROOTS = [str(tiny_model_dir.parent)]
    return str(tiny_model_dir)


def test_another_users_private_name_is_free_and_unrevealed(owner, stranger, model_dir):
    register_model(owner, "my-llama", local_path=model_dir)
    theirs = register_model(stranger, "my-llama", local_path=model_dir)  # no "already registered" for them
    assert theirs.owner == stranger
    with pytest.raises(ModelRejected, match="You already have a model named 'my-llama'"):
        register_model(owner, "my-llama", local_path=model_dir)


def test_a_shared_name_cannot_be_taken_and_a_name_means_ones_own_model_first(owner, stranger, model_dir, owner_key):
    shared = register_local_model(make_user("admin-x", is_staff=True), "shared-llama", model_dir, public=True)
    with pytest.raises(ModelRejected, match="your own or a shared one"):
        register_model(owner, "shared-llama", local_path=model_dir)
    mine = register_model(owner, "llama", local_path=model_dir)
    theirs = register_model(stranger, "llama", local_path=model_dir)
    # an admin publishes a model under a name a user already has: that user's own model still wins for them
    BaseModel.objects.filter(pk=theirs.pk).update(public=True)
    assert BaseModel.objects.named(owner, "llama") == mine
    assert BaseModel.objects.named(stranger, "llama") == theirs
    assert BaseModel.objects.named(owner, "shared-llama") == shared
    body = Client(HTTP_AUTHORIZATION=f"Bearer {owner_key}").get("/v1/models/llama").json()
    assert body["owned_by"] == "alice", body  # not the public one of the same name


def test_an_unknown_or_private_name_is_not_found_for_others(owner, stranger, model_dir, stranger_key):
    register_model(owner, "private-llama", local_path=model_dir)
    assert BaseModel.objects.named(stranger, "private-llama") is None
    response = Client(HTTP_AUTHORIZATION=f"Bearer {stranger_key}").get("/v1/models/private-llama")
    assert response.status_code == 404

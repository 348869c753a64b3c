"""Base model pages: list, register (local directory or a hub id in the local cache), detail, remove, access."""

from __future__ import annotations

import html
import json
import uuid

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from webapp.basemodels.actions import ModelRejected, register_model
from webapp.basemodels.models import BaseModel
from webapp.lib.demo_login import DEMO_MODEL_NAME

from ._datasets_helpers import register_tiny_model, tiny_model_dir


@pytest.fixture
def base_model(owner):
    return register_tiny_model(owner)


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path):
    """An empty, private Hugging Face cache; the network is never used (HF_HUB_OFFLINE as well)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


@pytest.fixture(autouse=True)
def model_roots(settings, tmp_path):
    """The server's model directories: a fresh one, and the one the tiny test model is saved in."""
    root = (tmp_path / "models").resolve()
    root.mkdir()
    settings.MODEL_ROOTS = [root, tiny_model_dir().parent.resolve()]
    return root


def register(client: Client, **fields):
    data = {"name": "my-model", "source": "local", "hub_id": "", "revision": "", "local_path": ""}
    data.update(fields)
    return client.post("/models/", data)


def test_it_registers_a_local_directory(owner_client, owner):
    response = register(owner_client, local_path=str(tiny_model_dir()))
    model = BaseModel.objects.get(name="my-model")
    assert response.status_code == 302 and response["Location"] == f"/models/{model.id}/"
    assert (model.owner, model.source, model.architecture) == (owner, "local", "LlamaForCausalLM")
    assert (model.hidden_size, model.num_layers, model.has_chat_template) == (64, 2, True)
    assert model.parameter_count > 0 and model.trust_remote_code is False
    page = owner_client.get(f"/models/{model.id}/").content.decode()
    assert model.dtype == "f32"
    for shown in ("LlamaForCausalLM", str(model.parameter_count), "Hidden size", "Chat template", "f32"):
        assert shown in page


def test_trust_remote_code_cannot_be_set_from_the_page(owner_client):
    register(owner_client, local_path=str(tiny_model_dir()), trust_remote_code="on", public="on")
    model = BaseModel.objects.get(name="my-model")
    assert model.trust_remote_code is False and model.public is False


def test_a_hub_id_in_the_local_cache_is_registered(owner_client, offline_hub):
    snapshot = offline_hub / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for file in tiny_model_dir().iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (offline_hub / "models--acme--tiny" / "refs").mkdir()
    (offline_hub / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    response = register(owner_client, source="hub", hub_id="acme/tiny", name="acme-tiny")
    model = BaseModel.objects.get(name="acme-tiny")
    assert response.status_code == 302
    assert (model.source, model.hub_id, model.local_path, model.architecture) == ("hub", "acme/tiny", "",
                                                                                  "LlamaForCausalLM")


@pytest.mark.parametrize(("fields", "words"), [
    pytest.param({"source": "hub", "hub_id": "nobody/no-such-model"}, "Cannot reach the model hub", id="hub-missing"),
    pytest.param({"source": "hub", "hub_id": "nobody/m", "revision": "v2"}, "at revision 'v2'", id="hub-revision"),
    pytest.param({"source": "hub", "hub_id": "not a valid id!!"}, "not a valid hub id", id="hub-bad-id"),
    pytest.param({"source": "local", "local_path": "ROOT/no/such/dir"}, "is not a directory", id="missing-dir"),
    pytest.param({"source": "local", "local_path": "ROOT"}, "has no config.json", id="not-a-model"),
    pytest.param({"source": "local", "local_path": "/etc"}, "only be registered from the server's model directories",
                 id="outside-the-roots"),
    pytest.param({"source": "local", "local_path": "/no/such/dir"}, "only be registered from the server's model",
                 id="missing-dir-outside-the-roots-says-the-same"),
    pytest.param({"source": "local", "local_path": "ROOT/../.."}, "only be registered from the server's model",
                 id="dotdot-out-of-a-root"),
    pytest.param({"source": "local", "local_path": "models/x"}, "absolute path", id="relative-path"),
    pytest.param({"source": "local", "local_path": ""}, "either a hub id or a local directory", id="nothing"),
    pytest.param({"source": "ftp", "local_path": "/tmp"}, "Choose where the model comes from", id="bad-source"),
    pytest.param({"name": "", "local_path": "/tmp"}, "Give the model a name", id="no-name"),
    pytest.param({"name": "bad name!", "local_path": "/tmp"}, "may hold letters", id="bad-name"),
])
def test_bad_registrations_are_refused(owner_client, model_roots, fields, words):
    fields = {key: value.replace("ROOT", str(model_roots)) for key, value in fields.items()}
    response = register(owner_client, **fields)
    assert response.status_code == 400 and words in html.unescape(response.content.decode())
    assert not BaseModel.objects.exists()


def test_a_symlink_out_of_a_model_root_is_refused(owner_client, model_roots):
    (model_roots / "escape").symlink_to(tiny_model_dir())  # a real model, but it lives outside the roots
    with override_settings(MODEL_ROOTS=[model_roots]):
        response = register(owner_client, local_path=str(model_roots / "escape"))
    assert response.status_code == 400 and "model directories" in html.unescape(response.content.decode())
    assert not BaseModel.objects.exists()


def test_the_form_says_where_models_may_live(owner_client, model_roots):
    assert str(model_roots) in owner_client.get("/models/").content.decode()


def test_an_unreadable_config_is_refused(owner_client, model_roots):
    (model_roots / "broken").mkdir()
    (model_roots / "broken" / "config.json").write_text("{not json")
    response = register(owner_client, local_path=str(model_roots / "broken"))
    assert response.status_code == 400 and "config.json cannot be read" in response.content.decode()


def test_names_are_unique_among_the_models_a_user_sees(owner_client, base_model):
    response = register(owner_client, name=base_model.name, local_path=str(tiny_model_dir()))
    assert response.status_code == 400 and "You already have a model named" in response.content.decode()
    assert BaseModel.objects.count() == 1


def test_register_model_action_refuses_both_sources(owner):
    with pytest.raises(ModelRejected) as caught:
        register_model(owner, "both", hub_id="a/b", local_path=str(tiny_model_dir()))
    assert caught.value.param == "hub_id"


def test_the_demo_model_is_there_out_of_the_box(stranger_client, staff):
    call_command("create_demo_model", owner=staff.username, stdout=open("/dev/null", "w"))
    demo = BaseModel.objects.get(name=DEMO_MODEL_NAME)
    assert demo.public and DEMO_MODEL_NAME in stranger_client.get("/models/").content.decode()
    assert stranger_client.get(f"/models/{demo.id}/").status_code == 200
    assert stranger_client.post(f"/models/{demo.id}/delete").status_code == 404  # visible, not theirs to remove


def test_it_validates_ownership(owner_client, stranger_client, base_model):
    assert base_model.name not in stranger_client.get("/models/").content.decode()
    assert stranger_client.get(f"/models/{base_model.id}/").status_code == 404
    assert stranger_client.post(f"/models/{base_model.id}/delete").status_code == 404
    assert owner_client.get(f"/models/{uuid.uuid4()}/").status_code == 404
    assert base_model.name in owner_client.get("/models/").content.decode()


def test_anonymous_visitors_are_sent_to_log_in(client, base_model):
    for url in ("/models/", f"/models/{base_model.id}/"):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert client.post("/models/", {"name": "x", "source": "local", "local_path": "/tmp"}).status_code == 302
    assert BaseModel.objects.count() == 1


def test_remove_is_refused_while_a_job_uses_it(owner_client, owner, base_model):
    from webapp.datasets.actions import create_dataset
    from webapp.jobs.models import Job

    dataset = create_dataset(owner, "d.jsonl", [json.dumps({"text": "hello"}).encode() + b"\n"])
    Job.objects.create(owner=owner, dataset=dataset, base_model=base_model, config={}, rank=8, alpha=16)
    response = owner_client.post(f"/models/{base_model.id}/delete", follow=True)
    assert "is used by 1 job(s) or adapter(s)" in response.content.decode()
    assert BaseModel.objects.filter(pk=base_model.pk).exists()
    Job.objects.all().delete()
    response = owner_client.post(f"/models/{base_model.id}/delete")
    assert response.status_code == 302 and not BaseModel.objects.exists()

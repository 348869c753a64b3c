"""GET /v1/models, GET/DELETE /v1/models/{id}."""

from __future__ import annotations

import pytest

from webapp.adapters.models import Adapter


@pytest.fixture
def adapter(owner, base_model):
    return Adapter.objects.create(owner=owner, name="math tutor", storage_path="adapters/x", base_model=base_model,
                                  rank=8, alpha=16)


def test_it_lists_base_models_and_adapters(api, base_model, adapter, stranger, tiny_model_dir):
    from webapp.basemodels.actions import register_local_model

    register_local_model(stranger, "their-private-model", str(tiny_model_dir))
    body = api.get("/v1/models").json()
    ids = [m["id"] for m in body["data"]]
    assert ids == ["tiny-llama", f"ft:tiny-llama:math-tutor:{adapter.id.hex}"]
    base, tuned = body["data"]
    assert base == {**base, "object": "model", "owned_by": "system", "kind": "base"}
    assert tuned["owned_by"] == "alice" and tuned["root"] == "tiny-llama" and isinstance(tuned["created"], int)


def test_it_retrieves(api, base_model, adapter):
    assert api.get("/v1/models/tiny-llama").json()["id"] == "tiny-llama"
    model_id = f"ft:tiny-llama:math-tutor:{adapter.id.hex}"
    assert api.get(f"/v1/models/{model_id}").json()["adapter_id"] == str(adapter.id)


def test_a_model_name_with_a_slash(api, owner, tiny_model_dir):
    from webapp.basemodels.actions import register_local_model

    register_local_model(owner, "org/tiny", str(tiny_model_dir))
    assert api.get("/v1/models/org%2Ftiny").json()["id"] == "org/tiny"
    assert api.get("/v1/models/org/tiny").json()["id"] == "org/tiny"


def test_unknown_models_answer_404(api, adapter):
    for model_id in ("gpt-4o", "ft:tiny-llama:math-tutor:" + "0" * 32, f"ft:other:name:{adapter.id.hex}"):
        response = api.get(f"/v1/models/{model_id}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"


def test_it_deletes_a_fine_tuned_model(api, adapter, django_capture_on_commit_callbacks):
    model_id = f"ft:tiny-llama:math-tutor:{adapter.id.hex}"
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/v1/models/{model_id}")
    assert response.json() == {"id": model_id, "object": "model", "deleted": True}
    assert not Adapter.objects.exists()
    assert api.delete("/v1/models/tiny-llama").status_code == 404


def test_it_validates_ownership(stranger_api, adapter):
    model_id = f"ft:tiny-llama:math-tutor:{adapter.id.hex}"
    assert stranger_api.get(f"/v1/models/{model_id}").status_code == 404
    assert stranger_api.delete(f"/v1/models/{model_id}").status_code == 404
    assert [m["id"] for m in stranger_api.get("/v1/models").json()["data"]] == ["tiny-llama"]
    assert Adapter.objects.filter(pk=adapter.pk).exists()


def test_it_requires_authentication(anonymous, base_model):
    assert anonymous.get("/v1/models").status_code == 401
    assert anonymous.get("/v1/models/tiny-llama").status_code == 401

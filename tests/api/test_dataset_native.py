"""GET /api/datasets/{id}/preview and /stats (the engine's view of a data set through a base model)."""

from __future__ import annotations


def test_preview_works(api, dataset, base_model):
    response = api.get(f"/api/datasets/file-{dataset.id.hex}/preview", {"base_model": "tiny-llama", "n": 2})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["base_model"] == "tiny-llama" and len(body["rows"]) == 2
    tokens = body["rows"][0]["tokens"]
    assert any(t["trained"] for t in tokens) and not all(t["trained"] for t in tokens)  # answers only
    assert api.get(f"/api/datasets/{dataset.id}/preview", {"base_model": str(base_model.id)}).status_code == 200


def test_stats_work(api, dataset, base_model):
    response = api.get(f"/api/datasets/file-{dataset.id.hex}/stats", {"base_model": "tiny-llama",
                                                                      "max_seq_len": 16})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["max_seq_len"] == 16 and body["truncated_rows"] > 0 and body["max"] > 16


def test_bad_parameters(api, dataset, base_model):
    url = f"/api/datasets/file-{dataset.id.hex}/preview"
    assert api.get(url).json()["error"]["param"] == "base_model"
    assert api.get(url, {"base_model": "nope"}).status_code == 404
    for params in ({"n": "0"}, {"n": "many"}, {"max_seq_len": "4"}):
        response = api.get(url, {"base_model": "tiny-llama", **params})
        assert response.status_code == 400 and response.json()["error"]["param"] in params


def test_it_validates_ownership(stranger_api, dataset, base_model):
    for kind in ("preview", "stats"):
        response = stranger_api.get(f"/api/datasets/file-{dataset.id.hex}/{kind}", {"base_model": "tiny-llama"})
        assert response.status_code == 404


def test_it_requires_authentication(anonymous, dataset):
    assert anonymous.get(f"/api/datasets/file-{dataset.id.hex}/preview").status_code == 401

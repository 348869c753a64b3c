"""GET /api/openapi.json and /api/docs: public, complete, self-hosted."""

from __future__ import annotations

import re

from django.urls import get_resolver

from webapp.api.openapi import _route_paths


def test_the_document_is_public(anonymous, db):
    response = anonymous.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    assert {"/v1/files", "/v1/fine_tuning/jobs", "/v1/models"} <= set(document["paths"])
    create = document["paths"]["/v1/fine_tuning/jobs"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("FineTuningJobCreate")
    assert "lora" in document["components"]["schemas"]["FineTuningJobCreate"]["properties"]


def test_every_route_is_documented(api):
    paths = api.get("/api/openapi.json").json()["paths"]
    documented = {re.sub(r"{\w+}", "{}", p) for p, ops in paths.items()
                  if not any(op.get("summary") == "(not described yet)" for op in ops.values())}
    own = [p for p in _route_paths(get_resolver().url_patterns) if p.startswith(("/v1/", "/api/"))]
    assert own and all(re.sub(r"{\w+}", "{}", p) in documented for p in own), own


def test_every_reference_resolves(api):
    text = api.get("/api/openapi.json").content.decode()
    schemas = api.get("/api/openapi.json").json()["components"]["schemas"]
    for name in re.findall(r'"#/components/schemas/(\w+)"', text):
        assert name in schemas


def test_the_docs_page_is_public(anonymous, db):
    assert anonymous.get("/api/docs").status_code == 200


def test_the_docs_page_renders_without_a_cdn(api):
    response = api.get("/api/docs")
    assert response.status_code == 200
    html = response.content.decode()
    assert "POST</span>/v1/fine_tuning/jobs" in html and "learning_rate_multiplier" in html
    assert "FineTuningJobCheckpoint" in html and "after" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)

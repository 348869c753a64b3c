"""``/api/openapi.json`` (the document) and ``/api/docs`` (a plain, self-hosted page rendering it). Public."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from ..errors import api_endpoint
from ..openapi import openapi_document


def _server_url(request: HttpRequest) -> str:
    return request.build_absolute_uri("/").rstrip("/") or "/"


def type_label(schema: dict[str, Any]) -> str:
    """A short human label for a JSON schema: ``FineTuningJob``, ``integer``, ``'auto' | integer``, ..."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    if "oneOf" in schema:
        return " | ".join(type_label(s) for s in schema["oneOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {type_label(schema.get('items', {}))}"
    return " | ".join(kind) if isinstance(kind, list) else kind


def _operations(document: dict) -> list[dict]:
    rows = []
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {})
            body_type, body_schema = next(iter(body.items()), (None, {}))
            ok = op["responses"].get("200", {}).get("content", {})
            rows.append({
                "method": method.upper(), "path": path, "summary": op.get("summary", ""),
                "description": op.get("description", ""), "tag": (op.get("tags") or [""])[0],
                "public": op.get("security") == [],
                "parameters": [{**p, "where": p["in"], "type": type_label(p.get("schema", {}))}
                               for p in op.get("parameters", [])],
                "body": type_label(body_schema.get("schema", {})) if body_type else "", "body_type": body_type,
                "response": " / ".join(f"{t}: {type_label(c.get('schema', {}))}" for t, c in ok.items()),
                "anchor": op.get("operationId", f"{method}-{path}"),
            })
    return rows


def _schemas(document: dict) -> list[dict]:
    rows = []
    for name, schema in document["components"]["schemas"].items():
        required = set(schema.get("required", []))
        fields = [{"name": field, "type": type_label(sub), "required": field in required,
                   "description": sub.get("description", "")} for field, sub in schema.get("properties", {}).items()]
        rows.append({"name": name, "description": schema.get("description", ""), "fields": fields})
    return rows


@api_endpoint("GET")
def openapi_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(openapi_document(_server_url(request)), json_dumps_params={"indent": 1})


@api_endpoint("GET")
def docs_page(request: HttpRequest) -> HttpResponse:
    document = openapi_document(_server_url(request))
    return render(request, "api/docs.html", {
        "info": document["info"], "operations": _operations(document), "schemas": _schemas(document),
    })

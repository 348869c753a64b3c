"""``/api/playground/``: start a session (POST), list them (GET); ``/api/playground/<id>``: one session.

POST body (JSON):

- ``base_model`` (string, required unless ``parent`` is given): the id of the base model that answers.
- ``adapters`` (list of strings, at most four): adapter ids of that base model, in display order.
- ``prompt`` (string, required): the user's message.
- ``settings`` (object): ``max_new_tokens``, ``temperature``, ``top_p``, ``seed`` (defaults fill the rest; a
  follow-up's default is its parent's settings).
- ``parent`` (string): the id of a succeeded session of yours to follow up. Its base model and adapters answer
  again (``base_model`` and ``adapters`` may be left out, and must match when given), each with its own
  conversation so far: the user's earlier prompts and that column's earlier answers, then ``prompt``.
"""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpRequest, JsonResponse

from webapp.adapters.models import Adapter
from webapp.api.errors import ApiError, api_endpoint, not_found, parse_json_body
from webapp.basemodels.models import BaseModel
from webapp.lib.owned import get_owned_or_404

from .actions import PlaygroundRejected, check_adapter_count, create_session
from .models import PlaygroundSession
from .serializers import session_json

LIST_LIMIT = 100


def _visible_or_404(queryset, user, kind: str, identifier: Any, param: str):
    try:
        return get_owned_or_404(queryset, user, pk=identifier)
    except Http404 as exc:  # another user's object answers exactly like a missing one
        raise not_found(kind, str(identifier), param=param) from exc


def resolve_parent(user, body: dict[str, Any]) -> PlaygroundSession | None:
    """The session a follow-up names, visible to ``user`` (404 otherwise); None for a new chat."""
    parent_id = body.get("parent")
    if parent_id is None:
        return None
    if not isinstance(parent_id, str) or not parent_id:
        raise ApiError("parent must be the id (a string) of the session to follow up.", param="parent")
    return _visible_or_404(PlaygroundSession.objects.select_related("base_model"), user, "playground session",
                           parent_id, "parent")


def resolve_choices(user, body: dict[str, Any],
                    parent: PlaygroundSession | None = None) -> tuple[BaseModel, list[Adapter]]:
    """The base model and adapters a request names (by default a follow-up's parent's), each visible to ``user``
    (404 otherwise)."""
    if parent is not None:
        body = {"base_model": str(parent.base_model_id), "adapters": parent.adapter_ids, **body}
    adapter_ids = body.get("adapters", [])
    if not isinstance(adapter_ids, list) or not all(isinstance(a, str) for a in adapter_ids):
        raise ApiError("adapters must be a list of adapter ids (strings).", param="adapters")
    check_adapter_count(len(adapter_ids))
    base_id = body.get("base_model")
    if not isinstance(base_id, str) or not base_id:
        raise ApiError("base_model is required: the id of the base model that answers.", param="base_model")
    base_model = _visible_or_404(BaseModel.objects, user, "base model", base_id, "base_model")
    adapters = [_visible_or_404(Adapter.objects, user, "adapter", a, "adapters") for a in adapter_ids]
    return base_model, adapters


@api_endpoint("GET", "POST")
def playground_sessions(request: HttpRequest) -> JsonResponse:
    if request.method == "GET":
        sessions = PlaygroundSession.objects.visible_to(request.user).select_related("base_model")[:LIST_LIMIT]
        return JsonResponse({"object": "list", "data": [session_json(s) for s in sessions]})
    body = parse_json_body(request)
    parent = resolve_parent(request.user, body)
    try:
        base_model, adapters = resolve_choices(request.user, body, parent)
        session = create_session(request.user, base_model, adapters, body.get("prompt"), body.get("settings"),
                                 parent=parent)
    except PlaygroundRejected as exc:
        raise ApiError(str(exc), param=exc.param, code="invalid_playground") from None
    return JsonResponse(session_json(session), status=201)


@api_endpoint("GET")
def playground_session_detail(request: HttpRequest, session_id: str) -> JsonResponse:
    session = _visible_or_404(PlaygroundSession.objects.select_related("base_model"), request.user,
                              "playground session", session_id, None)
    return JsonResponse(session_json(session))

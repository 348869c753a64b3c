"""The playground page: pick a base model and up to four adapters, ask once, read the answers side by side."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel
from webapp.lib.owned import get_owned_or_404

from .actions import DEFAULT_SETTINGS
from .models import MAX_ADAPTERS, PlaygroundSession
from .serializers import session_json

RECENT_SESSIONS = 10


def _context(request: HttpRequest, session: PlaygroundSession | None) -> dict:
    user = request.user
    base_models = list(BaseModel.objects.visible_to(user))
    adapters = Adapter.objects.visible_to(user).select_related("base_model")
    return {
        "base_models": base_models,
        "options": {
            "base_models": [{"id": str(m.id), "name": m.name, "chat_template": m.has_chat_template}
                            for m in base_models],
            "adapters": [{"id": str(a.id), "name": a.name, "base_model": str(a.base_model_id), "rank": a.rank}
                         for a in adapters],
            "defaults": DEFAULT_SETTINGS,
            "max_adapters": MAX_ADAPTERS,
        },
        "session": session_json(session) if session is not None else None,
        "recent": PlaygroundSession.objects.visible_to(user).select_related("base_model")[:RECENT_SESSIONS],
    }


def playground_page(request: HttpRequest) -> HttpResponse:
    return render(request, "playground/page.html", _context(request, None))


def session_page(request: HttpRequest, session_id) -> HttpResponse:
    session = get_owned_or_404(PlaygroundSession.objects.select_related("base_model"), request.user, pk=session_id)
    return render(request, "playground/page.html", _context(request, session))

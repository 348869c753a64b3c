"""The API keys page: a user makes keys (each shown once), sees when they were last used, and revokes them."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from .keys import KEY_CACHE_SECONDS, MAX_ACTIVE_KEYS, NAME_MAX_CHARS, KeyRejected, issue_key, revoke_api_key
from .models import ApiKey

SESSION_ONLY = ("Keys are made and revoked from a signed-in browser session, not with an API key (a leaked key "
                "must not be able to make itself keys that outlive it).")


def _page(request: HttpRequest, status: int = 200, **extra) -> HttpResponse:
    keys = ApiKey.objects.filter(user=request.user).order_by("revoked_at", "-created_at")
    context = {"keys": keys, "max_keys": MAX_ACTIVE_KEYS, "name_max": NAME_MAX_CHARS,
               "api_base": request.build_absolute_uri("/v1"), "error": None, "new_key": None, **extra}
    return render(request, "accounts/api_keys.html", context, status=status)


@require_http_methods(["GET", "POST"])
def api_keys(request: HttpRequest) -> HttpResponse:
    """GET: the user's keys. POST: a new key, shown on the page this answer renders and never again (it is
    not kept anywhere: only its hash is stored)."""
    if getattr(request, "api_key_auth", False):
        return HttpResponseForbidden(SESSION_ONLY, content_type="text/plain; charset=utf-8")
    if request.method == "GET":
        return _page(request)
    try:
        api_key, raw_key = issue_key(request.user, request.POST.get("name", ""))
    except KeyRejected as exc:
        return _page(request, status=400, error=str(exc), name=request.POST.get("name", ""))
    response = _page(request, status=201, new_key={"key": raw_key, "row": api_key})
    response["Cache-Control"] = "no-store"  # the page holds the raw key: no browser or proxy may keep it
    return response


@require_POST
def api_key_revoke(request: HttpRequest, key_id: int) -> HttpResponse:
    if getattr(request, "api_key_auth", False):
        return HttpResponseForbidden(SESSION_ONLY, content_type="text/plain; charset=utf-8")
    api_key = get_object_or_404(ApiKey, pk=key_id, user=request.user)  # another user's key: 404
    revoke_api_key(api_key)
    messages.success(request, f"Key {api_key.prefix}… revoked: this server refuses it now (every web process "
                              f"within {KEY_CACHE_SECONDS:g} s).")
    return redirect("api-keys")

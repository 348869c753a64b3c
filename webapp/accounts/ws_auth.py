"""Websocket authentication: the browser's session cookie, or an API key (`?key=` or Bearer header)."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings

from .keys import bearer_token, user_for_key


class _ApiKeyAuth:
    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        headers = dict(scope.get("headers", []))
        raw_key = bearer_token(headers.get(b"authorization", b"").decode("latin-1") or None)
        if raw_key is None:
            raw_key = (parse_qs(scope.get("query_string", b"").decode()).get("key") or [None])[0]
        if raw_key:
            user = await database_sync_to_async(user_for_key)(raw_key)
            if user is not None:
                scope = dict(scope, user=user, api_key_auth=True)
        return await self.inner(scope, receive, send)


def ApiKeyOrSessionAuthMiddleware(inner):  # noqa: N802 - named like the Channels middleware it composes
    """Session auth first; a valid API key then overrides the (anonymous) session user."""
    return AuthMiddlewareStack(_ApiKeyAuth(inner))


class _OriginCheck(OriginValidator):
    """Browsers always send ``Origin`` on websockets: check it against ALLOWED_HOSTS (no cross-site sockets
    riding a session cookie). Scripts send none; a socket without one is let in only when an API key
    authenticated it, since there is then no ambient credential to abuse."""

    async def __call__(self, scope, receive, send):
        has_origin = any(name == b"origin" for name, _ in scope.get("headers", []))
        if not has_origin and scope.get("api_key_auth"):
            return await self.application(scope, receive, send)
        return await super().__call__(scope, receive, send)


def WebsocketGuard(inner):  # noqa: N802 - a middleware factory, named like Channels' own
    """Authentication (session or API key), then the origin check, then ``inner``."""
    return ApiKeyOrSessionAuthMiddleware(_OriginCheck(inner, settings.ALLOWED_HOSTS))

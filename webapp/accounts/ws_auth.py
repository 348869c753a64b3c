"""Websocket authentication: the browser's session cookie, or an API key (`?key=` or Bearer header)."""

from __future__ import annotations

from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async

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

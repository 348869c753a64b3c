"""Whether an HTTP request comes from a signed-in user, decided from its ASGI scope before its body arrives.

The web server asks this before it spools a large upload to the data disk (webapp/lib/asgi_body.py): an
anonymous client must not be able to fill the disk with a body the login check would refuse only after it
arrived. It decides as the middleware will (ApiKeyMiddleware, then Django's AuthenticationMiddleware): a Bearer
key must be a valid key of an active user (the middleware refuses a bad one outright); otherwise the session
cookie must belong to a logged-in, active user whose session is still valid (e.g. not ended by a password
change).
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.db import close_old_connections
from django.http.cookie import parse_cookie

from .keys import bearer_token, user_for_key


def signed_in(scope: dict[str, Any]) -> bool:
    """Whether the request's API key or session cookie signs in an active user.

    It queries the database: call it in a request thread, never in the event loop. The connection it used is
    handed back when it returns (outside a request nothing else would hand it back to the pool).
    """
    headers = scope.get("headers", [])
    authorization = next((value.decode("latin-1") for name, value in headers if name.lower() == b"authorization"),
                         None)
    cookies = "; ".join(value.decode("latin-1") for name, value in headers if name.lower() == b"cookie")
    try:
        token = bearer_token(authorization)
        if token is not None:
            return user_for_key(token) is not None
        session_key = parse_cookie(cookies).get(settings.SESSION_COOKIE_NAME)
        if not session_key:
            return False
        session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
        return get_user(SimpleNamespace(session=session)).is_authenticated
    finally:
        close_old_connections()

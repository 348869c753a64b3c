"""Authentication for the API (Bearer keys) and a login requirement for everything else."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect

from .keys import bearer_token, user_for_key

API_PREFIXES = ("/v1/", "/api/")
PUBLIC_PATHS = ("/accounts/login/", "/healthz", "/static/", "/favicon.ico", "/api/docs", "/api/openapi.json")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def api_error(message: str, status: int, code: str | None = None, param: str | None = None,
              error_type: str = "invalid_request_error") -> JsonResponse:
    """An error in the shape of OpenAI's error object (the same shape for /v1 and /api)."""
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JsonResponse(body, status=status)


class ApiKeyMiddleware:
    """`Authorization: Bearer <key>` logs the request in as the key's user.

    A request authenticated by a key carries no cookies an attacker could ride, so CSRF does not apply to
    it; a request with a bad key is refused outright rather than treated as anonymous.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = bearer_token(request.headers.get("Authorization"))
        if token is not None:
            user = user_for_key(token)
            if user is None:
                return api_error("Incorrect API key provided.", 401, code="invalid_api_key")
            request.user = user
            request.api_key_auth = True
            request._dont_enforce_csrf_checks = True
        return self.get_response(request)


class LoginRequiredMiddleware:
    """Every page needs a login (redirect to the login page); every API call answers 401 without one."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if request.user.is_authenticated or path.startswith(PUBLIC_PATHS) or path.startswith("/admin/"):
            return self.get_response(request)
        return login_required_response(request)


def login_required_response(request: HttpRequest) -> HttpResponse:
    """The answer to an anonymous request that needs a login: 401 for the API, the login page otherwise."""
    if is_api_path(request.path):
        return api_error("Authentication required: send 'Authorization: Bearer <API key>'.", 401,
                         code="invalid_api_key")
    return redirect(f"{settings.LOGIN_URL}?next={request.get_full_path()}")

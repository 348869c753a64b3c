"""Refuse NUL characters in a request's path and query string before any view sees them.

PostgreSQL text cannot hold NUL (0x00): a NUL that reaches a query filter (``?purpose=%00``, an id in the path)
raises ``DataError`` deep in the ORM, a 500. Nothing legitimate carries one, so it is a 400 at the door.
JSON bodies are checked where the API parses them (``webapp.api.errors.parse_json_body``); Django forms have
their own validator.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from webapp.accounts.middleware import api_error, is_api_path

MESSAGE = "The {where} contains a NUL character (\\0 or %00), which is never valid here: remove it."


def nul_in_request(request: HttpRequest) -> str | None:
    """Where a NUL is ("URL path", "query string") or None."""
    if "\x00" in request.path:
        return "URL path"
    if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
        return "query string"
    return None


class RejectNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        where = nul_in_request(request)
        if where is None:
            return self.get_response(request)
        message = MESSAGE.format(where=where)
        if is_api_path(request.path):
            return api_error(message, 400, code="invalid_characters")
        return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")

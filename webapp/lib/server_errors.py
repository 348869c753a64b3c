"""The answer to an exception no view turned into a response (Django's ``handler404`` and ``handler500``).

A missing page or a server error answers a page in the site's layout (templates/404.html, 500.html), and under
/v1 and /api an OpenAI-shaped JSON error, as every API view answers its own errors.

One such exception is not a bug and deserves a message: the disk filling up where no view can catch it, e.g.
Django spooling a multipart upload to FILE_UPLOAD_TEMP_DIR while the CSRF check reads the body, before any view
runs (the spooling handler has already removed its partial file). That answers 507 with the disk-full message:
an OpenAI-shaped error under /v1 and /api, a page elsewhere. Anything else is a plain 500. The same answer
goes to a request whose body could not even be spooled (webapp.lib.asgi_body).
"""

from __future__ import annotations

import logging
import sys

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.defaults import page_not_found as django_page_not_found
from django.views.defaults import server_error as django_server_error

from lora_engine.errors import DiskFullError, disk_full_message, is_disk_full
from webapp.accounts.middleware import api_error

logger = logging.getLogger(__name__)

API_PREFIXES = ("/v1/", "/api/")


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's handler404: an OpenAI-shaped error under /v1 and /api, templates/404.html elsewhere."""
    if request.path.startswith(API_PREFIXES):
        return api_error(f"Not found: {request.method} {request.path} names no object of yours and no route (the "
                         "API's routes are listed at /api/docs).", 404, code="not_found")
    return django_page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """Django's handler500: called while the exception is being handled, so ``sys.exc_info()`` holds it."""
    exc = sys.exc_info()[1]
    if is_disk_full(exc):
        return disk_full_response(request, exc)
    if request.path.startswith(API_PREFIXES):
        return api_error("The server failed to answer this request; the error is in its log. Try again, and "
                         "report it if it persists.", 500, error_type="server_error")
    return django_server_error(request)  # templates/500.html, rendered without the request (it may be the cause)


def disk_full_response(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """507 with the disk-full message for ``exc`` (a disk-full error): an OpenAI-shaped error under /v1 and
    /api, a page elsewhere."""
    message = str(exc) if isinstance(exc, DiskFullError) else disk_full_message("what you sent")
    if request.path.startswith(API_PREFIXES):
        return api_error(message, 507, code="disk_full", error_type="server_error")
    try:
        return render(request, "errors/disk_full.html", {"message": message}, status=507)
    except Exception:  # noqa: BLE001 - the page itself failed: the message alone still says what happened
        logger.exception("rendering the disk-full page failed")
        return HttpResponse(message, status=507, content_type="text/plain; charset=utf-8")

"""The one place where API failures become OpenAI-shaped error objects, and the decorator every API view wears.

Views raise :class:`ApiError` (or let a domain exception through); :func:`api_endpoint` turns each into
``{"error": {"message", "type", "param", "code"}}`` with the right status. The message always says what was
wrong and, where it can, what to send instead.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.db.models import ProtectedError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt

from lora_engine import json_nesting
from lora_engine.errors import LoraEngineError, disk_full_message, is_disk_full
from webapp.accounts.middleware import api_error
from webapp.adapters.validation import AdapterDiskFull
from webapp.datasets.actions import DatasetRejected
from webapp.datasets.preview import PreviewError
from webapp.jobs.actions import JobRejected

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class ApiError(Exception):
    """A failure to report to the client. ``extra`` adds fields inside the error object (e.g. ``problems``)."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None,
                 error_type: str = "invalid_request_error", **extra: Any):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.error_type = error_type
        self.extra = extra

    def response(self) -> JsonResponse:
        response = api_error(self.message, self.status, code=self.code, param=self.param, error_type=self.error_type)
        if self.extra:
            body = json.loads(response.content)
            body["error"].update(self.extra)
            response = JsonResponse(body, status=self.status)
        return response


def not_found(kind: str, identifier: str, param: str | None = None) -> ApiError:
    """OpenAI's wording for a missing object (another user's object answers exactly the same)."""
    return ApiError(f"No such {kind}: '{identifier}'.", status=404, code="not_found", param=param)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(request: HttpRequest) -> dict[str, Any]:
    """The request body as a JSON object.

    Raises:
        ApiError: not JSON, NaN/Infinity literals, nested too deeply, or not an object. (A body over
            DATA_UPLOAD_MAX_MEMORY_SIZE raises RequestDataTooBig, answered 413 by :func:`api_endpoint`; the web
            server refuses such a body before any view runs: webapp/lib/body_limits.py.)
    """
    raw = request.body
    if not raw.strip():
        raise ApiError("The request body is empty: send a JSON object (Content-Type: application/json).")
    try:
        body = json_nesting.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"We could not parse the JSON body of your request ({exc}). Send a JSON object "
                       "with Content-Type: application/json.") from None
    if not isinstance(body, dict):
        raise ApiError(f"The JSON body must be an object, not {type(body).__name__}.")
    if _holds_nul(body):
        raise ApiError("The JSON body contains a NUL character (\\u0000), which no field accepts: remove it.")
    return body


def _holds_nul(value: Any) -> bool:
    """Whether a NUL hides in any string or key of a parsed JSON value (PostgreSQL text cannot store one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _csrf_failure(request: HttpRequest) -> ApiError | None:
    """Session-authenticated writes need Django's CSRF token; Bearer-key requests are exempt (no cookies)."""
    if request.method in SAFE_METHODS or getattr(request, "api_key_auth", False):
        return None
    rejected = CsrfViewMiddleware(lambda r: HttpResponse()).process_view(request, None, (), {})
    if rejected is None:
        return None
    return ApiError("CSRF verification failed: send the X-CSRFToken header with the csrftoken cookie's value, "
                    "or authenticate with 'Authorization: Bearer <API key>'.", status=403, code="csrf_failed")


def error_for_exception(exc: Exception) -> ApiError | None:
    """The client-facing error for an exception raised below a view, or None for a genuine bug."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Http404):
        return ApiError("Not found.", status=404, code="not_found")
    if isinstance(exc, RequestDataTooBig):
        return ApiError("The request body is too large for a JSON request. Upload data with POST /v1/files "
                        "(multipart) and refer to it by its file id.", status=413, code="request_too_large")
    if isinstance(exc, (TooManyFieldsSent, MultiPartParserError, SuspiciousOperation)):
        return ApiError(f"The request could not be read: {exc}", code="invalid_request")
    if isinstance(exc, AdapterDiskFull):
        return ApiError(str(exc), status=exc.status, code=exc.code, error_type="server_error")
    if isinstance(exc, DatasetRejected):
        return ApiError(str(exc), status=exc.status, param=exc.param, code=exc.code, problems=exc.problems)
    if isinstance(exc, JobRejected):
        return ApiError(str(exc), param=exc.param, code="invalid_job", problems=list(exc.problems))
    if isinstance(exc, ProtectedError):
        message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        return ApiError(message or "The object is in use by fine-tuning jobs; delete those jobs first.",
                        status=409, code="in_use")
    if isinstance(exc, PreviewError):
        return ApiError(str(exc), code="preview_failed")
    if isinstance(exc, LoraEngineError):
        return ApiError(str(exc), code="invalid_request")
    if is_disk_full(exc):  # e.g. Django spooling a large multipart upload to FILE_UPLOAD_TEMP_DIR
        return ApiError(disk_full_message("what you sent"), status=507, code="disk_full",
                        error_type="server_error")
    return None


def api_endpoint(*methods: str) -> Callable:
    """Wrap an API view: allowed methods (405 otherwise), CSRF for sessions, errors as OpenAI error objects."""
    allowed = tuple(m.upper() for m in methods)

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in allowed:
                response = ApiError(f"Method {request.method} is not allowed here; use {', '.join(allowed)}.",
                                    status=405, code="method_not_allowed").response()
                response["Allow"] = ", ".join(allowed)
                return response
            csrf_error = _csrf_failure(request)
            if csrf_error is not None:
                return csrf_error.response()
            try:
                return view(request, *args, **kwargs)
            except Exception as exc:
                error = error_for_exception(exc)
                if error is None:
                    raise
                return error.response()

        return wrapper

    return decorate

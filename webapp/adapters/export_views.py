"""The adapter's GGUF download for llama.cpp (page link and API). A merged model's GGUF: gguf_views.py."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET

from webapp.api.errors import ApiError, api_endpoint
from webapp.lib.downloads import ranged_file_response
from webapp.lib.owned import get_owned_or_404

from .exports import ExportDiskFull, ExportRejected, adapter_gguf_filename, build_adapter_gguf
from .models import Adapter


def _adapter_gguf(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = get_owned_or_404(Adapter.objects.select_related("base_model"), request.user, pk=adapter_id)
    path = build_adapter_gguf(adapter)
    return ranged_file_response(request, path, adapter_gguf_filename(adapter), etag=f"{adapter.sha256}-gguf")


@require_GET
def adapter_gguf_download(request: HttpRequest, adapter_id) -> HttpResponse:
    try:
        return _adapter_gguf(request, adapter_id)
    except ExportRejected as exc:
        messages.error(request, str(exc))
        return redirect("adapters:detail", adapter_id=adapter_id)


@api_endpoint("GET")
def api_adapter_gguf(request: HttpRequest, adapter_id) -> HttpResponse:
    try:
        return _adapter_gguf(request, adapter_id)
    except ExportDiskFull as exc:
        raise ApiError(str(exc), status=507, code="disk_full") from exc
    except ExportRejected as exc:
        raise ApiError(str(exc), status=422, code="export_unsupported") from exc

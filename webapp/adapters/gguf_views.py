"""A merged model's GGUF export, on the adapter page and in the native API. Thin: parse, authorize, call
webapp.adapters.gguf_exports. A worker builds the file; these views only queue it and serve it once complete.

    POST /adapters/<id>/merges/<merge_id>/gguf           the page's Export GGUF button
    GET  /adapters/<id>/merges/<merge_id>/gguf/download  the GGUF file (HTTP Range; 409 until it succeeded)
    POST /api/merges/<merge_id>/gguf                     → the export (202 when queued, 200 when already requested)
    GET  /api/merges/<merge_id>/gguf/download            the GGUF file (HTTP Range; 409 until it succeeded)

The export's state also rides along in the merge's JSON (``gguf_export``), which the adapter page polls.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from webapp.api.errors import ApiError, api_endpoint
from webapp.lib.downloads import ranged_file_response
from webapp.lib.leased_work_views import lifecycle_json, not_ready_message
from webapp.lib.owned import get_owned_or_404

from .gguf_exports import (
    GGUFExportRejected,
    current_export,
    downloadable_gguf,
    gguf_filename,
    request_gguf_export,
    stage_of,
)
from .models import GGUFExport, Merge

GGUF_CONTENT_TYPE = "application/octet-stream"


def gguf_export_json(export: GGUFExport, user=None) -> dict:
    """The JSON shape of an export (API, and inside a merge's JSON). The technical error is for staff."""
    path = downloadable_gguf(export)
    merge = export.merge
    return {
        "id": str(export.id),
        "object": "gguf_export",
        "merge_id": str(merge.id),
        "adapter_id": str(merge.adapter_id),
        "dtype": export.dtype,
        **lifecycle_json(export, stage_of(export), user),
        "size_bytes": export.size_bytes if path else None,
        "sha256": export.sha256 if path else None,
        "download_url": f"/api/merges/{merge.id}/gguf/download" if path else None,
        "page_download_url": f"/adapters/{merge.adapter_id}/merges/{merge.id}/gguf/download" if path else None,
    }


def merge_gguf_json(merge: Merge, user=None) -> dict | None:
    """The merge's GGUF export as JSON, or None when none was requested (for merge_json)."""
    export = current_export(merge)
    return gguf_export_json(export, user) if export is not None else None


def _not_ready_message(export: GGUFExport | None) -> str:
    if export is None:
        return "No GGUF export of this merge was requested; request one first (POST /api/merges/<id>/gguf)."
    return not_ready_message(export, "GGUF export", stage_of(export), "the file",
                             "The GGUF file is missing on the server; request the export again.")


def _owned_merge(request: HttpRequest, **lookup) -> Merge:
    return get_owned_or_404(Merge.objects.select_related("adapter").prefetch_related("gguf_exports"), request.user,
                            **lookup)


def _download(request: HttpRequest, merge: Merge) -> tuple[HttpResponse | None, GGUFExport | None]:
    export = current_export(merge)
    path = downloadable_gguf(export)
    if path is None:
        return None, export
    response = ranged_file_response(request, path, gguf_filename(export), etag=export.sha256,
                                    content_type=GGUF_CONTENT_TYPE)
    return response, export


# ---------------------------------------------------------------------------------------------------------
# Pages


@require_POST
def gguf_export_request_page(request: HttpRequest, adapter_id, merge_id) -> HttpResponse:
    merge = _owned_merge(request, pk=merge_id, adapter_id=adapter_id)
    try:
        export, queued = request_gguf_export(merge)
    except GGUFExportRejected as exc:
        messages.error(request, str(exc))
        return redirect("adapters:detail", adapter_id=adapter_id)
    if queued:
        messages.success(request, f"GGUF export ({export.dtype}) queued: a worker writes the merged model as GGUF.")
    else:
        messages.info(request, f"This GGUF export was already requested; it is {export.state}.")
    return redirect("adapters:detail", adapter_id=adapter_id)


@require_GET
def gguf_download_page(request: HttpRequest, adapter_id, merge_id) -> HttpResponse:
    merge = _owned_merge(request, pk=merge_id, adapter_id=adapter_id)
    response, export = _download(request, merge)
    if response is None:
        return HttpResponse(_not_ready_message(export), status=409, content_type="text/plain; charset=utf-8")
    return response


# ---------------------------------------------------------------------------------------------------------
# API


@api_endpoint("POST")
def api_gguf_export(request: HttpRequest, merge_id) -> JsonResponse:
    merge = _owned_merge(request, pk=merge_id)
    try:
        export, queued = request_gguf_export(merge)
    except GGUFExportRejected as exc:
        raise ApiError(str(exc), status=409, code="merge_not_exportable") from exc
    return JsonResponse(gguf_export_json(export, request.user), status=202 if queued else 200)


@api_endpoint("GET")
def api_gguf_download(request: HttpRequest, merge_id) -> HttpResponse:
    merge = _owned_merge(request, pk=merge_id)
    response, export = _download(request, merge)
    if response is None:
        raise ApiError(_not_ready_message(export), status=409, code="gguf_not_ready")
    return response

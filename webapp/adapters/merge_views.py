"""Merges, on the adapter page and in the native API. Thin: parse, authorize, call webapp.adapters.merges.

    POST /adapters/<id>/merge                      the page's Merge button (form: dtype)
    GET  /adapters/<id>/merges/<merge_id>/download the merged model (.tar, HTTP Range)
    POST /api/adapters/<id>/merge                  {"dtype": "auto|fp16|bf16|fp32"} → the merge (202 when queued)
    GET  /api/adapters/<id>/merges                 the adapter's merges
    GET  /api/merges/<merge_id>                    one merge (state, progress, verification)
    GET  /api/merges/<merge_id>/download           the merged model (.tar, HTTP Range)

A merged model's GGUF export (queued by a worker like the merge itself): gguf_views.py.
"""

from __future__ import annotations

from pathlib import Path

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from webapp.api.errors import ApiError, api_endpoint, parse_json_body
from webapp.lib.downloads import ranged_file_response
from webapp.lib.leased_work_views import lifecycle_json, not_ready_message
from webapp.lib.owned import get_owned_or_404

from .gguf_views import merge_gguf_json
from .merge_archive import archive_folder, archive_path, archive_sha256
from .merges import MergeRejected, request_merge, stage_of
from .models import Adapter, Merge


def downloadable_archive(merge: Merge) -> Path | None:
    """The archive of a succeeded merge, or None: nothing else is ever offered for download."""
    if merge.state != Merge.State.SUCCEEDED:
        return None
    path = archive_path(merge)
    return path if path.is_file() and archive_sha256(merge) else None


def merge_json(merge: Merge, user=None) -> dict:
    """The JSON shape of a merge (API and the adapter page's polling). The technical error is for staff."""
    archive = downloadable_archive(merge)
    return {
        "id": str(merge.id),
        "object": "merge",
        "adapter_id": str(merge.adapter_id),
        "dtype": merge.dtype,
        **lifecycle_json(merge, stage_of(merge), user),
        "peak_memory_bytes": merge.peak_memory_bytes,
        "size_bytes": merge.size_bytes or None,
        "verification": {"max_abs_diff": merge.max_abs_diff},
        "max_abs_diff": merge.max_abs_diff,
        "archive_bytes": archive.stat().st_size if archive else None,
        "archive_sha256": archive_sha256(merge) if archive else None,
        "download_url": f"/api/merges/{merge.id}/download" if archive else None,
        "page_download_url": f"/adapters/{merge.adapter_id}/merges/{merge.id}/download" if archive else None,
        "gguf_export": merge_gguf_json(merge, user),
    }


def _not_ready_message(merge: Merge) -> str:
    return not_ready_message(merge, "merge", stage_of(merge), "the merged model",
                             "The merged model's archive is missing on the server; request the merge again.")


def _download(request: HttpRequest, merge: Merge) -> HttpResponse | None:
    archive = downloadable_archive(merge)
    if archive is None:
        return None
    return ranged_file_response(request, archive, f"{archive_folder(merge)}.tar", etag=archive_sha256(merge),
                                content_type="application/x-tar")


# ---------------------------------------------------------------------------------------------------------
# Pages


@require_POST
def merge_request_page(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = get_owned_or_404(Adapter.objects, request.user, pk=adapter_id)
    try:
        merge, queued = request_merge(adapter, request.POST.get("dtype", "auto"))
    except MergeRejected as exc:
        messages.error(request, str(exc))
        return redirect("adapters:detail", adapter_id=adapter.id)
    if queued:
        messages.success(request, f"Merge ({merge.dtype}) queued: a worker merges the adapter into its base model.")
    else:
        messages.info(request, f"This merge ({merge.dtype}) was already requested; it is {merge.state}.")
    return redirect("adapters:detail", adapter_id=adapter.id)


@require_GET
def merge_download_page(request: HttpRequest, adapter_id, merge_id) -> HttpResponse:
    merge = get_owned_or_404(Merge.objects.select_related("adapter"), request.user, pk=merge_id,
                             adapter_id=adapter_id)
    response = _download(request, merge)
    if response is None:
        return HttpResponse(_not_ready_message(merge), status=409, content_type="text/plain; charset=utf-8")
    return response


# ---------------------------------------------------------------------------------------------------------
# API


@api_endpoint("POST")
def api_adapter_merge(request: HttpRequest, adapter_id) -> JsonResponse:
    adapter = get_owned_or_404(Adapter.objects, request.user, pk=adapter_id)
    body = parse_json_body(request) if request.body.strip() else {}
    try:
        merge, queued = request_merge(adapter, body.get("dtype", "auto"))
    except MergeRejected as exc:
        raise ApiError(str(exc), param=exc.param, code="invalid_dtype") from exc
    return JsonResponse(merge_json(merge, request.user), status=202 if queued else 200)


@api_endpoint("GET")
def api_adapter_merges(request: HttpRequest, adapter_id) -> JsonResponse:
    adapter = get_owned_or_404(Adapter.objects, request.user, pk=adapter_id)
    merges = (Merge.objects.visible_to(request.user).filter(adapter=adapter).select_related("adapter")
              .prefetch_related("gguf_exports"))
    return JsonResponse({"object": "list", "data": [merge_json(m, request.user) for m in merges]})


@api_endpoint("GET")
def api_merge_detail(request: HttpRequest, merge_id) -> JsonResponse:
    merge = get_owned_or_404(Merge.objects.select_related("adapter").prefetch_related("gguf_exports"), request.user,
                             pk=merge_id)
    return JsonResponse(merge_json(merge, request.user))


@api_endpoint("GET")
def api_merge_download(request: HttpRequest, merge_id) -> HttpResponse:
    merge = get_owned_or_404(Merge.objects.select_related("adapter"), request.user, pk=merge_id)
    response = _download(request, merge)
    if response is None:
        raise ApiError(_not_ready_message(merge), status=409, code="merge_not_ready")
    return response

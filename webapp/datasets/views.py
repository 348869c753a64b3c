"""Data set pages: list with a drag-and-drop (chunked) upload, detail with preview and token stats, delete.

Thin: parse, authorize, call an action. The chunked-upload endpoints answer JSON for the page's script:
``{"error": {"message", "param", "problems": [{"line", "field", "message"}]}}`` on failure.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from lora_engine import json_nesting
from lora_engine.config import DATA_FORMATS
from webapp.lib.body_limits import accepts_upload
from webapp.lib.owned import get_owned_or_404

from . import uploads
from .actions import (
    DatasetInUseError,
    DatasetRejected,
    UploadDiskFull,
    create_dataset_from_upload,
    delete_dataset,
    refused_when_disk_full,
)
from .detail import detail_context
from .models import Dataset


def _rejected_json(exc: DatasetRejected) -> JsonResponse:
    body = {"message": str(exc), "param": exc.param, "problems": exc.problems}
    status = exc.status
    if isinstance(exc, uploads.UploadConflict):
        body["expected_offset"] = exc.expected_offset
        status = 409
    return JsonResponse({"error": body}, status=status)


def _list_context(request: HttpRequest, **extra) -> dict:
    datasets = Dataset.objects.visible_to(request.user).select_related("owner")
    return {"datasets": datasets, "formats": DATA_FORMATS, "chunk_bytes": uploads.CHUNK_BYTES,
            "error": None, "problems": [], **extra}


@require_GET
def dataset_list(request: HttpRequest) -> HttpResponse:
    return render(request, "datasets/list.html", _list_context(request))


@accepts_upload
@require_POST
def upload_form(request: HttpRequest) -> HttpResponse:
    """The page's plain form (without JavaScript): one multipart POST; Django spools big files to disk."""
    try:
        with refused_when_disk_full():  # Django spools a big file to FILE_UPLOAD_TEMP_DIR while parsing
            uploaded = request.FILES.get("file")
        if uploaded is None:
            raise DatasetRejected("Choose a file to upload.")
        data_format = request.POST.get("format", "auto")
        if data_format not in DATA_FORMATS:
            raise DatasetRejected(f"Unknown format {data_format!r}: choose one of {', '.join(DATA_FORMATS)}.",
                                  param="format")
        dataset = create_dataset_from_upload(request.user, uploaded, data_format=data_format)
    except DatasetRejected as exc:
        context = _list_context(request, error=str(exc), problems=exc.problems)
        return render(request, "datasets/list.html", context, status=exc.status)
    messages.success(request, f"Data set {dataset.name} uploaded: {dataset.rows} rows ({dataset.format}).")
    return redirect("datasets:detail", dataset_id=dataset.id)


@require_POST
def upload_start(request: HttpRequest) -> JsonResponse:
    try:
        body = json_nesting.loads(request.body or b"{}")
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except RequestDataTooBig:
        return JsonResponse({"error": {"message": "The request body is too large: send only {name, size, format} "
                                       "here and the file's bytes as chunks.", "param": None, "problems": []}},
                            status=413)
    except json_nesting.JsonTooDeepError as exc:
        return JsonResponse({"error": {"message": f"{exc}: send a JSON object {{name, size, format}}.",
                                       "param": None, "problems": []}}, status=400)
    except ValueError:
        return JsonResponse({"error": {"message": "Send a JSON object: {name, size, format}.", "param": None,
                                       "problems": []}}, status=400)
    try:
        upload = uploads.start_upload(request.session, body.get("name"), body.get("size"),
                                      body.get("format") or "auto")
    except DatasetRejected as exc:
        return _rejected_json(exc)
    return JsonResponse({"id": upload.upload_id, "chunk_bytes": uploads.CHUNK_BYTES, "received": 0}, status=201)


@require_POST
def upload_chunk(request: HttpRequest, upload_id: str) -> JsonResponse:
    upload = uploads.get_upload(request.session, upload_id)
    if upload is None:
        return JsonResponse({"error": {"message": "No such upload in progress: start it again.", "param": None,
                                       "problems": []}}, status=404)
    try:
        offset = int(request.GET.get("offset", ""))
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return JsonResponse({"error": {"message": "Send ?offset=<bytes already sent> with the chunk.",
                                       "param": "offset", "problems": []}}, status=400)
    try:
        received = uploads.append_chunk(upload, offset, request, length)
    except UploadDiskFull as exc:
        uploads.discard_upload(request.session, upload.upload_id)  # no half-stored file waits for a resume
        request.session.save()  # SessionMiddleware saves nothing on a 5xx answer
        return _rejected_json(exc)
    except DatasetRejected as exc:
        return _rejected_json(exc)
    return JsonResponse({"id": upload.upload_id, "received": received, "size": upload.size})


@require_POST
def upload_finish(request: HttpRequest, upload_id: str) -> JsonResponse:
    upload = uploads.get_upload(request.session, upload_id)
    if upload is None:
        return JsonResponse({"error": {"message": "No such upload in progress: start it again.", "param": None,
                                       "problems": []}}, status=404)
    try:
        dataset = uploads.finish_upload(request.session, request.user, upload)
    except DatasetRejected as exc:
        return _rejected_json(exc)
    url = reverse("datasets:detail", kwargs={"dataset_id": dataset.id})
    return JsonResponse({"id": str(dataset.id), "name": dataset.name, "format": dataset.format,
                         "rows": dataset.rows, "url": url}, status=201)


@require_GET
def dataset_detail(request: HttpRequest, dataset_id) -> HttpResponse:
    dataset = get_owned_or_404(Dataset.objects.select_related("owner", "stats_base_model"), request.user,
                               pk=dataset_id)
    return render(request, "datasets/detail.html", detail_context(request, dataset))


@require_POST
def dataset_delete(request: HttpRequest, dataset_id) -> HttpResponse:
    dataset = get_owned_or_404(Dataset.objects, request.user, pk=dataset_id)
    try:
        delete_dataset(dataset)
    except DatasetInUseError as exc:
        messages.error(request, str(exc.args[0]))
        return redirect("datasets:detail", dataset_id=dataset.id)
    messages.success(request, f"Data set {dataset.name} deleted.")
    return redirect("datasets:list")

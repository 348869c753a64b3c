"""Adapter pages: list, detail, upload, download, delete. Thin: parse, authorize, call an action."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import ProtectedError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.basemodels.models import BaseModel
from webapp.lib.body_limits import accepts_upload
from webapp.lib.downloads import ranged_file_response
from webapp.lib.owned import get_owned_or_404

from .actions import delete_adapter, upload_adapter
from .archive import build_archive
from .models import Adapter
from .validation import AdapterDiskFull, AdapterRejected


def adapter_list(request: HttpRequest) -> HttpResponse:
    adapters = Adapter.objects.visible_to(request.user).select_related("base_model", "job")
    return render(request, "adapters/list.html", {"adapters": adapters})


def adapter_detail(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = get_owned_or_404(Adapter.objects.select_related("base_model", "job__dataset")
                               .prefetch_related("merges__gguf_exports"), request.user, pk=adapter_id)
    return render(request, "adapters/detail.html", {"adapter": adapter, "config": adapter.config})


def adapter_download(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = get_owned_or_404(Adapter.objects.select_related("base_model"), request.user, pk=adapter_id)
    try:
        archive = build_archive(adapter)
    except AdapterDiskFull as exc:
        return HttpResponse(str(exc), status=exc.status, content_type="text/plain; charset=utf-8")
    return ranged_file_response(request, archive, f"{adapter.name}-adapter.zip", etag=adapter.sha256,
                                content_type="application/zip")


@accepts_upload
@require_http_methods(["GET", "POST"])
def adapter_upload(request: HttpRequest) -> HttpResponse:
    base_models = BaseModel.objects.visible_to(request.user)
    context = {"base_models": base_models, "error": None}
    if request.method == "POST":
        base_model = get_owned_or_404(BaseModel.objects, request.user, pk=request.POST.get("base_model"))
        try:
            files = {f.name: f for f in request.FILES.getlist("files")}
            adapter = upload_adapter(request.user, base_model, request.POST.get("name", ""), files)
        except AdapterRejected as exc:
            context["error"] = str(exc)
            return render(request, "adapters/upload.html", context, status=exc.status)
        messages.success(request, f"Adapter {adapter.name} uploaded.")
        return redirect("adapters:detail", adapter_id=adapter.id)
    return render(request, "adapters/upload.html", context)


@require_POST
def adapter_delete(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = get_owned_or_404(Adapter.objects, request.user, pk=adapter_id)
    try:
        delete_adapter(adapter)
    except ProtectedError:
        messages.error(request, "This adapter is in use and cannot be deleted.")
        return redirect("adapters:detail", adapter_id=adapter.id)
    messages.success(request, f"Adapter {adapter.name} deleted.")
    return redirect("adapters:list")

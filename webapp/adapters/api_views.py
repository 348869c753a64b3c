"""Native adapter API: list, retrieve, download (the same archive as the page), delete."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods

from webapp.api.errors import api_endpoint
from webapp.lib.downloads import ranged_file_response
from webapp.lib.owned import get_owned_or_404

from .actions import delete_adapter
from .archive import build_archive
from .models import Adapter
from .serializers import adapter_json


@require_GET
def api_adapter_list(request: HttpRequest) -> JsonResponse:
    adapters = Adapter.objects.visible_to(request.user).select_related("base_model")[:1000]
    return JsonResponse({"object": "list", "data": [adapter_json(a) for a in adapters]})


@require_http_methods(["GET", "DELETE"])
def api_adapter_detail(request: HttpRequest, adapter_id) -> JsonResponse:
    adapter = get_owned_or_404(Adapter.objects.select_related("base_model"), request.user, pk=adapter_id)
    if request.method == "DELETE":
        delete_adapter(adapter)
        return JsonResponse({"id": str(adapter_id), "object": "adapter", "deleted": True})
    return JsonResponse(adapter_json(adapter))


@api_endpoint("GET")
def api_adapter_download(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = get_owned_or_404(Adapter.objects.select_related("base_model"), request.user, pk=adapter_id)
    return ranged_file_response(request, build_archive(adapter), f"{adapter.name}-adapter.zip", etag=adapter.sha256,
                                content_type="application/zip")

"""The adapter analysis page and API (ΔW spectra, effective ranks) and the rank-reduction tool.

Thin: parse, authorize (other users' adapters are 404), call ``webapp.adapters.analysis``.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from webapp.api.errors import ApiError, api_endpoint, parse_json_body
from webapp.lib.owned import get_owned_or_404

from .analysis import adapter_analysis, reduce_adapter_rank
from .models import Adapter
from .serializers import adapter_json
from .validation import AdapterDiskFull, AdapterRejected


def _adapter(request: HttpRequest, adapter_id) -> Adapter:
    return get_owned_or_404(Adapter.objects.select_related("base_model"), request.user, pk=adapter_id)


def _page(request: HttpRequest, adapter: Adapter, error: str | None = None, status: int = 200,
          rank_value: Any = None) -> HttpResponse:
    try:
        analysis = adapter_analysis(adapter)
    except AdapterRejected as exc:
        analysis, error = None, str(exc)
    summary = analysis["summary"] if analysis else {}
    suggested = summary.get("suggested_rank") or 1
    context = {
        "adapter": adapter, "analysis": analysis, "summary": summary, "error": error,
        "layers": analysis["layers"] if analysis else [],
        "rank_value": rank_value or max(1, min(suggested, adapter.rank - 1)),
        "max_new_rank": adapter.rank - 1,
    }
    return render(request, "adapters/analysis.html", context, status=status)


@require_GET
def adapter_analysis_page(request: HttpRequest, adapter_id) -> HttpResponse:
    return _page(request, _adapter(request, adapter_id))


@require_POST
def adapter_reduce(request: HttpRequest, adapter_id) -> HttpResponse:
    adapter = _adapter(request, adapter_id)
    try:
        reduced = reduce_adapter_rank(adapter, request.POST.get("rank", ""))
    except AdapterRejected as exc:
        return _page(request, adapter, error=str(exc), status=exc.status, rank_value=request.POST.get("rank"))
    kept = reduced.config["reduced_from"]["energy_kept"]
    messages.success(request, f"Wrote {reduced.name} (rank {reduced.rank}): it keeps {kept:.2%} of ΔW's energy.")
    return redirect("adapters:detail", adapter_id=reduced.id)


@api_endpoint("GET")
def api_adapter_analysis(request: HttpRequest, adapter_id) -> JsonResponse:
    adapter = _adapter(request, adapter_id)
    try:
        analysis = adapter_analysis(adapter)
    except AdapterRejected as exc:
        raise ApiError(str(exc), status=409, code="adapter_unreadable") from exc
    return JsonResponse({"object": "adapter.analysis", "adapter_id": str(adapter.id), **analysis})


@api_endpoint("POST")
def api_adapter_reduce(request: HttpRequest, adapter_id) -> JsonResponse:
    adapter = _adapter(request, adapter_id)
    body = parse_json_body(request)
    if "rank" not in body:
        raise ApiError("Send the new rank as {\"rank\": k}.", param="rank", code="missing_rank")
    try:
        reduced = reduce_adapter_rank(adapter, body["rank"])
    except AdapterDiskFull:
        raise  # a 507, not the client's rank (see webapp.api.errors)
    except AdapterRejected as exc:
        raise ApiError(str(exc), param="rank", code="invalid_rank") from exc
    reduced = Adapter.objects.select_related("base_model").get(pk=reduced.pk)
    return JsonResponse({**adapter_json(reduced), "reduction": reduced.config["reduced_from"]}, status=201)

"""``/v1/models``: the base models a user can fine-tune and the adapters they have trained or uploaded."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from webapp.adapters.actions import delete_adapter
from webapp.adapters.models import Adapter
from webapp.basemodels.models import BaseModel

from ..errors import ApiError, api_endpoint
from ..ids import parse_fine_tuned_model_id
from ..serializers.models import adapter_model_id, adapter_model_json, base_model_json, model_deleted_json


def _model_not_found(model_id: str) -> ApiError:
    return ApiError(f"The model '{model_id}' does not exist or you do not have access to it.", status=404,
                    code="model_not_found", param="model")


def owned_adapter(request: HttpRequest, model_id: str) -> Adapter:
    adapter_uuid = parse_fine_tuned_model_id(model_id)
    adapter = (Adapter.objects.visible_to(request.user).select_related("base_model", "owner")
               .filter(pk=adapter_uuid).first()) if adapter_uuid else None
    if adapter is None or adapter_model_id(adapter) != model_id:
        raise _model_not_found(model_id)
    return adapter


@api_endpoint("GET")
def models(request: HttpRequest) -> JsonResponse:
    bases = BaseModel.objects.visible_to(request.user).select_related("owner").order_by("name")
    adapters = Adapter.objects.visible_to(request.user).select_related("base_model", "owner").order_by("-created_at")
    data = [base_model_json(b) for b in bases] + [adapter_model_json(a) for a in adapters]
    return JsonResponse({"object": "list", "data": data})


@api_endpoint("GET", "DELETE")
def model_detail(request: HttpRequest, model_id: str) -> JsonResponse:
    if request.method == "DELETE":
        adapter = owned_adapter(request, model_id)
        delete_adapter(adapter)
        return JsonResponse(model_deleted_json(model_id))
    base = BaseModel.objects.select_related("owner").named(request.user, model_id)
    if base is not None:
        return JsonResponse(base_model_json(base))
    return JsonResponse(adapter_model_json(owned_adapter(request, model_id)))

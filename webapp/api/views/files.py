"""``/v1/files``: upload (multipart, streamed to disk), list, retrieve, delete, content."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from webapp.datasets.actions import create_dataset_from_upload, delete_dataset
from webapp.datasets.models import Dataset
from webapp.lib.body_limits import accepts_upload
from webapp.lib.downloads import ranged_file_response

from ..errors import ApiError, api_endpoint, not_found
from ..ids import FILE_PREFIX, parse_uuid
from ..pagination import after_anchor, list_object, ordered, parse_limit, parse_order, take_page
from ..serializers.files import file_deleted_json, file_json

PURPOSES = ("fine-tune",)
MAX_LIST = 10000


def owned_file(request: HttpRequest, identifier: str, param: str | None = None) -> Dataset:
    """The caller's file (staff: anyone's) or a 404 that looks the same for another user's id."""
    dataset_uuid = parse_uuid(identifier, FILE_PREFIX)
    dataset = Dataset.objects.visible_to(request.user).filter(pk=dataset_uuid).first() if dataset_uuid else None
    if dataset is None:
        raise not_found("File", identifier, param=param)
    return dataset


@accepts_upload
@api_endpoint("GET", "POST")
def files(request: HttpRequest) -> JsonResponse:
    if request.method == "POST":
        return _upload(request)
    datasets = Dataset.objects.visible_to(request.user)
    purpose = request.GET.get("purpose")
    if purpose:
        datasets = datasets.filter(purpose=purpose)
    descending = parse_order(request) == "desc"
    limit = parse_limit(request, default=MAX_LIST, maximum=MAX_LIST)
    after = request.GET.get("after")
    if after:
        datasets = after_anchor(datasets, owned_file(request, after, param="after"), descending=descending)
    items, has_more = take_page(ordered(datasets, descending=descending), limit)
    return JsonResponse(list_object(items, has_more, file_json))


def _upload(request: HttpRequest) -> JsonResponse:
    purpose = request.POST.get("purpose")
    if purpose not in PURPOSES:
        raise ApiError(f"purpose must be 'fine-tune' (got {purpose!r}).", param="purpose")
    uploaded = request.FILES.get("file")
    if uploaded is None:
        raise ApiError("Send the data as a multipart form field named 'file'.", param="file")
    # A large upload Django already spooled to a temporary file is moved into place, not copied again.
    dataset = create_dataset_from_upload(request.user, uploaded, purpose=purpose)
    return JsonResponse(file_json(dataset))


@api_endpoint("GET", "DELETE")
def file_detail(request: HttpRequest, file_id: str) -> JsonResponse:
    dataset = owned_file(request, file_id)
    if request.method == "DELETE":
        dataset_uuid = dataset.id  # delete() clears the instance's pk
        delete_dataset(dataset)
        return JsonResponse(file_deleted_json(dataset_uuid))
    return JsonResponse(file_json(dataset))


@api_endpoint("GET")
def file_content(request: HttpRequest, file_id: str) -> HttpResponse:
    dataset = owned_file(request, file_id)
    return ranged_file_response(request, dataset.path, dataset.name, etag=dataset.sha256)

"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from webapp.jobs.actions import JobRejected, cancel_job, create_job
from webapp.jobs.models import Job

from ..errors import ApiError, api_endpoint, not_found, parse_json_body
from ..ids import JOB_PREFIX, parse_checkpoint_id, parse_uuid
from ..job_events import events_page
from ..job_pages import jobs_page_response
from ..job_request import api_param, parse_job_request
from ..pagination import after_anchor, list_object, ordered, parse_limit, take_page
from ..serializers.fine_tuning import checkpoint_json, job_json


def _jobs(request: HttpRequest):
    return Job.objects.visible_to(request.user).select_related("base_model", "adapter__base_model")


def owned_job(request: HttpRequest, identifier: str, param: str | None = None) -> Job:
    job_uuid = parse_uuid(identifier, JOB_PREFIX)
    job = _jobs(request).filter(pk=job_uuid).first() if job_uuid else None
    if job is None:
        raise not_found("fine-tuning job", identifier, param=param)
    return job


@api_endpoint("GET", "POST")
def jobs(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    after = request.GET.get("after")
    anchor = owned_job(request, after, param="after") if after else None
    limit = parse_limit(request, default=20, maximum=100)

    def build() -> dict:
        queryset = _jobs(request) if anchor is None else after_anchor(_jobs(request), anchor)
        return list_object(*take_page(ordered(queryset), limit), job_json)

    return jobs_page_response(request.user, anchor, limit, build)


def _create(request: HttpRequest) -> JsonResponse:
    job_request = parse_job_request(parse_json_body(request), request.user)
    try:
        job = create_job(request.user, job_request.dataset, job_request.base_model, job_request.settings,
                         suffix=job_request.suffix, validation_dataset=job_request.validation_dataset)
    except JobRejected as exc:
        raise ApiError(str(exc), param=api_param(exc.param), code="invalid_job", problems=list(exc.problems)) from exc
    return JsonResponse(job_json(_jobs(request).get(pk=job.pk)))


@api_endpoint("GET")
def job_detail(request: HttpRequest, job_id: str) -> JsonResponse:
    return JsonResponse(job_json(owned_job(request, job_id)))


@api_endpoint("POST")
def job_cancel(request: HttpRequest, job_id: str) -> JsonResponse:
    cancel_job(owned_job(request, job_id))  # JobRejected (already succeeded or failed) answers 400
    return JsonResponse(job_json(owned_job(request, job_id)))


@api_endpoint("GET")
def job_events(request: HttpRequest, job_id: str) -> JsonResponse:
    job = owned_job(request, job_id)
    events, has_more = events_page(job, request.GET.get("after"), parse_limit(request, default=20, maximum=1000))
    return JsonResponse(list_object(events, has_more, lambda event: event))


@api_endpoint("GET")
def job_checkpoints(request: HttpRequest, job_id: str) -> JsonResponse:
    job = owned_job(request, job_id)
    checkpoints = job.checkpoints.order_by("-step")
    after = request.GET.get("after")
    if after:
        anchor_pk = parse_checkpoint_id(after)
        anchor = checkpoints.filter(pk=anchor_pk).first() if anchor_pk is not None else None
        if anchor is None:
            raise ApiError(f"after must be the id of one of this job's checkpoints (got {after!r}).", param="after")
        checkpoints = checkpoints.filter(step__lt=anchor.step)
    items, has_more = take_page(checkpoints, parse_limit(request, default=10, maximum=100))
    return JsonResponse(list_object(items, has_more, lambda checkpoint: checkpoint_json(checkpoint, job)))

"""Every /v1 (OpenAI-compatible) and /api (native) route. Included at "" by webapp/urls.py.

No trailing slashes under /v1: the openai client calls ``{base_url}/files``, ``.../fine_tuning/jobs`` etc.
"""

from django.urls import include, path

from .views import datasets, docs, files, fine_tuning, models

app_name = "api"
urlpatterns = [
    path("v1/files", files.files, name="files"),
    path("v1/files/<str:file_id>", files.file_detail, name="file-detail"),
    path("v1/files/<str:file_id>/content", files.file_content, name="file-content"),
    path("v1/fine_tuning/jobs", fine_tuning.jobs, name="jobs"),
    path("v1/fine_tuning/jobs/<str:job_id>", fine_tuning.job_detail, name="job-detail"),
    path("v1/fine_tuning/jobs/<str:job_id>/cancel", fine_tuning.job_cancel, name="job-cancel"),
    path("v1/fine_tuning/jobs/<str:job_id>/events", fine_tuning.job_events, name="job-events"),
    path("v1/fine_tuning/jobs/<str:job_id>/checkpoints", fine_tuning.job_checkpoints, name="job-checkpoints"),
    path("v1/models", models.models, name="models"),
    path("v1/models/<path:model_id>", models.model_detail, name="model-detail"),  # base names may hold '/'
    path("api/datasets/<str:dataset_id>/preview", datasets.dataset_preview_view, name="dataset-preview"),
    path("api/datasets/<str:dataset_id>/stats", datasets.dataset_stats_view, name="dataset-stats"),
    path("api/openapi.json", docs.openapi_json, name="openapi"),
    path("api/docs", docs.docs_page, name="docs"),
    path("api/jobs/", include("webapp.jobs.api_urls")),
    path("api/adapters/", include("webapp.adapters.api_urls")),
    path("api/playground/", include("webapp.playground.api_urls")),
    path("api/merges/", include("webapp.adapters.merge_api_urls")),
    path("api/", include("webapp.compare.api_urls")),  # /api/compare, /api/compare.csv, /api/sweeps[/<id>]
]

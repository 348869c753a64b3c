"""Native job API routes, included at ``api/jobs/`` by webapp/api/urls.py."""

from django.urls import path

from . import api_views

urlpatterns = [
    path("estimate", api_views.memory_estimate, name="api-job-estimate"),
    path("<uuid:job_id>", api_views.job_state, name="api-job-state"),
    path("<uuid:job_id>/metrics", api_views.job_metrics, name="api-job-metrics"),
    path("<uuid:job_id>/metrics.csv", api_views.job_metrics_csv, name="api-job-metrics-csv"),
    path("<uuid:job_id>/metrics.jsonl", api_views.job_metrics_jsonl, name="api-job-metrics-jsonl"),
    path("<uuid:job_id>/log", api_views.job_log, name="api-job-log"),
    path("<uuid:job_id>/checkpoints/<int:step>/adapter", api_views.job_checkpoint_adapter,
         name="api-job-checkpoint-adapter"),
]

"""/api/merges/... (included by webapp/api/urls.py); the per-adapter merge routes are in api_urls.py."""

from django.urls import path

from . import gguf_views, merge_views

urlpatterns = [
    path("<uuid:merge_id>", merge_views.api_merge_detail, name="api-merge-detail"),
    path("<uuid:merge_id>/download", merge_views.api_merge_download, name="api-merge-download"),
    path("<uuid:merge_id>/gguf", gguf_views.api_gguf_export, name="api-merge-gguf"),
    path("<uuid:merge_id>/gguf/download", gguf_views.api_gguf_download, name="api-merge-gguf-download"),
]

"""/api/merges/... (included by webapp/api/urls.py); the per-adapter merge routes are in api_urls.py."""

from django.urls import path

from . import merge_views

urlpatterns = [
    path("<uuid:merge_id>", merge_views.api_merge_detail, name="api-merge-detail"),
    path("<uuid:merge_id>/download", merge_views.api_merge_download, name="api-merge-download"),
]

from django.urls import path

from . import analysis_views, api_views, export_views, merge_views

urlpatterns = [
    path("", api_views.api_adapter_list, name="api-adapter-list"),
    path("<uuid:adapter_id>", api_views.api_adapter_detail, name="api-adapter-detail"),
    path("<uuid:adapter_id>/download", api_views.api_adapter_download, name="api-adapter-download"),
    path("<uuid:adapter_id>/analysis", analysis_views.api_adapter_analysis, name="api-adapter-analysis"),
    path("<uuid:adapter_id>/reduce", analysis_views.api_adapter_reduce, name="api-adapter-reduce"),
    path("<uuid:adapter_id>/gguf", export_views.api_adapter_gguf, name="api-adapter-gguf"),
    path("<uuid:adapter_id>/merge", merge_views.api_adapter_merge, name="api-adapter-merge"),
    path("<uuid:adapter_id>/merges", merge_views.api_adapter_merges, name="api-adapter-merges"),
]

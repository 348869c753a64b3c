from django.urls import path

from . import analysis_views, export_views, gguf_views, merge_views, views

app_name = "adapters"
urlpatterns = [
    path("", views.adapter_list, name="list"),
    path("upload/", views.adapter_upload, name="upload"),
    path("<uuid:adapter_id>/", views.adapter_detail, name="detail"),
    path("<uuid:adapter_id>/download", views.adapter_download, name="download"),
    path("<uuid:adapter_id>/delete", views.adapter_delete, name="delete"),
    path("<uuid:adapter_id>/analysis", analysis_views.adapter_analysis_page, name="analysis"),
    path("<uuid:adapter_id>/reduce", analysis_views.adapter_reduce, name="reduce"),
    path("<uuid:adapter_id>/gguf", export_views.adapter_gguf_download, name="gguf"),
    path("<uuid:adapter_id>/merge", merge_views.merge_request_page, name="merge"),
    path("<uuid:adapter_id>/merges/<uuid:merge_id>/download", merge_views.merge_download_page, name="merge-download"),
    path("<uuid:adapter_id>/merges/<uuid:merge_id>/gguf", gguf_views.gguf_export_request_page, name="merge-gguf"),
    path("<uuid:adapter_id>/merges/<uuid:merge_id>/gguf/download", gguf_views.gguf_download_page,
         name="merge-gguf-download"),
]

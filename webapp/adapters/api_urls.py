from django.urls import path

from . import api_views

urlpatterns = [
    path("", api_views.api_adapter_list, name="api-adapter-list"),
    path("<uuid:adapter_id>", api_views.api_adapter_detail, name="api-adapter-detail"),
    path("<uuid:adapter_id>/download", api_views.api_adapter_download, name="api-adapter-download"),
]

from django.urls import path

from . import views

app_name = "adapters"
urlpatterns = [
    path("", views.adapter_list, name="list"),
    path("upload/", views.adapter_upload, name="upload"),
    path("<uuid:adapter_id>/", views.adapter_detail, name="detail"),
    path("<uuid:adapter_id>/download", views.adapter_download, name="download"),
    path("<uuid:adapter_id>/delete", views.adapter_delete, name="delete"),
]

from django.urls import path

from . import views

app_name = "datasets"
urlpatterns = [
    path("", views.dataset_list, name="list"),
    path("upload/", views.upload_form, name="upload"),
    path("uploads/", views.upload_start, name="upload-start"),
    path("uploads/<str:upload_id>/chunk", views.upload_chunk, name="upload-chunk"),
    path("uploads/<str:upload_id>/finish", views.upload_finish, name="upload-finish"),
    path("<uuid:dataset_id>/", views.dataset_detail, name="detail"),
    path("<uuid:dataset_id>/delete", views.dataset_delete, name="delete"),
]

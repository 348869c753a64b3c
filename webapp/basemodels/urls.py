from django.urls import path

from . import views

app_name = "basemodels"
urlpatterns = [
    path("", views.model_list, name="list"),
    path("<uuid:model_id>/", views.model_detail, name="detail"),
    path("<uuid:model_id>/delete", views.model_delete, name="delete"),
]

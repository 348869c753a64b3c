from django.urls import path

from . import views

app_name = "compare"
urlpatterns = [
    path("", views.compare_page, name="page"),
    path("compare.csv", views.compare_csv, name="csv"),
]

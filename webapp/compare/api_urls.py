"""Native compare and sweep API routes, included at ``api/`` by webapp/api/urls.py (no trailing slashes)."""

from django.urls import path

from . import api_views

urlpatterns = [
    path("compare", api_views.compare, name="compare"),
    path("compare.csv", api_views.compare_csv, name="compare-csv"),
    path("sweeps", api_views.sweeps, name="sweeps"),
    path("sweeps/<str:sweep_id>", api_views.sweep_detail, name="sweep-detail"),
]

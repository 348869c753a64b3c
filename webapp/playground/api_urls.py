from django.urls import path

from . import api_views

urlpatterns = [
    path("", api_views.playground_sessions, name="api-playground-sessions"),
    path("<str:session_id>", api_views.playground_session_detail, name="api-playground-session"),
]

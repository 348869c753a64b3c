from django.urls import path

from . import views

app_name = "playground"
urlpatterns = [
    path("", views.playground_page, name="page"),
    path("<uuid:session_id>/", views.session_page, name="session"),
]

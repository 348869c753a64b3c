"""Websocket routes. Each app adds its own patterns here."""

from django.urls import path

from webapp.jobs.consumers import JobConsumer, JobListConsumer
from webapp.playground.consumers import PlaygroundConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/", JobListConsumer.as_asgi()),
    path("ws/jobs/<uuid:job_id>/", JobConsumer.as_asgi()),
    path("ws/playground/<uuid:session_id>/", PlaygroundConsumer.as_asgi()),
]

"""Websocket routes. Each app adds its own patterns here."""

from django.urls import path

from webapp.jobs.consumers import JobConsumer, JobListConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/", JobListConsumer.as_asgi()),
    path("ws/jobs/<uuid:job_id>/", JobConsumer.as_asgi()),
]

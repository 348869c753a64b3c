"""The Celery app. Configured from Django settings (CELERY_* names); tasks live in worker.tasks."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")

app = Celery("lora_studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.imports = ("worker.tasks",)

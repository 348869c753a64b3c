"""Uploaded data sets. Files live under DATA_DIR with server-made names; the client's name is only shown."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webapp.lib.owned import OwnedQuerySet


class Dataset(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=200, help_text="Shown name (the uploaded file name, cleaned).")
    storage_path = models.CharField(max_length=500, help_text="Relative to DATA_DIR; a server-made name.")
    purpose = models.CharField(max_length=30, default="fine-tune")
    format = models.CharField(max_length=30, blank=True)
    rows = models.IntegerField(default=0)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    validation = models.JSONField(default=dict, blank=True, help_text="The engine's validation report.")
    stats_base_model = models.ForeignKey(
        "basemodels.BaseModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    token_stats = models.JSONField(default=dict, blank=True, help_text="Token lengths for stats_base_model.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self):
        return settings.DATA_DIR / self.storage_path

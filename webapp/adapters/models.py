"""Adapters (trained here or uploaded) and merges of adapters into their base model."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webapp.lib.owned import OwnedQuerySet


class Adapter(models.Model):
    class Source(models.TextChoices):
        TRAINED = "trained", "Trained here"
        UPLOADED = "uploaded", "Uploaded"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="adapters")
    job = models.OneToOneField("jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="adapter")
    name = models.CharField(max_length=200)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.TRAINED)
    storage_path = models.CharField(max_length=500, help_text="Adapter directory (PEFT layout), relative to DATA_DIR.")
    base_model = models.ForeignKey("basemodels.BaseModel", on_delete=models.PROTECT, related_name="adapters")
    base_revision = models.CharField(max_length=100, blank=True)
    rank = models.IntegerField()
    alpha = models.FloatField()
    targets = models.JSONField(default=list)
    use_rslora = models.BooleanField(default=False)
    use_dora = models.BooleanField(default=False)
    trainable_params = models.BigIntegerField(null=True, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True, help_text="Of adapter_model.safetensors.")
    final_train_loss = models.FloatField(null=True, blank=True)
    final_eval_loss = models.FloatField(null=True, blank=True)
    dataset_sha256 = models.CharField(max_length=64, blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="The full training configuration (lineage).")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def path(self):
        return settings.DATA_DIR / self.storage_path


class LeasedWorkRow(models.Model):
    """The lifecycle fields of work a worker runs under a lease (see webapp.lib.leased_work): queued → running →
    succeeded | failed, with attempts, the lease, and the deliveries that did not reach the claim
    (webapp.lib.delivery_cap)."""

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    progress = models.FloatField(default=0.0)
    error = models.TextField(blank=True)
    error_message = models.TextField(blank=True)
    attempt = models.IntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    unclaimed_deliveries = models.IntegerField(
        default=0, help_text="Deliveries since the last claim that have not (yet) claimed the row: a delivery is "
                             "counted before it can fail, and a claim resets the count.")

    objects = OwnedQuerySet.as_manager()

    class Meta:
        abstract = True


class Merge(LeasedWorkRow):
    """An adapter merged into a 16-bit copy of its base; tracked like a job, idempotent per adapter+dtype."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="merges")
    adapter = models.ForeignKey(Adapter, on_delete=models.CASCADE, related_name="merges")
    dtype = models.CharField(max_length=10, default="auto")
    storage_path = models.CharField(max_length=500, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    max_abs_diff = models.FloatField(null=True, blank=True, help_text="Merged vs base+adapter logits.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["adapter", "dtype"], name="merge_unique_adapter_dtype")]


class GGUFExport(LeasedWorkRow):
    """A succeeded merge written as a llama.cpp GGUF model file by a worker; tracked like a merge (queued →
    running → succeeded | failed, a lease, attempts), one per merge and GGUF dtype."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="gguf_exports")
    merge = models.ForeignKey(Merge, on_delete=models.CASCADE, related_name="gguf_exports")
    dtype = models.CharField(max_length=10, default="f16", help_text="The GGUF's matrix type (f16 or f32).")
    storage_path = models.CharField(max_length=500, blank=True, help_text="The complete .gguf, relative to DATA_DIR.")
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True, help_text="Of the complete .gguf file.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["merge", "dtype"], name="gguf_export_unique_merge_dtype")]

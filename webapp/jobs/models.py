"""Training jobs and what they record. PostgreSQL, not the broker, is the truth about a job."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from webapp.lib.owned import OwnedQuerySet


class Sweep(models.Model):
    """The same configuration launched over a list of ranks."""

    class AlphaRule(models.TextChoices):
        EQUAL = "alpha=r", "α = r"
        DOUBLE = "alpha=2r", "α = 2r"
        FIXED = "fixed", "fixed α"
        RSLORA = "rslora", "rsLoRA (α/√r)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sweeps")
    name = models.CharField(max_length=200, blank=True)
    ranks = models.JSONField(default=list)
    alpha_rule = models.CharField(max_length=20, choices=AlphaRule.choices, default=AlphaRule.DOUBLE)
    fixed_alpha = models.FloatField(null=True, blank=True)
    tolerance = models.FloatField(default=0.01, help_text="Relative eval-loss tolerance for the recommendation.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]


class Job(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    suffix = models.CharField(max_length=64, blank=True, help_text="A short name for the job and its adapter.")
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.PROTECT, related_name="jobs")
    validation_dataset = models.ForeignKey(
        "datasets.Dataset", null=True, blank=True, on_delete=models.PROTECT, related_name="validation_jobs"
    )
    base_model = models.ForeignKey("basemodels.BaseModel", on_delete=models.PROTECT, related_name="jobs")
    sweep = models.ForeignKey(Sweep, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    config = models.JSONField(help_text="The full lora_engine RunConfig (as a dict).")
    # Denormalised from config for lists, filters and comparisons.
    rank = models.IntegerField()
    alpha = models.FloatField()
    quantization = models.CharField(max_length=10, default="none")

    state = models.CharField(max_length=20, choices=State.choices, default=State.QUEUED, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    current_step = models.IntegerField(default=0)
    total_steps = models.IntegerField(null=True, blank=True)
    progress = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    tokens_seen = models.BigIntegerField(default=0)
    error = models.TextField(blank=True, help_text="The technical error, for admins.")
    error_message = models.TextField(blank=True, help_text="The error shown to people.")
    memory_estimate = models.JSONField(default=dict, blank=True)
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    worker_host = models.CharField(max_length=200, blank=True)
    device = models.CharField(max_length=50, blank=True)
    trainable_params = models.BigIntegerField(null=True, blank=True)
    total_params = models.BigIntegerField(null=True, blank=True)

    # Claiming: the Celery message only wakes a worker; the lease on this row says who runs the job.
    attempt = models.IntegerField(default=0)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    unclaimed_deliveries = models.IntegerField(
        default=0, help_text="Deliveries since the last claim that have not (yet) claimed the job: a delivery is "
                             "counted before it can fail, and a claim resets the count.")
    last_seq = models.BigIntegerField(default=0, help_text="Sequence number of the newest metric point.")

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.suffix or self.id} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL

    @property
    def output_dir(self):
        return settings.DATA_DIR / "jobs" / str(self.id)


class MetricPoint(models.Model):
    """One step's record (train) or one evaluation (eval). A replayed step never duplicates."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="metrics")
    step = models.IntegerField()
    split = models.CharField(max_length=10, default="train")
    seq = models.BigIntegerField(help_text="Increasing per job; a gap tells a watcher it missed a point.")
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["job", "step", "split"], name="metric_unique_step")]
        indexes = [models.Index(fields=["job", "seq"])]


class Checkpoint(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.IntegerField()
    metrics = models.JSONField(default=dict)
    path = models.CharField(max_length=500, help_text="Relative to DATA_DIR.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["step"]
        constraints = [models.UniqueConstraint(fields=["job", "step"], name="checkpoint_unique_step")]


class JobEvent(models.Model):
    """Human-readable events (OpenAI's fine-tuning job events)."""

    STEP_LINE_PREFIX = "Step "
    """How the log line a training or eval step writes begins (webapp.jobs.leases): the job page's log shows it,
    while /v1 events list the step itself once, as a metrics event (webapp.api.job_events)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    level = models.CharField(max_length=10, default="info")
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

"""Base models people fine-tune: a hub id (+ revision) or a directory the workers can read."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Case, Q, When

from webapp.lib.owned import OwnedQuerySet


class BaseModelQuerySet(OwnedQuerySet):
    def visible_to(self, user) -> BaseModelQuerySet:
        """Own models plus the ones an admin made public (such as the demo model)."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(Q(owner=user) | Q(public=True))

    def named(self, user, name: str) -> BaseModel | None:
        """The model ``name`` means to ``user``: their own, else a public one, else (staff, who see every model)
        the oldest of that name. Names are unique per owner only, so that registering a name tells nobody
        whether another user's private model has it; a public model can share a name with someone's own."""
        mine_first = Case(When(owner_id=user.pk, then=0), When(public=True, then=1), default=2)
        return self.visible_to(user).filter(name=name).order_by(mine_first, "created_at").first()


class BaseModel(models.Model):
    class Source(models.TextChoices):
        HUB = "hub", "Hugging Face hub"
        LOCAL = "local", "Directory on the workers"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="base_models")
    name = models.CharField(max_length=200, help_text="The id scripts use, e.g. 'tiny-llama' (unique per owner).")
    source = models.CharField(max_length=10, choices=Source.choices)
    hub_id = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=100, blank=True)
    local_path = models.CharField(max_length=1000, blank=True)
    architecture = models.CharField(max_length=100, blank=True)
    model_type = models.CharField(max_length=50, blank=True)
    parameter_count = models.BigIntegerField(null=True, blank=True)
    hidden_size = models.IntegerField(null=True, blank=True)
    num_layers = models.IntegerField(null=True, blank=True)
    dtype = models.CharField(max_length=20, blank=True)
    has_chat_template = models.BooleanField(default=False)
    config = models.JSONField(default=dict, blank=True, help_text="The model's config.json, for estimates.")
    trust_remote_code = models.BooleanField(
        default=False, help_text="Run the model repository's own Python code. Admins only; off by default."
    )
    public = models.BooleanField(default=False, help_text="Visible to every user (e.g. the demo model).")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BaseModelQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="basemodel_unique_name_per_owner")]

    def __str__(self) -> str:
        return self.name

    @property
    def location(self) -> str:
        """What lora_engine is given: the local directory or the hub id."""
        return self.local_path if self.source == self.Source.LOCAL else self.hub_id

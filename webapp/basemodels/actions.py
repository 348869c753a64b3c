"""Registering base models."""

from __future__ import annotations

from django.db import transaction

from .inspect import describe_model_dir
from .models import BaseModel


@transaction.atomic
def register_local_model(owner, name: str, local_path: str, public: bool = False) -> BaseModel:
    """Register a model directory the workers can read (inspected now; raises ModelDirError if unusable)."""
    details = describe_model_dir(local_path)
    return BaseModel.objects.create(
        owner=owner, name=name, source=BaseModel.Source.LOCAL, local_path=str(local_path), public=public, **details
    )

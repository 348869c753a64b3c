"""Saving or deleting a user or an API key forgets this process's cached key checks for them at once
(keys.py; other processes forget them within KEY_CACHE_SECONDS)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .keys import forget_keys
from .models import ApiKey


@receiver([post_save, post_delete], sender=settings.AUTH_USER_MODEL)
def forget_user_keys(sender: Any, instance: Any, **kwargs: Any) -> None:
    forget_keys(user_pk=instance.pk)


@receiver([post_save, post_delete], sender=ApiKey)
def forget_saved_key(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    forget_keys(key_pk=instance.pk)

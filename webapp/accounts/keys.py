"""Making and checking API keys. The raw key is shown once; only its SHA-256 is stored.

Keys are 256-bit random tokens, so a plain SHA-256 (not a slow password hash) is the right check: there is
nothing to brute-force, and every API request can afford it.
"""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from .models import ApiKey

KEY_PREFIX = "lsk-"


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def create_api_key(user: AbstractBaseUser, name: str = "") -> tuple[ApiKey, str]:
    """Make a key for ``user``. Returns the stored row and the raw key (show it once, then forget it)."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(user=user, name=name, prefix=raw_key[:12], key_hash=hash_key(raw_key))
    return api_key, raw_key


def user_for_key(raw_key: str | None):
    """The active user a raw key belongs to, or None (unknown, revoked, or inactive user)."""
    if not raw_key or not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        return None
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=hash_key(raw_key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or (now - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    return api_key.user


def revoke_api_key(api_key: ApiKey) -> None:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def bearer_token(authorization_header: str | None) -> str | None:
    """``"Bearer abc"`` -> ``"abc"``; anything else -> None."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None

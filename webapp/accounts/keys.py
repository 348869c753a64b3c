"""Making and checking API keys. The raw key is shown once; only its SHA-256 is stored.

Keys are 256-bit random tokens, so a plain SHA-256 (not a slow password hash) is the right check: there is
nothing to brute-force, and every API request can afford it.

Each web process remembers a key's user for ``KEY_CACHE_SECONDS`` (:func:`user_for_key`): under many
concurrent API clients the key lookup was one of a request's two database round-trips. Revoking a key or
saving a user (deactivation) forgets the entries at once in the process that did it (signals.py), and every
other process stops accepting the key within ``KEY_CACHE_SECONDS``, since its entry expires by then.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from .models import ApiKey

KEY_PREFIX = "lsk-"
KEY_CACHE_SECONDS = 5.0
"""How long a process trusts a key it has checked: the bound on a revocation reaching every process."""
KEY_CACHE_ENTRIES = 1024
MAX_ACTIVE_KEYS = 20
"""Keys a user may hold unrevoked at once from the API keys page (the admin's command has no cap)."""
NAME_MAX_CHARS = 100


class KeyRejected(ValueError):
    """A key a user asked for on the API keys page that is not made; the message says why."""


@dataclass(frozen=True)
class _CachedKey:
    key_pk: int
    user: Any
    expires_at: float  # on clock()


_key_cache: dict[str, _CachedKey] = {}
_key_cache_lock = threading.Lock()


def clock() -> float:
    """The key cache's clock (monotonic seconds); tests move it forward."""
    return time.monotonic()


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def create_api_key(user: AbstractBaseUser, name: str = "") -> tuple[ApiKey, str]:
    """Make a key for ``user``. Returns the stored row and the raw key (show it once, then forget it)."""
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(user=user, name=name, prefix=raw_key[:12], key_hash=hash_key(raw_key))
    return api_key, raw_key


def issue_key(user: AbstractBaseUser, name: str) -> tuple[ApiKey, str]:
    """A new key for ``user`` asked for on the API keys page (at most MAX_ACTIVE_KEYS unrevoked at once).

    Raises:
        KeyRejected: the name is too long, or the user holds MAX_ACTIVE_KEYS keys already.
    """
    name = name.strip()
    if len(name) > NAME_MAX_CHARS:
        raise KeyRejected(f"The name is {len(name)} characters long; at most {NAME_MAX_CHARS} are allowed.")
    if ApiKey.objects.filter(user=user, revoked_at__isnull=True).count() >= MAX_ACTIVE_KEYS:
        raise KeyRejected(f"You already have {MAX_ACTIVE_KEYS} active keys: revoke one you no longer use first.")
    return create_api_key(user, name=name)


def user_for_key(raw_key: str | None):
    """The active user a raw key belongs to, or None (unknown, revoked, or inactive user).

    A key found valid is remembered for ``KEY_CACHE_SECONDS`` in this process (each caller gets its own copy
    of the user); unknown and revoked keys are never remembered, so they cost a query every time.
    """
    if not raw_key or not raw_key.startswith(KEY_PREFIX) or len(raw_key) > 200:
        return None
    key_hash = hash_key(raw_key)
    now = clock()
    with _key_cache_lock:
        cached = _key_cache.get(key_hash)
    if cached is not None and cached.expires_at > now:
        return copy.copy(cached.user)
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(key_hash=key_hash, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None:
        forget_keys(key_hash=key_hash)
        return None
    used_at = timezone.now()
    if api_key.last_used_at is None or (used_at - api_key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=used_at)
    with _key_cache_lock:
        if len(_key_cache) >= KEY_CACHE_ENTRIES:
            _key_cache.clear()  # many distinct keys within seconds: start over rather than track ages
        _key_cache[key_hash] = _CachedKey(api_key.pk, api_key.user, now + KEY_CACHE_SECONDS)
    return copy.copy(api_key.user)


def forget_keys(key_hash: str | None = None, key_pk: int | None = None, user_pk: int | None = None) -> None:
    """Drop this process's cached entries for a key (by hash or pk) or for every key of a user."""
    with _key_cache_lock:
        for cached_hash, cached in list(_key_cache.items()):
            if cached_hash == key_hash or cached.key_pk == key_pk or cached.user.pk == user_pk:
                del _key_cache[cached_hash]


def revoke_api_key(api_key: ApiKey) -> None:
    ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    forget_keys(key_pk=api_key.pk)


def bearer_token(authorization_header: str | None) -> str | None:
    """``"Bearer abc"`` -> ``"abc"``; anything else -> None."""
    if not authorization_header:
        return None
    scheme, _, token = authorization_header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None

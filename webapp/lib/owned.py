"""Ownership: every record belongs to a user; staff see everything; everyone else gets 404."""

from __future__ import annotations

from django.db import models
from django.http import Http404


class OwnedQuerySet(models.QuerySet):
    def visible_to(self, user) -> OwnedQuerySet:
        """What ``user`` may see: their own rows (all rows for staff)."""
        if not user.is_authenticated:
            return self.none()
        if user.is_staff:
            return self
        return self.filter(owner=user)


def get_owned_or_404(queryset: models.QuerySet, user, **lookup):
    """One row ``user`` may see, or Http404 (another user's id answers exactly like a missing one)."""
    try:
        return queryset.visible_to(user).get(**lookup)
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise Http404("Not found") from None
    except Exception as exc:  # malformed UUIDs raise ValidationError
        from django.core.exceptions import ValidationError

        if isinstance(exc, ValidationError):
            raise Http404("Not found") from None
        raise

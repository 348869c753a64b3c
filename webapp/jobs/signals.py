"""Close a user's open websockets when they log out, change their password, are deactivated or deleted
(connected in apps.ready)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver

from . import events


@receiver(user_logged_out, dispatch_uid="jobs-close-sockets-on-logout")
def close_sockets_on_logout(sender, request, user, **kwargs) -> None:
    if user is None:
        return
    session = getattr(request, "session", None)
    session_key = getattr(session, "session_key", None)
    # Only this browser session's sockets: the user's other sessions (and API-key scripts) stay logged in.
    events.close_user_sockets(user.pk, session_key=session_key or None, reason="logged out")


def _close_sockets_of_inactive_user(sender, instance, **kwargs) -> None:
    if not instance.is_active:
        events.on_commit(events.close_user_sockets, instance.pk, None, "account deactivated")


def _note_password_change(sender, instance, update_fields=None, **kwargs) -> None:
    """Compare the stored hash before the save: a new password ends every open socket, as it ends sessions."""
    if instance.pk is None or (update_fields is not None and "password" not in update_fields):
        return
    stored = sender.objects.filter(pk=instance.pk).values_list("password", flat=True).first()
    instance._sockets_password_changed = stored is not None and stored != instance.password


def _close_sockets_after_password_change(sender, instance, **kwargs) -> None:
    if getattr(instance, "_sockets_password_changed", False):
        instance._sockets_password_changed = False
        events.on_commit(events.close_user_sockets, instance.pk, None, "password changed")


def _close_sockets_of_deleted_user(sender, instance, **kwargs) -> None:
    events.on_commit(events.close_user_sockets, instance.pk, None, "account deleted")


def connect_user_signals() -> None:
    user_model = get_user_model()
    post_save.connect(_close_sockets_of_inactive_user, sender=user_model, dispatch_uid="jobs-close-inactive")
    pre_save.connect(_note_password_change, sender=user_model, dispatch_uid="jobs-note-password-change")
    post_save.connect(_close_sockets_after_password_change, sender=user_model,
                      dispatch_uid="jobs-close-password-change")
    post_delete.connect(_close_sockets_of_deleted_user, sender=user_model, dispatch_uid="jobs-close-deleted")

"""Receivers that end a user's open WebSockets when their rights change, whatever made the change.

A socket authenticates once, at its handshake. Deactivation (the admin action, the user form's
Active box, the shell, a script), a new password, and a change of the user's groups or permissions
(or of a group's permissions) must not leave sockets open that were authorised under the old state:
each closes the user's sockets once committed (:func:`accounts.services.user_sockets_close`); a
socket that reconnects is authorised afresh. A new password also revokes the user's API keys
(``API_KEYS_REVOKE_ON_PASSWORD_CHANGE``).

Also: every new account emits ``user.created`` (:mod:`core.events`), whatever made it.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.hashers import is_password_usable
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db import transaction
from django.db.models.signals import m2m_changed, post_save, pre_save
from django.dispatch import receiver

from core.events import event_emit

from .models import User
from .services import api_keys_revoke_all, audit_record, user_sockets_close

logger = logging.getLogger(__name__)

# Saves that touch none of these fields (a login's last_login, a quota edit) change no right.
RIGHT_FIELDS = {"is_active", "password", "is_staff", "is_superuser"}


def _close_after_commit(user_ids, reason: str) -> None:
    for user_id in set(user_ids):
        transaction.on_commit(lambda user_id=user_id: user_sockets_close(user_id=user_id, reason=reason))


@receiver(pre_save, sender=User, dispatch_uid="accounts.user_rights_before")
def user_rights_before(sender, instance: User, update_fields=None, raw=False, **kwargs) -> None:
    """Note which rights this save takes away (compared with the stored row), for the post_save."""
    instance._rights_lost = []
    if raw or instance.pk is None or (update_fields is not None and not RIGHT_FIELDS & set(update_fields)):
        return
    stored = User.objects.filter(pk=instance.pk).values(*RIGHT_FIELDS).first()
    if stored is None:
        return
    if stored["is_active"] and not instance.is_active:
        instance._rights_lost.append("deactivated")
    # Django re-hashes a password on login when its hasher changes (a Django upgrade does that):
    # check_password() then saves it with _password unset. That is no new password.
    if stored["password"] != instance.password and (
        instance._password is not None or not is_password_usable(instance.password)
    ):
        instance._rights_lost.append("password changed")
    if (stored["is_staff"] and not instance.is_staff) or (stored["is_superuser"] and not instance.is_superuser):
        instance._rights_lost.append("staff rights removed")


@receiver(post_save, sender=User, dispatch_uid="accounts.user_rights_after")
def user_rights_after(sender, instance: User, created=False, **kwargs) -> None:
    lost = getattr(instance, "_rights_lost", [])
    if lost and not created:
        if "password changed" in lost:
            # Whoever changed it (the user, an operator, a script): the event, never the password.
            audit_record(action="user.password_change", target=instance)
        if "password changed" in lost and settings.API_KEYS_REVOKE_ON_PASSWORD_CHANGE:
            revoked = api_keys_revoke_all(user=instance, reason="password changed")
            logger.info("Password of user %s changed: %s API key(s) revoked", instance.pk, revoked)
        _close_after_commit([instance.pk], ", ".join(lost))
    instance._rights_lost = []


@receiver(post_save, sender=User, dispatch_uid="accounts.user_created_event")
def user_created_event(sender, instance: User, created=False, raw=False, **kwargs) -> None:
    """Announce a new account (README, "Webhooks"). A receiver, not a service: accounts are made by the
    sign-up form, the admin, ``createsuperuser``, ``make run``'s operator and scripts alike."""
    if created and not raw:
        event_emit(
            "user.created",
            {
                "user_id": instance.pk,
                "username": instance.get_username(),
                "email": instance.email,
                "is_active": instance.is_active,
                "is_staff": instance.is_staff,
                "date_joined": instance.date_joined.isoformat() if instance.date_joined else None,
            },
        )


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="accounts.user_groups_changed")
@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="accounts.user_permissions_changed")
def user_access_changed(sender, instance, action: str, reverse: bool, pk_set, **kwargs) -> None:
    """Close the sockets of every user whose groups or own permissions changed."""
    if reverse:  # group.user_set / permission.user_set: the users are in pk_set (or, cleared, all members)
        if action == "pre_clear":
            instance._cleared_user_ids = list(instance.user_set.values_list("pk", flat=True))
            return
        user_ids = getattr(instance, "_cleared_user_ids", []) if action == "post_clear" else pk_set
    else:
        user_ids = [instance.pk]
    if action in ("post_add", "post_remove", "post_clear") and user_ids:
        _close_after_commit(user_ids, "groups or permissions changed")


@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="accounts.group_permissions_changed")
def group_permissions_changed(sender, instance, action: str, reverse: bool, **kwargs) -> None:
    """Close the sockets of a group's members when the group's permissions change."""
    if action not in ("post_add", "post_remove", "post_clear") or reverse:
        return
    _close_after_commit(instance.user_set.values_list("pk", flat=True), "group permissions changed")


@receiver(user_logged_in, dispatch_uid="accounts.audit_login")
def audit_login(sender, request, user: User, **kwargs) -> None:
    """Record a login (``/login/``, ``/admin/login/``, sign-up): Django makes the change, here."""
    audit_record(action="auth.login", actor=user, target=user)


@receiver(user_login_failed, dispatch_uid="accounts.audit_login_failed")
def audit_login_failed(sender, credentials: dict, request=None, **kwargs) -> None:
    """Record a refused login (the login pages and the token endpoint): the name tried, never the password.

    (Django hands receivers the credentials with the password already replaced by stars.)
    """
    username = str(credentials.get("username") or "")[:150]
    audit_record(action="auth.login_failed", target_type=User._meta.label_lower, target_label=username)

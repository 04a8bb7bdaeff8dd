"""The one access rule of Parley: who may use a model, an MCP server, a shared resource.

A resource with a ``groups`` many-to-many field to ``auth.Group`` is open to every active user when
none is listed, and otherwise only to members of one of the listed groups (superusers: everything).
Every path that offers or uses such a resource (the UI model picker, the REST API, the WebSocket,
SSE, ``/v1``, chat turns' MCP tools) filters with :func:`visible_to`, so a change of a user's groups
(an operator's, or single sign-on's at login) changes what every path offers at their next request.
"""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db.models import Exists, OuterRef, QuerySet


def visible_to(queryset: QuerySet, *, user, field: str = "groups") -> QuerySet:
    """Return the rows of ``queryset`` that ``user`` may use, by the rows' ``field`` (an M2M to Group).

    Kept: rows with no group, and rows with one of ``user``'s groups. A superuser keeps every row;
    an anonymous, inactive or missing (None) user keeps none. No duplicates (``EXISTS`` subqueries, not
    a join), so the result can still be ``.get()``, counted or locked.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return queryset.none()
    if user.is_superuser:
        return queryset
    m2m = queryset.model._meta.get_field(field)
    through = m2m.remote_field.through
    source, target = m2m.m2m_field_name(), m2m.m2m_reverse_field_name()
    listed = through.objects.filter(**{source: OuterRef("pk")})
    theirs = listed.filter(**{f"{target}__in": Group.objects.filter(user=user).values("pk")})
    return queryset.filter(~Exists(listed) | Exists(theirs))


def can_use(obj, *, user, field: str = "groups") -> bool:
    """Return whether ``user`` may use ``obj`` by :func:`visible_to`'s rule (one query)."""
    return visible_to(type(obj)._default_manager.filter(pk=obj.pk), user=user, field=field).exists()


def groups_label(obj, field: str = "groups") -> str:
    """Return who may use ``obj``, for lists: its groups' names joined, or ``everyone``."""
    return ", ".join(group.name for group in getattr(obj, field).all()) or "everyone"

"""``AuditedAdmin``: every create, change and delete made in a ModelAdmin (and its inlines) is an audit event.

Mix it in before ``admin.ModelAdmin`` (or a subclass such as Django's ``UserAdmin``)::

    @admin.register(Budget)
    class BudgetAdmin(AuditedAdmin, admin.ModelAdmin): ...

Events are ``<name>.create`` / ``<name>.change`` / ``<name>.delete``, ``<name>`` being
``audit_name`` or the model's name (``modelconfig``), with the form's field diffs as
``{"field": [old, new]}``; a secret-looking field (key, secret, token, password) shows as
``"[masked]"`` (:func:`accounts.services.audit_clean`). A save that changes nothing records nothing.
An admin that deletes through a service (which records its own event) overrides ``delete_model``.
"""

from __future__ import annotations

from typing import Any

from django.db import models, transaction

from .services import MASKED, audit_clean, audit_is_secret_name, audit_record


def _value(value: Any) -> Any:
    if isinstance(value, models.Model):
        return str(value)
    if isinstance(value, (models.QuerySet, list, tuple, set)):
        return sorted(str(v) for v in value)
    return audit_clean(value)


def form_changes(form) -> dict[str, list]:
    """Return ``{"field": [old, new]}`` for each field ``form`` changed (``form.changed_data``).

    Old values come from the form's initial data, new ones from its cleaned data; related objects
    and querysets become their ``str()`` (sorted for many-to-many). Secret-looking fields are
    ``[masked, masked]``: the diff says that they changed, never to what.
    """
    changes: dict[str, list] = {}
    for name in form.changed_data:
        if audit_is_secret_name(name):
            changes[name] = [MASKED, MASKED]
            continue
        field = form.fields.get(name)
        old = form.initial.get(name, field.initial if field is not None else None)
        if field is not None and hasattr(field, "queryset") and old is not None and not isinstance(old, models.Model):
            # Initial data of a related field is its primary key(s): show the objects, as the new value does.
            keys = list(old) if isinstance(old, (list, tuple, set, models.QuerySet)) else [old]
            keys = [k.pk if isinstance(k, models.Model) else k for k in keys]
            found = list(field.queryset.model._default_manager.filter(pk__in=keys))
            old = found if isinstance(old, (list, tuple, set, models.QuerySet)) else (found[0] if found else old)
        changes[name] = [_value(old), _value(form.cleaned_data.get(name))]
    return changes


class AuditedAdmin:
    """ModelAdmin mixin recording each create, change and delete (its own and its inlines') as an audit event."""

    audit_name: str | None = None  # the action's prefix; default: the model's name

    def audit_action(self, obj: models.Model, verb: str) -> str:
        name = self.audit_name if obj.__class__ is self.model and self.audit_name else obj._meta.model_name
        return f"{name}.{verb}"

    def save_model(self, request, obj, form, change):
        # Many-to-many fields (a user's groups) are saved later, by save_related, but their diff is
        # the form's, known here; inlines are recorded by save_formset.
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            changes = form_changes(form)
            if changes or not change:
                audit_record(
                    action=self.audit_action(obj, "change" if change else "create"), target=obj, changes=changes
                )

    def save_formset(self, request, form, formset, change):
        # Noted before the save: a deleted row has no primary key afterwards.
        deleted = [
            (f.instance, f.instance._meta.label_lower, str(f.instance.pk), str(f.instance))
            for f in getattr(formset, "deleted_forms", [])
            if f.instance.pk is not None
        ]
        with transaction.atomic():
            super().save_formset(request, form, formset, change)
            forms_by_instance = {id(f.instance): f for f in formset.forms}
            for obj in getattr(formset, "new_objects", []):
                inline_form = forms_by_instance.get(id(obj))
                changes = form_changes(inline_form) if inline_form is not None else {}
                audit_record(action=self.audit_action(obj, "create"), target=obj, changes=changes)
            for obj, _fields in getattr(formset, "changed_objects", []):
                inline_form = forms_by_instance.get(id(obj))
                changes = form_changes(inline_form) if inline_form is not None else {}
                audit_record(action=self.audit_action(obj, "change"), target=obj, changes=changes)
            for obj, target_type, target_id, target_label in deleted:
                audit_record(
                    action=self.audit_action(obj, "delete"),
                    target_type=target_type,
                    target_id=target_id,
                    target_label=target_label,
                )

    def delete_model(self, request, obj):
        with transaction.atomic():
            # Recorded first: after the delete the row (and its pk) is gone.
            audit_record(action=self.audit_action(obj, "delete"), target=obj)
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                audit_record(action=self.audit_action(obj, "delete"), target=obj)
            super().delete_queryset(request, queryset)

"""Users, API keys, usage and budgets in the admin. Every operator action is recorded in the admin log."""

import csv
import json
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, OuterRef, Q, Subquery, Sum
from django.http import StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from . import admin_webhooks, services  # noqa: F401 (admin_webhooks registers the audited webhook admins)
from .admin_audit import AuditedAdmin
from .budgets import budget_status
from .forms import AdminLoginForm
from .models import APIKey, AuditEvent, Budget, BudgetAlert, BudgetAlertKind, UsageDaily, UsageRecord, User

# The admin's login form counts attempts like every other login (served by accounts.views.lockout_status).
admin.site.login_form = AdminLoginForm


def _usage_summary(user: User, *, days: int) -> str:
    """``"<requests> requests, <tokens> tokens (<prompt> prompt + <completion> completion), $<cost>"``
    over the last ``days`` UTC days, today included, from :class:`UsageDaily`."""
    today = timezone.now().date()
    totals = UsageDaily.objects.filter(user=user, day__gt=today - timedelta(days=days)).aggregate(
        requests=Sum("requests"),
        errors=Sum("errors"),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
        cost=Sum("cost"),
    )
    if not totals["requests"]:
        return "no requests"
    prompt, completion = totals["prompt"] or 0, totals["completion"] or 0
    return (
        f"{totals['requests']} requests ({totals['errors'] or 0} errors), {prompt + completion} tokens "
        f"({prompt} prompt + {completion} completion), ${totals['cost'] or 0:.4f}"
    )


class APIKeyInlineForm(forms.ModelForm):
    revoke = forms.BooleanField(required=False, help_text="Revoke this key on save: it stops working at once.")

    class Meta:
        model = APIKey
        fields: list[str] = []


class APIKeyInline(admin.TabularInline):
    """A user's API keys (the hash is never shown); tick "revoke" and save to revoke one."""

    model = APIKey
    form = APIKeyInlineForm
    fields = ["name", "prefix", "created_at", "last_used_at", "revoked_at", "revoke"]
    readonly_fields = ["name", "prefix", "created_at", "last_used_at", "revoked_at"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        # Keys are made by their owners (POST /api/v1/keys/): the key is shown to them only.
        return False


class RoleFilter(admin.SimpleListFilter):
    title = "role"
    parameter_name = "role"

    def lookups(self, request, model_admin):
        return [("superuser", "Superuser"), ("staff", "Staff"), ("user", "User")]

    def queryset(self, request, queryset):
        return {
            "superuser": queryset.filter(is_superuser=True),
            "staff": queryset.filter(is_staff=True, is_superuser=False),
            "user": queryset.filter(is_staff=False, is_superuser=False),
        }.get(self.value(), queryset)


@admin.register(User)
class UserAdmin(AuditedAdmin, DjangoUserAdmin):
    list_display = [
        "username",
        "email",
        "role",
        "is_active",
        "daily_token_quota",
        "memory_enabled",
        "tokens_today",
        "api_key_count",
        "last_login",
        "date_joined",
    ]
    list_filter = [RoleFilter, "is_active", "memory_enabled", "date_joined"]
    readonly_fields = ["role", "memories", "usage_today", "usage_30_days", "last_login", "date_joined"]
    fieldsets = [
        *DjangoUserAdmin.fieldsets,
        ("Parley", {"fields": ["role", "daily_token_quota", "memory_enabled", "memories"]}),
        ("Usage (UTC days)", {"fields": ["usage_today", "usage_30_days"]}),
    ]
    inlines = [APIKeyInline]
    actions = ["deactivate", "revoke_api_keys"]

    def get_queryset(self, request):
        today = timezone.now().date()
        return (
            super()
            .get_queryset(request)
            .annotate(
                # A subquery, not a join: joined with the API keys, a Sum would count each day once per key.
                tokens_today_total=Subquery(
                    UsageDaily.objects.filter(user=OuterRef("pk"), day=today)
                    .values("user")
                    .annotate(total=Sum(F("prompt_tokens") + F("completion_tokens")))
                    .values("total")[:1]
                ),
                active_keys=Count("api_keys", filter=Q(api_keys__revoked_at__isnull=True), distinct=True),
            )
        )

    @admin.display(description="role")
    def role(self, user: User) -> str:
        return "superuser" if user.is_superuser else "staff" if user.is_staff else "user"

    @admin.display(description="tokens today", ordering="tokens_today_total")
    def tokens_today(self, user: User) -> int:
        return getattr(user, "tokens_today_total", None) or 0

    @admin.display(description="active API keys", ordering="active_keys")
    def api_key_count(self, user: User) -> int:
        return getattr(user, "active_keys", 0)

    @admin.display(description="memories")
    def memories(self, user: User) -> str:
        # A link by URL name only: the memories are the agents app's, which accounts does not import.
        if not user.pk:
            return "–"
        url = reverse("admin:agents_memory_changelist") + f"?owner__id__exact={user.pk}"
        return format_html('<a href="{}">Memories of {}</a> (read-only; delete there)', url, user.get_username())

    @admin.display(description="today")
    def usage_today(self, user: User) -> str:
        return _usage_summary(user, days=1) if user.pk else "–"

    @admin.display(description="last 30 days")
    def usage_30_days(self, user: User) -> str:
        return _usage_summary(user, days=30) if user.pk else "–"

    def save_formset(self, request, form, formset, change):
        if formset.model is not APIKey:
            return super().save_formset(request, form, formset, change)
        # Only the "revoke" ticks are editable here; revocation goes through the service. save(commit=False)
        # writes nothing but lists the changed rows, which the admin's change message needs.
        formset.save(commit=False)
        for inline_form in formset.forms:
            api_key = inline_form.instance
            if inline_form.cleaned_data.get("revoke") and api_key.pk and api_key.revoked_at is None:
                services.api_key_revoke(api_key=api_key)
                self.log_change(request, api_key, "Revoked")
                self.message_user(request, f"Revoked API key {api_key}.", messages.SUCCESS)

    @admin.action(
        description="Deactivate selected users (ends their sessions and closes their WebSockets)",
        permissions=["change"],
    )
    def deactivate(self, request, queryset):
        count = 0
        for user in queryset.filter(is_active=True):
            if user.pk == request.user.pk:
                self.message_user(request, "You cannot deactivate yourself.", messages.ERROR)
                continue
            services.user_deactivate(user=user)
            self.log_change(request, user, "Deactivated; open WebSockets closed")
            count += 1
        self.message_user(request, f"Deactivated {count} user(s).", messages.SUCCESS)

    @admin.action(description="Revoke every API key of selected users", permissions=["change"])
    def revoke_api_keys(self, request, queryset):
        count = 0
        for api_key in APIKey.objects.filter(user__in=queryset, revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            self.log_change(request, api_key, "Revoked")
            count += 1
        self.message_user(request, f"Revoked {count} API key(s).", messages.SUCCESS)


@admin.register(APIKey)
class APIKeyAdmin(AuditedAdmin, admin.ModelAdmin):
    """API keys by prefix. Keys are made by their owners (``POST /api/v1/keys/``), never here, and
    the stored hash is never shown."""

    audit_name = "api_key"

    list_display = ["name", "prefix", "user", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "user__username"]
    list_select_related = ["user"]
    fields = [
        "id",
        "user",
        "name",
        "prefix",
        "allowed_models",
        "expires_at",
        "rate_limit",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke(self, request, queryset):
        revoked = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            services.api_key_revoke(api_key=api_key)
            self.log_change(request, api_key, "Revoked")
            revoked += 1
        self.message_user(request, f"Revoked {revoked} API key(s).", messages.SUCCESS)


class ReadOnlyAdmin(AuditedAdmin, admin.ModelAdmin):
    """Rows written only by accounts.services.usage_record: viewable, never edited here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "user",
        "model_slug",
        "provider",
        "source",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "latency_ms",
        "cost",
        "cached",
    ]
    list_filter = ["status", "source", "cached", "model_slug", "provider", "created_at"]
    search_fields = ["user__username", "model_slug"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = [
        "day",
        "user",
        "model_slug",
        "requests",
        "errors",
        "cached_requests",
        "prompt_tokens",
        "completion_tokens",
        "cost",
    ]
    list_filter = ["day", "model_slug"]
    search_fields = ["user__username", "model_slug"]
    list_select_related = ["user"]
    date_hierarchy = "day"


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(AuditedAdmin, DjangoGroupAdmin):
    """Django's group admin; each change (name, permissions) is an audit event."""


class _Echo:
    """A file whose write returns the line: csv.writer then yields rows for a streaming response."""

    def write(self, value: str) -> str:
        return value


AUDIT_CSV_COLUMNS = [
    "created",
    "actor",
    "action",
    "target_type",
    "target_id",
    "target",
    "changes",
    "source",
    "ip",
    "request_id",
]


def audit_csv_rows(queryset):
    """Yield the CSV lines of ``queryset``'s events: a header, then one line per event (2,000 rows a query)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(AUDIT_CSV_COLUMNS)
    for event in queryset.iterator(chunk_size=2000):
        yield writer.writerow(
            [
                event.created.isoformat(),
                event.actor_label,
                event.action,
                event.target_type,
                event.target_id,
                event.target_label,
                json.dumps(event.changes, ensure_ascii=False, sort_keys=True),
                event.source,
                event.ip or "",
                event.request_id,
            ]
        )


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log: read-only for everyone (superusers too), never deleted here (AUDIT_RETENTION_DAYS
    prunes it); "Export CSV" downloads the events the current filters and search select."""

    list_display = ["created", "actor_label", "action", "target_type", "target_label", "source", "ip", "request_id"]
    list_filter = ["action", "source", ("actor", admin.RelatedOnlyFieldListFilter), "target_type", "created"]
    search_fields = ["actor_label", "action", "target_label", "target_id", "request_id"]
    search_help_text = "Actor, action, target or request id."
    date_hierarchy = "created"
    list_select_related = ["actor"]
    readonly_fields = [
        "created",
        "actor",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "target_label",
        "changes",
        "source",
        "ip",
        "request_id",
    ]
    fields = readonly_fields
    change_list_template = "admin/accounts/auditevent/change_list.html"
    show_full_result_count = False  # no COUNT(*) of a large log on every page

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        export = self.admin_site.admin_view(self.export_csv)
        return [path("export.csv", export, name="accounts_auditevent_export"), *super().get_urls()]

    def export_csv(self, request):
        """Stream the events of the changelist's current filters and search as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        queryset = self.get_changelist_instance(request).get_queryset(request)
        # Reading the log is recorded too (before the query runs, so the file includes it when it matches).
        services.audit_record(
            action="audit.export", target_type="accounts.auditevent", changes={"filters": dict(request.GET.lists())}
        )
        response = StreamingHttpResponse(audit_csv_rows(queryset), content_type="text/csv; charset=utf-8")
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response["Content-Disposition"] = f'attachment; filename="parley-audit-{stamp}.csv"'
        return response


@admin.register(Budget)
class BudgetAdmin(AuditedAdmin, admin.ModelAdmin):
    """Money budgets per user, group or API key. Each create, change (who raised it, from what to what)
    and delete is an audit event (``budget.*``); alerts of the current period show as messages."""

    audit_name = "budget"
    list_display = ["__str__", "period", "amount", "spent_this_period", "threshold_percent", "updated_at"]
    list_filter = ["period"]
    search_fields = ["user__username", "group__name", "api_key__prefix", "api_key__name"]
    raw_id_fields = ["user", "api_key"]
    list_select_related = ["user", "group", "api_key"]
    fields = ["user", "group", "api_key", "amount", "period", "threshold_percent"]

    @admin.display(description="spent this period (USD)")
    def spent_this_period(self, budget: Budget) -> str:
        status = budget_status(budget=budget)
        return f"{status.spent:.2f} ({status.spent / budget.amount:.0%})" if budget.amount else f"{status.spent:.2f}"

    def changelist_view(self, request, extra_context=None):
        for alert in BudgetAlert.objects.filter(period_end__gt=timezone.now()).select_related(
            "budget__user", "budget__group", "budget__api_key"
        )[:20]:
            level = messages.ERROR if alert.kind == BudgetAlertKind.EXCEEDED else messages.WARNING
            messages.add_message(
                request,
                level,
                f"Budget {alert.budget}: {alert.get_kind_display().lower()} on {alert.created_at:%Y-%m-%d %H:%M} UTC "
                f"(${alert.spent:.2f} spent this period).",
            )
        return super().changelist_view(request, extra_context)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    """Thresholds and amounts reached, one row per budget, period and kind (each sent as ``budget.<kind>``).

    Read-only: rows are written only by :func:`accounts.budgets.budget_alerts_check`.
    """

    list_display = ["created_at", "budget", "kind", "spent", "period_start", "period_end"]
    list_filter = ["kind"]
    list_select_related = ["budget__user", "budget__group", "budget__api_key"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

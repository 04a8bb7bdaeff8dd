from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.models import Group
from django.db.models import Q
from django.template.response import TemplateResponse

from accounts.access import groups_label
from accounts.admin_audit import AuditedAdmin
from core.errors import ParleyError

from .models import Deployment, ModelConfig, ModelFallback
from .registry import model_config_access_set, model_config_probe, model_config_set_default
from .routing import deployment_states, model_deployments
from .selectors import deployment_tokens_per_s
from .services import model_is_loaded, model_load, model_unload


class DeploymentInline(admin.TabularInline):
    """The servers of a model. With none, the model's own provider fields serve it as one deployment."""

    model = Deployment
    extra = 0
    fields = [
        "order",
        "name",
        "provider",
        "model",
        "base_url",
        "api_key_env",
        "weight",
        "max_concurrent",
        "rpm_limit",
        "tpm_limit",
        "is_drained",
        "state",
        "tokens_per_s",
    ]
    readonly_fields = ["state", "tokens_per_s"]

    @admin.display(description="state (all processes)")
    def state(self, deployment: Deployment) -> str:
        """The state every process shares (Redis): healthy, cooling down until T or failing, in flight,
        p50 TTFT of the recent requests, last error (requests and health probes)."""
        if deployment.pk is None:
            return "-"
        return deployment_states([deployment])[0].summary(deployment)

    @admin.display(description="tokens/s (last hour)")
    def tokens_per_s(self, deployment: Deployment) -> str:
        """Generation speed over the last hour, from the usage records; ``-`` without timed requests."""
        if deployment.pk is None:
            return "-"
        rate = deployment_tokens_per_s(labels=[deployment.label])[deployment.label]
        return "-" if rate is None else f"{rate:.1f}"


class FallbackInline(admin.TabularInline):
    """Models that answer, in order, when none of this model's deployments can."""

    model = ModelFallback
    fk_name = "model"
    extra = 0
    fields = ["order", "fallback"]
    verbose_name = "fallback model"
    verbose_name_plural = "fallback models (tried in order when no deployment of this model can answer)"


class UsableByGroupFilter(admin.SimpleListFilter):
    """ "Models group G can use": those open to everyone and those listing G."""

    title = "usable by group"
    parameter_name = "usable_by"

    def lookups(self, request, model_admin):
        return [(str(group.pk), group.name) for group in Group.objects.order_by("name")]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(Q(groups__isnull=True) | Q(groups__pk=self.value())).distinct()


class AccessForm(forms.Form):
    """The page of the "Set who may use them" action."""

    mode = forms.ChoiceField(
        choices=[
            ("set", "Only these groups (replace each model's list)"),
            ("add", "Add these groups to each model's list"),
            ("remove", "Remove these groups from each model's list"),
            ("everyone", "Everyone (clear each model's list)"),
        ],
        widget=forms.RadioSelect,
        initial="add",
    )
    groups = forms.ModelMultipleChoiceField(queryset=Group.objects.order_by("name"), required=False)


@admin.register(ModelConfig)
class ModelConfigAdmin(AuditedAdmin, admin.ModelAdmin):
    audit_name = "model"  # model.create / model.change / model.delete; inlines: deployment.*, modelfallback.*
    inlines = [DeploymentInline, FallbackInline]
    list_display = [
        "display_name",
        "slug",
        "provider",
        "model",
        "context_window",
        "is_default",
        "is_enabled",
        "loaded",
        "routing",
        "access",
    ]
    list_filter = ["provider", "is_enabled", "is_default", UsableByGroupFilter]
    filter_horizontal = ["groups"]
    search_fields = ["slug", "display_name", "model"]
    prepopulated_fields = {"slug": ["display_name"]}
    actions = ["test_models", "set_as_default", "set_access", "load_models", "unload_models"]
    fieldsets = [
        (None, {"fields": ["display_name", "slug", "provider", "model", "is_default", "is_enabled"]}),
        (
            "Who may use it",
            {
                "fields": ["groups"],
                "description": "None selected: every user. Otherwise only members of these groups (and "
                "superusers), in the chat UI, the REST API, the WebSocket, SSE and /v1 alike.",
            },
        ),
        (
            "Server",
            {
                "fields": ["base_url", "api_key_env"],
                "description": "OpenAI-compatible models only. The key is read from the named environment "
                "variable and never stored or shown.",
            },
        ),
        ("Generation", {"fields": ["context_window", "max_tokens", "temperature", "system_prompt", "stop"]}),
        ("Local (llama.cpp)", {"fields": ["n_threads", "n_gpu_layers"]}),
        (
            "Capabilities",
            {
                "fields": ["supports_tools", "supports_response_format", "supports_logprobs"],
                "description": "What /v1/chat/completions may ask of this model; requests using a parameter it "
                "lacks are refused (400 unsupported_parameter).",
            },
        ),
        (
            "Images",
            {
                "fields": [
                    "supports_vision",
                    "image_max_pixels",
                    "image_max_bytes",
                    "text_only_images",
                    "vision_projector",
                    "vision_chat_handler",
                ],
                "description": 'Images in chat and /v1 (README, "Images in chat"). A llama.cpp vision model '
                "needs its projector (mmproj) file.",
            },
        ),
        ("Limits", {"fields": ["connect_timeout", "ttft_timeout", "idle_timeout", "max_retries", "max_queue"]}),
        ("Pricing and orchestration", {"fields": ["price_input_per_mtok", "price_output_per_mtok", "orchestrator"]}),
        (
            "Routing",
            {
                "fields": ["routing_strategy"],
                "description": "How a request picks one of the deployments below. A model with no deployments "
                "is served by its own provider, model, base URL and API-key fields above.",
            },
        ),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("deployments", "groups")

    @admin.display(description="who may use it")
    def access(self, config: ModelConfig) -> str:
        return groups_label(config)

    @admin.action(description="Set who may use them (groups)")
    def set_access(self, request, queryset):
        """Give or take the selected models to or from groups at once, after a page that asks which."""
        form = AccessForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            changed = model_config_access_set(
                configs=list(queryset), groups=list(form.cleaned_data["groups"]), mode=form.cleaned_data["mode"]
            )
            self.message_user(request, f"Access changed on {changed} of {queryset.count()} model(s).", messages.SUCCESS)
            return None
        return TemplateResponse(
            request,
            "admin/inference/modelconfig/set_access.html",
            {
                **self.admin_site.each_context(request),
                "title": "Who may use these models",
                "opts": self.model._meta,
                "form": form,
                "queryset": queryset,
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            },
        )

    @admin.display(description="deployments")
    def routing(self, config: ModelConfig) -> str:
        """Each deployment's state (its own fields as ``default`` when it has none), from Redis, and
        its tokens/s over the last hour, from the usage records."""
        deployments = model_deployments(config)
        states = deployment_states(deployments)
        rates = deployment_tokens_per_s(labels=[d.label for d in deployments])
        return " | ".join(f"{d.name}: {s.summary(d, rates[d.label])}" for d, s in zip(deployments, states, strict=True))

    @admin.display(boolean=True, description="loaded here")
    def loaded(self, config: ModelConfig) -> bool | None:
        """Whether this process (the admin's) has the local model loaded; empty for remote models."""
        return model_is_loaded(config=config)

    @admin.action(description="Test: run a short prompt and show TTFT, tokens/s and the answer")
    def test_models(self, request, queryset):
        for config in queryset:
            try:
                probe = model_config_probe(config=config, max_tokens=32)
            except ParleyError as exc:
                self.message_user(request, f"{config.slug}: {exc.code}: {exc.detail}", messages.ERROR)
                continue
            rate = f"{probe.tokens_per_s:.1f} tokens/s" if probe.tokens_per_s else "tokens/s n/a"
            self.message_user(
                request,
                f"{config.slug}: first token {probe.ttft_ms:.0f} ms, {rate}, "
                f"{probe.completion_tokens} tokens: {probe.text.strip()!r}",
                messages.SUCCESS,
            )
            self.log_change(request, config, "Tested")

    @admin.action(description="Set as default")
    def set_as_default(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model to make it the default.", messages.ERROR)
            return
        try:
            config = model_config_set_default(slug=queryset.get().slug)
        except ParleyError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.log_change(request, config, "Set as default")
        self.message_user(request, f"{config.display_name} is now the default model.", messages.SUCCESS)

    @admin.action(description="Load (and warm up) in this process")
    def load_models(self, request, queryset):
        for config in queryset:
            try:
                seconds = model_load(config=config)
            except ParleyError as exc:
                self.message_user(request, f"{config.slug}: {exc.code}: {exc.detail}", messages.ERROR)
                continue
            self.log_change(request, config, "Loaded")
            self.message_user(request, f"{config.slug}: loaded and warmed up in {seconds:.2f} s.", messages.SUCCESS)

    @admin.action(description="Unload from this process")
    def unload_models(self, request, queryset):
        for config in queryset:
            if model_unload(config=config):
                self.log_change(request, config, "Unloaded")
                self.message_user(request, f"{config.slug}: unloaded.", messages.SUCCESS)
            else:
                self.message_user(request, f"{config.slug}: was not loaded.", messages.WARNING)

from django.contrib import admin

from .models import ModelConfig


@admin.register(ModelConfig)
class ModelConfigAdmin(admin.ModelAdmin):
    list_display = ["display_name", "slug", "provider", "model", "context_window", "is_default", "is_enabled"]
    list_filter = ["provider", "is_enabled"]
    search_fields = ["slug", "display_name", "model"]
    prepopulated_fields = {"slug": ["display_name"]}
    fieldsets = [
        (None, {"fields": ["display_name", "slug", "provider", "model", "is_default", "is_enabled"]}),
        ("Server", {"fields": ["base_url", "api_key_env"], "description": "OpenAI-compatible models only."}),
        ("Generation", {"fields": ["context_window", "max_tokens", "temperature", "system_prompt"]}),
    ]

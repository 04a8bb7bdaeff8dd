"""The admin's Cache page: stats per layer and a flush per layer, each flush in the admin log."""

from django.contrib import messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.views.decorators.http import require_http_methods

from . import cache


@require_http_methods(["GET", "POST"])
def cache_dashboard(request):
    """GET: stats per layer and Redis health. POST ``layer=<name>|all``: flush it (after a confirm)."""
    if request.method == "POST":
        layer = request.POST.get("layer", "")
        names = list(cache.LAYERS) if layer == "all" else [layer]
        if not set(names) <= set(cache.LAYERS):
            messages.error(request, f"Unknown cache layer {layer!r}.")
            return redirect("admin_cache")
        try:
            versions = cache.flush(names)
        except Exception as exc:
            messages.error(request, f"Redis is unavailable, nothing was flushed: {exc}")
            return redirect("admin_cache")
        # Not tied to a model instance, so written directly (LogEntry.objects.log_action is deprecated).
        LogEntry.objects.create(
            user=request.user,
            action_flag=CHANGE,
            object_repr=f"cache layer {layer}",
            change_message=f"Flushed cache layer {layer} (now version {', '.join(map(str, versions.values()))})",
        )
        messages.success(request, f"Flushed the {layer} cache.")
        return redirect("admin_cache")
    health, layers = cache.report()
    return TemplateResponse(
        request,
        "admin/inference/cache.html",
        {**admin_context(request), "title": "Cache", "health": health, "layers": layers},
    )


def admin_context(request) -> dict:
    from django.contrib import admin

    return admin.site.each_context(request)

"""The admin's operator pages.

- Cache (/admin/cache/): stats per layer and a flush per layer, each flush in the admin log.
- Metrics (/admin/metrics/): the figures of :mod:`inference.metrics`, with SVG charts.
"""

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from accounts import metrics as usage_metrics

from . import cache
from .metrics import operations_metrics
from .services import cache_flush


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
            versions = cache_flush(names=names)
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
    return admin.site.each_context(request)


CHART_WIDTH = 720  # px, the SVG's viewBox
CHART_HEIGHT = 140


def bar_chart(series: list[dict], key: str, *, bucket_seconds: int) -> dict:
    """Return the geometry of a bar chart of ``series[i][key]``, for ``admin/metrics.html`` to draw as SVG.

    ``{"width", "height", "max", "bars": [{"x", "y", "width", "height", "value", "label"}], "ticks": [...]}``;
    bar heights are proportional to the value, the tallest bar filling the chart.
    """
    values = [row[key] for row in series]
    peak = max(values, default=0) or 1
    slot = CHART_WIDTH / max(len(series), 1)
    gap = 1 if slot > 4 else 0
    label_format = "%a %H:%M" if bucket_seconds >= 6 * 3600 else "%H:%M"
    bars, ticks = [], []
    every = max(1, len(series) // 6)  # about six labels under the axis
    for i, row in enumerate(series):
        height = round(row[key] / peak * (CHART_HEIGHT - 4), 1)
        start = timezone.localtime(row["start"])
        label = start.strftime(label_format)
        bars.append(
            {
                "x": round(i * slot, 1),
                "y": round(CHART_HEIGHT - height, 1),
                "width": round(slot - gap, 1),
                "height": height,
                "value": row[key],
                "label": label,
            }
        )
        if i % every == 0:
            ticks.append({"x": round(i * slot, 1), "label": label})
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "max": max(values, default=0), "bars": bars, "ticks": ticks}


@require_GET
def metrics_dashboard(request):
    """GET ``?window=1h|24h|7d`` (default 24h): the operations figures and per-bucket charts."""
    window = request.GET.get("window", usage_metrics.DEFAULT_WINDOW)
    if window not in usage_metrics.WINDOWS:
        window = usage_metrics.DEFAULT_WINDOW
    data = operations_metrics(window=window)
    charts = [
        ("Requests", bar_chart(data["series"], "requests", bucket_seconds=data["bucket_seconds"])),
        ("Errors", bar_chart(data["series"], "errors", bucket_seconds=data["bucket_seconds"])),
        ("Tokens", bar_chart(data["series"], "tokens", bucket_seconds=data["bucket_seconds"])),
    ]
    return TemplateResponse(
        request,
        "admin/metrics.html",
        {
            **admin.site.each_context(request),
            "title": "Metrics",
            "m": data,
            "windows": list(usage_metrics.WINDOWS),
            "charts": charts,
            "bucket_minutes": data["bucket_seconds"] // 60,
        },
    )

"""The admin's spend page (/admin/spend/): spend of the current day, week or month per user, group, API
key and model, each budget's state, and a per-day chart. Staff only (``admin.site.admin_view``)."""

from django.contrib import admin
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from .budgets import budget_status, period_bounds
from .models import Budget, BudgetPeriod
from .selectors import spend_summary

CHART_WIDTH = 720  # px, the SVG's viewBox
CHART_HEIGHT = 140


def day_chart(days: list[dict]) -> dict:
    """Return the geometry of a bar chart of ``days`` (``[{"day", "cost"}]``) for ``admin/accounts/spend.html``.

    ``{"width", "height", "bars": [{"x", "y", "width", "height", "label", "cost"}]}``; the costliest
    day fills the chart.
    """
    peak = max((row["cost"] for row in days), default=0) or 1
    slot = CHART_WIDTH / max(len(days), 1)
    bars = []
    for i, row in enumerate(days):
        height = round(float(row["cost"] / peak) * (CHART_HEIGHT - 4), 1)
        bars.append(
            {
                "x": round(i * slot, 1),
                "y": round(CHART_HEIGHT - height, 1),
                "width": round(max(slot - 2, 1), 1),
                "height": height,
                "label": row["day"].strftime("%m-%d"),
                "cost": row["cost"],
            }
        )
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "bars": bars}


@require_GET
def spend_dashboard(request):
    """GET ``?period=day|week|month`` (default month): the period's spend and the budgets' state."""
    period = request.GET.get("period", BudgetPeriod.MONTH)
    if period not in BudgetPeriod.values:
        period = BudgetPeriod.MONTH
    start, end = period_bounds(period)
    summary = spend_summary(start=start, end=end)
    budgets = [
        (budget, budget_status(budget=budget))
        for budget in Budget.objects.select_related("user", "group", "api_key").order_by("period", "id")
    ]
    return TemplateResponse(
        request,
        "admin/accounts/spend.html",
        {
            **admin.site.each_context(request),
            "title": "Spend",
            "period": period,
            "periods": BudgetPeriod.values,
            "start": start,
            "end": end,
            "s": summary,
            "chart": day_chart(summary["by_day"]),
            "budgets": budgets,
            "tables": [
                ("Per user", summary["by_user"]),
                ("Per group", summary["by_group"]),
                ("Per API key", summary["by_api_key"]),
                ("Per model", summary["by_model"]),
            ],
        },
    )

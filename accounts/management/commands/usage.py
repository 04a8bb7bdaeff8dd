import json

from django.core.management import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from accounts import metrics, services


class Command(BaseCommand):
    help = "Model usage: prune old rows (retention) or report the figures of a window."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        prune = sub.add_parser("prune", help="delete usage records and daily totals older than --days")
        prune.add_argument("--days", type=int, required=True, help="keep the last N days of usage records")
        prune.add_argument(
            "--daily-days", type=int, default=None, help="keep the last N days of daily totals (default: --days)"
        )
        report = sub.add_parser("report", help="requests, errors, tokens, TTFT and top users of a window")
        report.add_argument("--window", choices=list(metrics.WINDOWS), default=metrics.DEFAULT_WINDOW)
        report.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args, action, **options):
        getattr(self, f"handle_{action}")(**options)

    def handle_prune(self, *, days: int, daily_days: int | None, **options):
        try:
            records, daily = services.usage_prune(record_days=days, daily_days=daily_days)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Deleted {records} usage record(s) and {daily} daily total(s).")

    def handle_report(self, *, window: str, json: bool = False, **options):
        length, bucket = metrics.WINDOWS[window]
        now = timezone.now()
        data = metrics.usage_metrics(since=now - length, until=now, bucket=bucket)
        data.pop("series")
        if json:
            self.stdout.write(_json(data))
            return
        tokens = data["prompt_tokens"] + data["completion_tokens"]
        self.stdout.write(
            f"Last {window}: {data['requests']} requests, {data['errors']} errors, {tokens} tokens "
            f"({data['prompt_tokens']} prompt + {data['completion_tokens']} completion), ${data['cost']:.4f}"
        )
        self.stdout.write(
            f"TTFT p50/p95: {data['ttft_ms']['p50']} / {data['ttft_ms']['p95']} ms; tokens/s: {data['tokens_per_s']}"
        )
        for row in data["top_users"]:
            self.stdout.write(f"  {row['username']}: {row['requests']} requests, {row['tokens']} tokens")


def _json(data) -> str:
    return json.dumps(data, cls=DjangoJSONEncoder, indent=2)

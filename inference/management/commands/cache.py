import json
from pathlib import Path

from django.core.management import CommandError
from django.db import DatabaseError
from redis.exceptions import RedisError

from accounts.audit import AuditedCommand
from accounts.models import User
from core.errors import ParleyError
from inference import cache
from inference.pipeline import cache_warm
from inference.selectors import model_config_get
from inference.services import cache_flush


class Command(AuditedCommand):
    help = "Inspect and maintain the response caches: stats, flush, warm."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        stats = sub.add_parser("stats", help="hits, misses, sets, errors, hit ratio and keys per layer")
        stats.add_argument("--json", action="store_true", help="print JSON")
        flush = sub.add_parser("flush", help="invalidate a layer (O(1) namespace bump)")
        which = flush.add_mutually_exclusive_group(required=True)
        which.add_argument("--layer", choices=cache.LAYERS)
        which.add_argument("--all", action="store_true")
        warm = sub.add_parser(
            "warm",
            help='precompute answers for the prompts of a JSONL file: {"prompt": str, "model"?: slug} per line',
        )
        warm.add_argument("--file", required=True, type=Path)
        warm.add_argument(
            "--user",
            help="username whose cache receives the answers (needed unless the model shares its cache)",
        )

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"handle_{action}")(**options)
        except ParleyError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from exc
        except (RedisError, ConnectionError, OSError) as exc:
            raise CommandError(f"Redis is unavailable: {exc}") from exc

    def handle_stats(self, *, json: bool = False, **options):
        import json as json_module

        health, stats = cache.report()
        if health.status != "ok":
            raise CommandError(f"Redis is unavailable: {health.detail}")
        if json:
            self.stdout.write(json_module.dumps({"health": health.__dict__, "layers": stats}))
            return
        self.stdout.write(f"Redis ping {health.ping_ms} ms, memory {health.used_memory_bytes} bytes")
        self.stdout.write(f"{'layer':10}{'hits':>8}{'misses':>8}{'sets':>8}{'errors':>8}{'ratio':>8}{'keys':>8}")
        for row in stats:
            ratio = f"{row['hit_ratio']:.0%}" if row["hit_ratio"] is not None else "-"
            keys = row["keys"] if row["keys"] is not None else "-"
            self.stdout.write(
                f"{row['layer']:10}{row['hits']:>8}{row['misses']:>8}{row['sets']:>8}{row['errors']:>8}{ratio:>8}{keys:>8}"
            )

    def handle_flush(self, *, layer=None, all=False, **options):
        names = list(cache.LAYERS) if all else [layer]
        try:
            versions = cache_flush(names=names)
        except (RedisError, ConnectionError, OSError) as exc:
            raise CommandError(f"Redis is unavailable, nothing was flushed: {exc}") from exc
        except DatabaseError as exc:
            # cache_flush flushes first, then records the audit event: the flush did happen.
            raise CommandError(f"Flushed {', '.join(names)}, but its audit event could not be written: {exc}") from exc
        for name, version in versions.items():
            self.stdout.write(f"Flushed {name} (now version {version}).")

    def handle_warm(self, *, file: Path, user: str | None = None, **options):
        if not file.is_file():
            raise CommandError(f"No such file: {file}")
        user_id = None
        if user:
            user_id = User.objects.filter(username=user).values_list("pk", flat=True).first()
            if user_id is None:
                raise CommandError(f"No user {user!r}.")
        counts: dict[str, int] = {}
        for number, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                prompt = row["prompt"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CommandError(f'{file}:{number}: expected {{"prompt": str, "model"?: slug}}: {exc}') from exc
            config = model_config_get(slug=row.get("model"))
            result = cache_warm(config=config, prompt=prompt, user_id=user_id)
            counts[result] = counts.get(result, 0) + 1
            self.stdout.write(f"{config.slug}: {result}: {prompt[:60]!r}")
        self.stdout.write(", ".join(f"{n} {result}" for result, n in counts.items()) or "No prompts.")

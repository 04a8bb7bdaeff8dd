from datetime import timedelta

from django.core.management import BaseCommand

from chat.selectors import STALE_GENERATION_AFTER
from chat.services import message_finalize_orphans


class Command(BaseCommand):
    help = (
        "Finalise answers left 'streaming' by a process that died mid-generation (status error, partial "
        "text kept). By default only those older than the stale-generation window (10 min), so live "
        "generations on other nodes are untouched; --all when nothing else can be running."
    )

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="every unfinished answer, whatever its age")

    def handle(self, *args, all=False, **options):
        count = message_finalize_orphans(older_than=timedelta(0) if all else STALE_GENERATION_AFTER)
        if count:
            self.stdout.write(f"Finalised {count} interrupted answer(s).")

import json as json_module
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management import CommandError

from accounts.audit import AuditedCommand
from agents.selectors import kb_stats
from agents.services import kb_import, kb_reembed
from core.errors import ParleyError


class Command(AuditedCommand):
    help = "Maintain the knowledge base: import files, folders and JSONL Q/A datasets; re-embed; stats."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser(
            "import",
            help="import a file or every .txt/.md/.html/.pdf/.jsonl file under a folder; JSONL lines are "
            '{"question": str, "answer": str}',
        )
        imp.add_argument("path", type=Path)
        imp.add_argument("--user", help="the owner's username (default: the first superuser)")
        imp.add_argument("--queue", action="store_true", help="ingest in Celery instead of here")
        sub.add_parser("reembed", help="embed every chunk and memory again (after EMBEDDING_MODEL changes)")
        stats = sub.add_parser("stats", help="documents by status, chunks, memories")
        stats.add_argument("--user", help="only this user's")
        stats.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"handle_{action}")(**options)
        except ParleyError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from exc

    def _user(self, username: str | None, *, required: bool):
        User = get_user_model()
        if username:
            user = User.objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"No user {username!r}.")
            return user
        if not required:
            return None
        user = User.objects.filter(is_superuser=True).order_by("pk").first()
        if user is None:
            raise CommandError("No superuser to own the documents: give --user USERNAME.")
        return user

    def handle_import(self, *, path: Path, user: str | None = None, queue: bool = False, **options):
        if not path.exists():
            raise CommandError(f"{path} does not exist.")
        owner = self._user(user, required=True)
        documents = kb_import(owner=owner, path=path, queue=queue)
        failed = 0
        for document in documents:
            line = f"{document.filename}: {document.status}"
            if document.status == "ready":
                line += f", {document.chunk_count} chunks"
            elif document.status == "failed":
                failed += 1
                line += f" ({document.failure_reason})"
            self.stdout.write(line)
        self.stdout.write(f"Imported {len(documents)} document(s) for {owner.username}; {failed} failed.")

    def handle_reembed(self, **options):
        counts = kb_reembed(on_progress=lambda kind, done: self.stdout.write(f"{kind}: {done}", ending="\r"))
        self.stdout.write(f"Re-embedded {counts['chunks']} chunks and {counts['memories']} memories.")

    def handle_stats(self, *, user: str | None = None, json: bool = False, **options):
        stats = kb_stats(user=self._user(user, required=False))
        if json:
            self.stdout.write(json_module.dumps(stats))
            return
        documents = ", ".join(f"{count} {status}" for status, count in stats["documents"].items())
        self.stdout.write(f"Documents: {documents} ({stats['bytes']:,} bytes)")
        self.stdout.write(f"Chunks: {stats['chunks']}")
        memories = ", ".join(f"{count} {kind}" for kind, count in stats["memories"].items()) or "none"
        self.stdout.write(f"Memories: {memories}")
        self.stdout.write(f"Embedding models: {', '.join(stats['embedding_models']) or '-'}")

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management import CommandError

from accounts.audit import AuditedCommand
from chat.selectors import conversation_export_list
from chat.services import conversations_export_zip, import_job_create, import_job_run
from core.errors import ParleyError


class Command(AuditedCommand):
    help = "Import a user's conversations (ChatGPT's or Parley's export) or export them as a zip."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser(
            "import", help="import ChatGPT's export (conversations.json or its zip) or Parley's, here (no worker)"
        )
        imp.add_argument("file", type=Path)
        imp.add_argument("--user", required=True, help="the username who will own the conversations")
        exp = sub.add_parser("export", help="write all of a user's conversations to a zip (as the settings page)")
        exp.add_argument("--user", required=True)
        exp.add_argument("--output", required=True, type=Path, help="the zip file to write")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"handle_{action}")(**options)
        except ParleyError as exc:
            raise CommandError(f"{exc.code}: {exc.detail}") from exc

    def _user(self, username: str):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user {username!r}.")
        return user

    def handle_import(self, *, file: Path, user: str, **options):
        if not file.is_file():
            raise CommandError(f"{file} is not a file.")
        owner = self._user(user)
        job = import_job_create(owner=owner, data=file.read_bytes(), filename=file.name, enqueue=False)
        job = import_job_run(job_id=job.pk)
        for entry in job.report:
            line = f"{entry['status']}: {entry['title']} ({entry['messages']} messages)"
            if entry["reason"]:
                line += f" - {entry['reason']}"
            self.stdout.write(line)
        if job.status == "failed":
            raise CommandError(f"Import failed: {job.error}")
        self.stdout.write(
            f"Imported {job.imported} conversation(s) for {owner.username}; {job.skipped} skipped "
            f"({job.get_source_display()} export, job {job.pk})."
        )

    def handle_export(self, *, user: str, output: Path, **options):
        owner = self._user(user)
        with output.open("wb") as out:
            count = conversations_export_zip(conversations=conversation_export_list(user=owner), out=out)
        self.stdout.write(f"Exported {count} conversation(s) of {owner.username} to {output}.")

"""Fixtures of the knowledge-base tests: an isolated MEDIA_ROOT, document builders, a real Celery worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings as django_settings
from django.db import connection

from agents.services import document_create, document_ingest


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    """Uploads of each test go to a folder of its own (FileSystemStorage follows the setting)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def make_pdf(*lines: str) -> bytes:
    """Return a small valid one-page PDF showing ``lines`` (Helvetica), built by hand: no PDF writer here."""
    text = " ".join(f"({line.replace('(', '').replace(')', '')}) Tj 0 -16 Td" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def ingested(*, owner, text: str, filename: str = "notes.txt", title: str = ""):
    """Create ``owner``'s document from ``text`` and ingest it here (no worker); return it, ready."""
    document = document_create(owner=owner, data=text.encode(), filename=filename, title=title, ingest=False)
    return document_ingest(document_id=document.pk)


def worker_environment(media_root) -> dict:
    """The environment of a Celery worker that sees this test's database, broker and MEDIA_ROOT."""
    url = urlsplit(os.environ["DATABASE_URL"])
    database_url = urlunsplit(url._replace(path=f"/{connection.settings_dict['NAME']}"))
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "MEDIA_ROOT": str(media_root),
        "REDIS_KEY_PREFIX": django_settings.REDIS_KEY_PREFIX,
        # A task of a killed worker is delivered again after this many seconds (kombu checks every 10 s).
        "CELERY_VISIBILITY_TIMEOUT": "3",
    }


def start_worker(media_root, name: str) -> subprocess.Popen:
    """Start ``celery -A config worker --pool=solo`` and wait until it answers a ping."""
    from config.celery import app as celery_app

    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "--pool=solo", "--loglevel=WARNING",
        "--without-gossip", "--without-mingle", "-n", f"{name}@%h",
    ]  # fmt: skip
    worker = subprocess.Popen(command, env=worker_environment(media_root), cwd=django_settings.BASE_DIR)  # noqa: S603
    deadline = time.monotonic() + 90
    while not celery_app.control.ping(destination=[f"{name}@{os.uname().nodename}"], timeout=0.5):
        if worker.poll() is not None:
            raise AssertionError("the Celery worker exited")
        if time.monotonic() > deadline:
            worker.kill()
            raise AssertionError("the Celery worker did not answer within 90 s")
    return worker


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

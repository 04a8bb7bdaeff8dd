"""What the bench scripts share: Django on the launcher's services, the bench user, server processes.

Every script under ``bench/`` runs as ``python bench/<name>.py`` inside the embedded-services launcher
(``python -m core.launcher run -- ...``), which exports ``DATABASE_URL`` and ``REDIS_URL``. Python
then puts ``bench/`` first on ``sys.path``, so ``import harness`` finds this module; importing it puts
the project's root there too, so the scripts can import Parley's apps once :func:`django_setup` ran.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

# The prompt of the generation benches: long enough that the model uses all of max_tokens.
PROMPT = "Write a long story about a lighthouse keeper."
BENCH_USER = "bench"


def django_setup(*, settings: str = "config.settings.local", env: dict[str, str] | None = None, migrate: bool = True):
    """Configure Django with ``settings`` and return it, after applying migrations (``migrate``).

    ``env`` is added to ``os.environ`` first, so the settings read it; server processes started
    later (:func:`server_process`, :func:`daphne`) inherit the same environment.
    """
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    os.environ.update(env or {})
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
    from django.conf import settings as django_settings

    return django_settings


def bench_user(username: str = BENCH_USER, **defaults):
    """Return the user ``username``, created with ``defaults`` (model fields) if missing."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get_or_create(username=username, defaults=defaults)[0]


def session_cookie(user) -> str:
    """Return a ``Cookie`` header value for a new logged-in session of ``user`` (``sessionid=...``)."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}"


def free_port() -> int:
    """Return a loopback TCP port that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, *, name: str = "Daphne", timeout: float = 60) -> None:
    """Return once ``port`` accepts connections; raise RuntimeError if ``process`` exits or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}.")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout} s.")


def stop_process(process: subprocess.Popen, *, timeout: float = 10) -> None:
    """Terminate ``process`` (SIGTERM), and kill it if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def server_process(command: list[str], *, port: int, name: str, timeout: float = 60) -> Iterator[int]:
    """Run ``command`` (a server that listens on loopback ``port``) from the project root; yield ``port``.

    Its output goes to a file, not a pipe (a full pipe would block it), and is written to stderr
    when the run fails, with the server's ``name``. The server is stopped on the way out.
    """
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(  # noqa: S603 (our own command)
            command, cwd=BASE_DIR, env=os.environ, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(port, process, name=name, timeout=timeout)
            yield port
        except BaseException:
            log.seek(0)
            sys.stderr.write(f"{name}'s output:\n" + log.read().decode(errors="replace"))
            raise
        finally:
            stop_process(process)


def daphne(*, timeout: float = 60):
    """Run Parley as the Procfile's web process does (``python -m config.web``: Daphne) on a free loopback port.

    A context manager yielding the port. Daphne inherits this process's environment: call
    :func:`django_setup` first, so both use the same settings and services.
    """
    port = free_port()
    command = [sys.executable, "-m", "config.web", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    return server_process(command, port=port, name="Daphne", timeout=timeout)

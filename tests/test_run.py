"""`make run`'s address: ``make run HOST=... PORT=...`` and ``PARLEY_HOST`` / ``PARLEY_PORT`` reach Daphne."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings

ROOT = Path(settings.BASE_DIR)


def make_exports(*args: str, **env: str) -> str:
    """Return ``PARLEY_HOST:PARLEY_PORT`` as the Makefile exports them to `make run`'s processes."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PARLEY_HOST", "PARLEY_PORT", "HOST", "PORT")}
    result = subprocess.run(  # noqa: S603 (make, with a target printing two variables)
        ["make", "-s", "--eval", "where: ; @echo $$PARLEY_HOST:$$PARLEY_PORT", "where", *args],  # noqa: S607
        cwd=ROOT,
        env=environment | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def test_make_run_takes_host_and_port_from_its_command_line_or_the_environment():
    assert make_exports("HOST=0.0.0.0", "PORT=8080") == "0.0.0.0:8080"
    assert make_exports(PARLEY_HOST="192.168.1.20", PARLEY_PORT="8081") == "192.168.1.20:8081"
    # PORT in the environment (set by many hosts and by honcho itself for other purposes) is not taken.
    assert make_exports(PORT="5000") == ":"


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def test_the_procfile_web_process_listens_on_parley_host_and_parley_port(tmp_path):
    """Daphne as `make run` starts it (honcho, the Procfile's web line), on 127.0.0.2, a port of its own."""
    host, port = "127.0.0.2", free_port("127.0.0.2")
    metrics = tmp_path / "metrics"  # the suite's own metrics directory stays the suite's
    metrics.mkdir()
    env = os.environ | {
        "PARLEY_HOST": host,
        "PARLEY_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # daphne, as make puts .venv/bin first
    }
    honcho = subprocess.Popen(  # noqa: S603 (our own interpreter and Procfile)
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "web"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: stopped whole below
    )
    try:
        deadline, response = time.monotonic() + 180, None
        while response is None:
            assert honcho.poll() is None, "honcho exited: the web process did not start"
            assert time.monotonic() < deadline, "Daphne did not answer"
            try:
                response = httpx.get(f"http://{host}:{port}/health/", headers={"Host": "localhost"}, timeout=5)
            except httpx.TransportError:
                time.sleep(0.5)
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        with socket.socket() as sock:  # the default address is not served
            assert sock.connect_ex(("127.0.0.1", port)) != 0
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(10)

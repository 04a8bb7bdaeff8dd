"""Production settings pass Django's deployment checklist with no warnings."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_production_settings_pass_check_deploy():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "parley.example.com",
    }
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.production", "DJANGO_ALLOWED_HOSTS": "x"}
    env.pop("DJANGO_SECRET_KEY", None)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def local_settings(data_dir: Path, **extra: str) -> dict:
    """Load ``config.settings.local`` in a fresh process; return its DEBUG and SECRET_KEY."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.local", "PARLEY_DATA_DIR": str(data_dir)}
    for name in ("DJANGO_DEBUG", "DJANGO_SECRET_KEY"):
        env.pop(name, None)
    env.update(extra)
    code = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.DEBUG, s.SECRET_KEY]))"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    debug, key = json.loads(result.stdout.strip().splitlines()[-1])
    return {"debug": debug, "secret_key": key}


def test_make_run_has_debug_off_and_a_secret_key_of_its_own_installation(tmp_path):
    first = local_settings(tmp_path / "one")
    assert first["debug"] is False
    assert len(first["secret_key"]) >= 50 and "not-for-production" not in first["secret_key"]
    key_file = tmp_path / "one" / "secret_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # Kept: every process and restart of the installation signs with the same key...
    assert local_settings(tmp_path / "one")["secret_key"] == first["secret_key"]
    # ...and another installation has another one.
    assert local_settings(tmp_path / "two")["secret_key"] != first["secret_key"]
    assert local_settings(tmp_path / "one", DJANGO_SECRET_KEY="from-the-environment")["secret_key"] == (
        "from-the-environment"
    )


def test_debug_is_on_only_when_asked_for(tmp_path):
    assert local_settings(tmp_path, DJANGO_DEBUG="true")["debug"] is True
    dev = subprocess.run(["make", "-n", "-p", "dev"], cwd=ROOT, capture_output=True, text=True)  # noqa: S607
    assert "dev: DJANGO_DEBUG = true" in dev.stdout

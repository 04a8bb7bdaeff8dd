"""A real OpenID Connect provider for the single-sign-on tests: npm's ``oidc-provider`` on Node.js.

``tests/oidc/provider.mjs`` runs it on a loopback port; ``make install-dev`` installs its pinned
packages (``tests/oidc/package-lock.json``, ``npm ci``). The tests change what it says (a user's
groups, a tampered ID token) between two sign-ins by rewriting its JSON file, which it reads on
every request. :func:`sign_in_code_flow` walks the authorization code flow as a browser would,
with a Django test client for Parley and an httpx client for the provider.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from html import unescape
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.servers import free_port, stop_process

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
CLIENT_ID = "parley-test"
CLIENT_SECRET = "parley-test-secret-1234"


class OIDCProvider:
    """One running provider: ``issuer``, and the JSON file it reads (clients, accounts, tamper mode)."""

    def __init__(self, *, redirect_uris: list[str]):
        if shutil.which("node") is None or not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.skip("Node.js or tests/oidc/node_modules is missing: `make install-dev` installs it (npm ci)")
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "provider.json"
        self.config = {
            "clients": [{"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "redirect_uris": redirect_uris}],
            "accounts": {},
            "tamper": "",
        }
        self._write()
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
            ["node", str(OIDC_DIR / "provider.mjs"), str(self.port), str(self.path)],  # noqa: S607
            cwd=OIDC_DIR,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"oidc-provider exited: {self.log.read().decode()[-3000:]}")
            try:
                if httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("oidc-provider did not start within 30 s")
            time.sleep(0.1)

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        tmp.replace(self.path)  # atomic: the provider never reads half a file

    def set_account(self, login: str, **claims) -> None:
        """Make ``login``'s claims (``email``, ``groups``, ``name``…) these, from the next request on."""
        self.config["accounts"][login] = claims
        self._write()

    def tamper(self, mode: str) -> None:
        """Alter the ID tokens it issues: ``wrong_aud``, ``wrong_iss``, ``unsigned``, ``bad_signature``; "" for none."""
        self.config["tamper"] = mode
        self._write()

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
        self._dir.cleanup()


def provider_settings(provider: OIDCProvider, *, provider_id: str = "testidp", name: str = "Test IdP") -> dict:
    """Return ``SOCIALACCOUNT_PROVIDERS`` for ``provider``, as ``OIDC_PROVIDERS`` / ``OIDC_<ID>_*`` would make it."""
    return {
        "openid_connect": {
            "OAUTH_PKCE_ENABLED": True,
            "APPS": [
                {
                    "provider_id": provider_id,
                    "name": name,
                    "client_id": CLIENT_ID,
                    "secret": CLIENT_SECRET,
                    "settings": {
                        "server_url": provider.issuer,
                        "scope": ["openid", "email", "profile", "groups"],
                        "fetch_userinfo": True,
                    },
                }
            ],
        }
    }


def _form(html: str) -> tuple[str, dict[str, str]]:
    """Return the action and the hidden fields of the first form of a page."""
    action = re.search(r'<form[^>]*action="([^"]+)"', html)
    assert action, html[:2000]
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))
    return unescape(action.group(1)), hidden


def sign_in_code_flow(client, provider: OIDCProvider, login: str, *, provider_id: str = "testidp"):
    """Sign in to Parley (Django test ``client``) as ``login`` at ``provider``, as a browser would.

    POST the login page's button, follow the redirect to the provider, submit its login form,
    follow its redirects back to Parley's callback, and return Parley's response to the callback
    (a redirect home on success, the refusal page otherwise). ``response.callback_url`` is the
    callback URL, to replay it.
    """
    response = client.post(f"/accounts/oidc/{provider_id}/login/")
    assert response.status_code == 302, response.content[:2000]
    url = response["Location"]
    assert url.startswith(provider.issuer), url
    with httpx.Client(timeout=10) as browser:
        while True:
            page = browser.get(url)
            if page.status_code in (302, 303):
                url = httpx.URL(url).join(page.headers["location"]).__str__()
                if not url.startswith(provider.issuer):
                    break
                continue
            assert page.status_code == 200, page.text[:2000]
            action, hidden = _form(page.text)
            page = browser.post(
                httpx.URL(url).join(action), data={**hidden, "login": login, "password": "any password"}
            )
            assert page.status_code in (302, 303), page.text[:2000]
            url = str(httpx.URL(url).join(page.headers["location"]))
            if not url.startswith(provider.issuer):
                break
    parts = urlsplit(url)
    callback = parts.path + ("?" + parts.query if parts.query else "")
    result = client.get(callback)
    result.callback_url = callback
    return result

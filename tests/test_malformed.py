"""Malformed request bodies (issue 20, item 9) against a real Daphne: a 4xx in the error shape, never a 5xx.

Before: deeply nested JSON was a ``RecursionError`` 500 on every JSON endpoint, NUL and lone
surrogates reached the database or the model, and a multipart body without a boundary got an empty
400 from Twisted (under Daphne) before Django saw it.
"""

import httpx
import pytest

from accounts.services import api_key_create
from chat.services import conversation_create
from conftest import clear_limits, make_user

pytestmark = pytest.mark.django_db(transaction=True)

JSON = "application/json"
BODIES = {
    "nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, JSON),
    "an object nested 50,000 deep": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, JSON),
    "unclosed brackets": (b"[" * 100_000, JSON),
    "NUL in a string": (b'{"content": "a\\u0000b", "model": "m", "input": "x", "username": "u\\u0000"}', JSON),
    "a lone surrogate": (b'{"content": "a\\ud800", "model": "m", "input": "\\udc00", "username": "u"}', JSON),
    "a lone surrogate in a key": (b'{"\\ud800": 1}', JSON),
    "invalid UTF-8": (b'{"content": "\xff\xfe"}', JSON),
    "truncated JSON": (b'{"content": "Hi"', JSON),
    "NaN": (b'{"content": "Hi", "temperature": NaN}', JSON),
    "multipart without a boundary": (b"--x\r\nabc", "multipart/form-data"),
    "multipart with an empty boundary": (b"--x\r\nabc", "multipart/form-data; boundary="),
}


def test_no_malformed_body_gets_a_5xx_and_every_error_has_the_api_shape(daphne_url, local_model):
    user = make_user("alice")
    key = api_key_create(user=user, name="corpus")[1]
    conversation = conversation_create(owner=user)
    endpoints = [
        ("/api/v1/auth/token/", False),  # anonymous
        ("/api/v1/auth/token/refresh/", False),
        ("/api/v1/conversations/", True),
        (f"/api/v1/conversations/{conversation.pk}/messages/", True),
        ("/api/v1/documents/", True),
        ("/api/v1/memories/", True),
        ("/v1/chat/completions", True),
        ("/v1/embeddings", True),
    ]
    seen = []
    with httpx.Client(base_url=daphne_url, timeout=60) as client:
        for path, authenticated in endpoints:
            for name, (body, content_type) in BODIES.items():
                headers = {"Content-Type": content_type}
                if authenticated:
                    headers["Authorization"] = f"Bearer {key}"
                clear_limits()  # the token endpoint allows 10 a minute per IP: count each body afresh
                response = client.post(path, content=body, headers=headers)
                where = f"{name} to {path}: {response.status_code} {response.content[:200]!r}"
                seen.append(response.status_code)
                assert 400 <= response.status_code < 500, where
                error = response.json()["error"]
                if path.startswith("/v1/"):  # OpenAI's shape
                    assert error["message"] and error["type"] == "invalid_request_error", where
                else:
                    assert error["detail"], where
                if "documents" not in path:  # the upload endpoint takes multipart only: 415 for JSON
                    assert response.status_code == 400 and error["code"] == "parse_error", where
    assert len(seen) == len(endpoints) * len(BODIES)

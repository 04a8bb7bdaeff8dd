"""The OpenAPI schema validates, documents every endpoint and the error shape, and its UIs work offline."""

import re

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_schema_validates_without_warnings(tmp_path):
    # --fail-on-warn raises on any warning or error of drf-spectacular; --validate checks it
    # against the OpenAPI 3 JSON schema.
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "openapi: 3" in (tmp_path / "schema.yaml").read_text()


def test_the_schema_documents_every_endpoint_and_the_error_shape():
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path, method in [
        ("/api/v1/auth/token/", "post"),
        ("/api/v1/auth/token/refresh/", "post"),
        ("/api/v1/me/", "get"),
        ("/api/v1/me/", "patch"),
        ("/api/v1/memories/", "get"),
        ("/api/v1/memories/", "post"),
        ("/api/v1/memories/", "delete"),
        ("/api/v1/memories/{memory_id}/", "get"),
        ("/api/v1/memories/{memory_id}/", "delete"),
        ("/api/v1/keys/", "get"),
        ("/api/v1/keys/", "post"),
        ("/api/v1/keys/{api_key_id}/", "delete"),
        ("/api/v1/conversations/", "get"),
        ("/api/v1/conversations/", "post"),
        ("/api/v1/conversations/{conversation_id}/messages/", "get"),
        ("/api/v1/conversations/{conversation_id}/messages/", "post"),
        ("/api/v1/conversations/{conversation_id}/", "get"),
        ("/api/v1/conversations/{conversation_id}/", "patch"),
        ("/api/v1/conversations/{conversation_id}/", "delete"),
        ("/api/v1/conversations/{conversation_id}/stop/", "post"),
        ("/api/v1/conversations/{conversation_id}/messages/{message_id}/regenerate/", "post"),
        ("/api/v1/conversations/{conversation_id}/messages/{message_id}/feedback/", "post"),
        ("/api/v1/models/", "get"),
        ("/api/v1/admin/model/info/", "get"),
        ("/api/v1/admin/sessions/count/", "get"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"

    error = schema["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["$ref"] == "#/components/schemas/ErrorBody"
    assert set(schema["components"]["schemas"]["ErrorBody"]["required"]) == {"code", "detail"}
    error_ref = {"$ref": "#/components/schemas/Error"}
    send = paths["/api/v1/conversations/{conversation_id}/messages/"]["post"]["responses"]
    for status in ("400", "401", "404", "413"):
        assert send[status]["content"]["application/json"]["schema"] == error_ref
    login = paths["/api/v1/auth/token/"]["post"]["responses"]
    assert "Retry-After" in login["429"]["headers"]
    assert {"apiKeyAuth", "jwtAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_the_docs_pages_load_their_assets_locally(page):
    response = Client().get(page)
    assert response.status_code == 200
    html = response.content.decode()
    # Swagger UI's start-up script comes from the page's own URL (?script=), not inline.
    for script in re.findall(r'src="(/api/docs/\?script=)"', html):
        html += Client().get(script).content.decode()
    assert "/api/schema/" in html
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/static/"), asset  # nothing from a CDN
        assert Client().get(asset).status_code == 200, asset
    # Nothing off-site at all (ReDoc's page linked Google Fonts), and no inline script (for the CSP).
    assert not re.search(r"(?:https?:)?//[a-z]", html), html
    assert not re.search(r"<script>", html), html


def test_sending_documents_both_the_json_answer_and_the_event_stream():
    paths = Client().get("/api/schema/?format=json").json()["paths"]
    for path, events in [
        ("/api/v1/conversations/{conversation_id}/messages/", ["message.created", "generation.started"]),
        ("/api/v1/conversations/{conversation_id}/messages/{message_id}/regenerate/", ["generation.started"]),
    ]:
        responses = paths[path]["post"]["responses"]
        assert list(responses["201"]["content"]) == ["application/json"]
        stream = responses["200"]["content"]
        assert list(stream) == ["text/event-stream"]  # JSON errors stay JSON-only
        (example,) = stream["text/event-stream"]["examples"].values()
        for event in [*events, "token", "generation.completed"]:
            assert f"event: {event}\n" in example["value"]
        assert all(list(r.get("content", {})) == ["application/json"] for code, r in responses.items() if code != "200")


def test_every_operation_has_request_and_response_examples():
    schema = Client().get("/api/schema/?format=json").json()
    missing = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            bodies = [("request", operation["requestBody"])] if "requestBody" in operation else []
            bodies += list(operation["responses"].items())
            for name, body in bodies:
                for media_type, content in body.get("content", {}).items():
                    if "example" not in content and not content.get("examples"):
                        missing.append(f"{method.upper()} {path} {name} {media_type}")
    assert not missing, missing

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
        ("/api/v1/keys/", "get"),
        ("/api/v1/keys/", "post"),
        ("/api/v1/keys/{api_key_id}/", "delete"),
        ("/api/v1/conversations/", "get"),
        ("/api/v1/conversations/", "post"),
        ("/api/v1/conversations/{conversation_id}/messages/", "get"),
        ("/api/v1/conversations/{conversation_id}/messages/", "post"),
        ("/api/v1/models/", "get"),
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
    assert "/api/schema/" in html
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/static/drf_spectacular_sidecar/"), asset  # nothing from a CDN
        assert Client().get(asset).status_code == 200, asset

"""One error shape for the API, whatever goes wrong: {"error": {"code", "detail", "fields"?}}."""

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.test import APIClient
from rest_framework.views import APIView

from config.urls import handler400, handler403, handler404, handler500  # noqa: F401 (this URLconf's handlers)
from config.urls import urlpatterns as config_urlpatterns

pytestmark = pytest.mark.django_db


class BoomApi(APIView):
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("boom")


def boom(request):
    raise RuntimeError("boom")


def forbidden(request):
    raise PermissionDenied


# The project's URLs and handlers, plus views that fail in ways no real endpoint should.
urlpatterns = [
    path("api/v1/test/boom/", BoomApi.as_view()),
    path("api/v1/test/forbidden/", forbidden),
    path("test/boom/", boom),
    *config_urlpatterns,
]


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["detail"], str) and body["error"]["detail"]
    return body["error"]


@pytest.fixture
def api(user):
    client = APIClient()
    client.force_login(user)
    return client


@pytest.mark.parametrize("url", ["/api/v1/no-such-thing/", "/api/nothing", "/v1/no-such-thing"])
def test_unknown_api_urls_are_404_in_the_error_shape(url):
    assert_error(Client().get(url), 404, "not_found")


def test_unknown_pages_elsewhere_stay_html():
    response = Client().get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_unsupported_method_is_405(api):
    response = api.delete("/api/v1/conversations/")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


def test_unsupported_media_type_is_415(api):
    response = api.post("/api/v1/conversations/", "title=Trip", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


def test_malformed_json_is_400_parse_error(api):
    response = api.post("/api/v1/conversations/", '{"title": "Trip"', content_type="application/json")
    assert_error(response, 400, "parse_error")


def test_validation_errors_name_their_fields(api):
    error = assert_error(api.post("/api/v1/conversations/", {"title": "x" * 201}, format="json"), 400, "invalid")
    assert list(error["fields"]) == ["title"]


def test_no_credentials_is_401_with_www_authenticate(db):
    response = APIClient().get("/api/v1/conversations/")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'


def test_a_session_without_csrf_token_is_403(user):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/api/v1/conversations/", {"title": "Trip"}, format="json")
    error = assert_error(response, 403, "permission_denied")
    assert "CSRF" in error["detail"]


@pytest.mark.urls(__name__)
def test_unhandled_exceptions_are_500_in_the_error_shape_under_api():
    client = Client(raise_request_exception=False)
    error = assert_error(client.get("/api/v1/test/boom/"), 500, "server_error")
    assert "boom" not in error["detail"]
    page = client.get("/test/boom/")
    assert page.status_code == 500
    assert page["Content-Type"].startswith("text/html")


@pytest.mark.urls(__name__)
def test_django_permission_denied_is_403_in_the_error_shape_under_api():
    assert_error(Client().get("/api/v1/test/forbidden/"), 403, "permission_denied")


def test_a_disallowed_host_is_400_in_the_error_shape_under_api(db):
    assert_error(Client().get("/api/v1/conversations/", HTTP_HOST="evil.example"), 400, "bad_request")

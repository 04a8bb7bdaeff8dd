"""The favicon: linked from every Parley page, and ``/favicon.ico`` for pages that link none."""

import re
import xml.etree.ElementTree as ET

import pytest

pytestmark = pytest.mark.django_db


def svg_icon(client, url: str) -> ET.Element:
    """GET ``url`` (a static file): return its parsed SVG root, after checking it is served as one."""
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("image/svg+xml")
    return ET.fromstring(b"".join(response.streaming_content))  # noqa: S314 (our own file)


def test_pages_link_the_svg_favicon(client):
    page = client.get("/login/").content.decode()
    [href] = re.findall(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', page)
    assert svg_icon(client, href).tag == "{http://www.w3.org/2000/svg}svg"


def test_favicon_ico_is_not_a_404(client):
    """The admin, Swagger UI and ReDoc link no icon of Parley's: browsers ask for /favicon.ico."""
    response = client.get("/favicon.ico")
    assert response.status_code == 302  # not permanent: the static file's hashed name changes with its content
    assert svg_icon(client, response["Location"]).find("{http://www.w3.org/2000/svg}title").text == "Parley"

"""The Content-Security-Policy holds and costs nothing: Chromium reports no violation on any page.

Issue 20, problem 11: there was no CSP. Each page is opened in Chromium with a listener for
``securitypolicyviolation`` events (and CSP console errors), doing what a user does there.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from chat.models import MessageStatus, Role
from chat.services import conversation_create
from conftest import make_user
from tests.factories import message_add

from .conftest import log_in

pytestmark = pytest.mark.django_db(transaction=True)

LISTEN = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile}:${e.lineNumber}`);
});
"""


def violations(page) -> list[str]:
    return page.evaluate("window.__csp") + [m for m in page.console_csp]


@pytest.fixture
def watched_page(csp_page):
    page = csp_page
    page.add_init_script(LISTEN)
    page.console_csp = []
    page.on(
        "console",
        lambda message: "Content Security Policy" in message.text and page.console_csp.append(message.text),
    )
    return page


def test_the_chat_ui_admin_and_api_docs_pass_the_csp(watched_page, live_server_url, user, local_model):
    page = watched_page
    operator = make_user("operator", is_staff=True, is_superuser=True)
    conversation = conversation_create(owner=user, title="Policy")
    message_add(conversation=conversation, role=Role.USER, content="Show code")
    message_add(
        conversation=conversation,
        role=Role.ASSISTANT,
        content="**Sure**:\n\n```python\nprint('hi')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |",
        status=MessageStatus.COMPLETE,
    )

    response = page.goto(f"{live_server_url}/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert not violations(page)

    log_in(page, live_server_url, user)
    page.goto(f"{live_server_url}/")
    page.wait_for_load_state("networkidle")
    assert not violations(page), page.url
    page.goto(f"{live_server_url}/c/{conversation.pk}/")
    page.wait_for_selector("#main[data-connected=true]")  # the WebSocket connected under the policy
    page.wait_for_selector(".message.assistant pre code")  # Markdown and highlighting ran
    assert not violations(page), page.url

    page.context.clear_cookies()
    log_in(page, live_server_url, operator)
    for path in (
        "/admin/",
        f"/admin/accounts/user/{user.pk}/change/",
        "/admin/chat/conversation/",
        "/admin/cache/",
        "/admin/metrics/",
        "/admin/spend/",
    ):
        page.goto(f"{live_server_url}{path}")
        page.wait_for_load_state("networkidle")
        assert not violations(page), page.url

    page.goto(f"{live_server_url}/api/docs/")
    page.wait_for_selector(".swagger-ui .info .title")  # Swagger UI rendered the schema
    page.wait_for_load_state("networkidle")
    assert not violations(page), page.url
    page.goto(f"{live_server_url}/api/redoc/")
    page.wait_for_selector("text=Parley API")  # ReDoc rendered the schema
    page.wait_for_load_state("networkidle")
    assert not violations(page), page.url

    # Nothing was fetched from anywhere but this server (fonts, scripts, validator badges).
    hosts = {urlsplit(url).hostname for url in page.requests if not url.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, hosts

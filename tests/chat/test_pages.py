import re

import pytest
from django.conf import settings as settings_module
from django.test import Client

from accounts.models import User
from chat.services import conversation_create, message_send

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a long new passphrase"  # noqa: S105 - a test account


def test_pages_redirect_anonymous_visitors_to_login(client, conversation):
    for url in ["/", f"/c/{conversation.pk}/"]:
        response = client.get(url)
        assert response.status_code == 302
        assert response.url.startswith("/login/?next=")


def test_login_page_logs_in(client, user):
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "alice", "password": "correct horse battery"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_new_chat_opens_an_empty_conversation(client, user, local_model):
    client.force_login(user)
    response = client.post("/c/new/")
    assert response.status_code == 302
    page = client.get(response.url)
    assert page.status_code == 200
    assert b'id="composer"' in page.content
    assert local_model.display_name.encode() in page.content


def test_chat_page_shows_the_history_as_data_not_markup(client, user, conversation):
    message_send(conversation=conversation, content="<script>alert(1)</script> hello")
    client.force_login(user)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in page
    assert "\\u003Cscript\\u003Ealert(1)\\u003C/script\\u003E hello" in page


def test_another_users_conversation_is_a_404(client, other_user, conversation):
    client.force_login(other_user)
    assert client.get(f"/c/{conversation.pk}/").status_code == 404


def test_home_lists_only_my_conversations(client, user, other_user, local_model):
    conversation_create(owner=user, title="Mine")
    conversation_create(owner=other_user, title="Theirs")
    client.force_login(user)
    page = client.get("/").content.decode()
    assert "Mine" in page and "Theirs" not in page


def test_logout(client, user):
    client.force_login(user)
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_admin_shows_conversations_with_their_messages(admin_client, conversation):
    message_send(conversation=conversation, content="Stored for the operator")
    assert admin_client.get("/admin/chat/conversation/").status_code == 200
    page = admin_client.get(f"/admin/chat/conversation/{conversation.pk}/change/")
    assert page.status_code == 200
    assert b"Stored for the operator" in page.content
    assert admin_client.get("/admin/chat/message/").status_code == 200
    assert admin_client.get("/admin/inference/modelconfig/").status_code == 200


@pytest.fixture
def signup_on(settings):
    settings.SIGNUP_ENABLED = True


def test_signup_is_off_by_default(client, db):
    assert client.get("/signup/").status_code == 404
    assert b"/signup/" not in client.get("/login/").content


def test_signup_creates_an_account_and_signs_in(client, db, signup_on):
    page = client.get("/signup/")
    assert page.status_code == 200
    assert b'name="password1"' in page.content
    response = client.post(
        "/signup/",
        {"username": "bob", "email": "bob@example.com", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD},
    )
    assert response.status_code == 302
    assert client.get("/").status_code == 200  # signed in
    assert User.objects.get(username="bob").check_password(NEW_PASSWORD)


def test_with_approval_a_new_account_waits_inactive_until_an_operator_approves_it(client, db, signup_on, settings):
    settings.SIGNUP_APPROVAL = True
    form = {"username": "bob", "email": "bob@example.com", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD}
    response = client.post("/signup/", form)
    assert response.status_code == 200
    assert b"awaits an operator" in response.content
    assert client.get("/").status_code == 302  # not signed in
    bob = User.objects.get(username="bob")
    assert not bob.is_active
    assert client.post("/login/", {"username": "bob", "password": NEW_PASSWORD}).status_code == 200  # refused
    bob.is_active = True
    bob.save(update_fields=["is_active"])
    assert client.post("/login/", {"username": "bob", "password": NEW_PASSWORD}).status_code == 302


def test_signup_rejects_a_weak_or_mismatched_password(client, db, signup_on):
    response = client.post("/signup/", {"username": "bob", "password1": "123", "password2": "123"})
    assert response.status_code == 200
    assert b"too short" in response.content
    response = client.post("/signup/", {"username": "bob", "password1": NEW_PASSWORD, "password2": "other"})
    assert b"didn\xe2\x80\x99t match" in response.content or b"didn't match" in response.content
    assert not User.objects.filter(username="bob").exists()


def test_signup_can_be_switched_off(client, db, settings):
    settings.SIGNUP_ENABLED = False
    assert client.get("/signup/").status_code == 404
    response = client.post("/signup/", {"username": "bob", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert response.status_code == 404
    assert not User.objects.filter(username="bob").exists()
    assert b"/signup/" not in client.get("/login/").content
    settings.SIGNUP_ENABLED = True
    assert b"/signup/" in client.get("/login/").content


def test_password_change(client, user):
    client.force_login(user)
    assert client.get("/password/").status_code == 200
    response = client.post(
        "/password/",
        {"old_password": "correct horse battery", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
    )
    assert response.status_code == 302 and response.url == "/password/done/"
    assert client.get("/").status_code == 200  # this session stays signed in
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_password_change_needs_the_old_password(client, user):
    client.force_login(user)
    response = client.post(
        "/password/", {"old_password": "wrong", "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
    )
    assert response.status_code == 200
    user.refresh_from_db()
    assert user.check_password("correct horse battery")


def test_logout_is_post_only(client, user):
    client.force_login(user)
    assert client.get("/logout/").status_code == 405
    assert client.get("/").status_code == 200


def test_chat_page_loads_vendored_libraries_from_this_server(client, user, conversation):
    client.force_login(user)
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    for name in ["marked.umd.js", "purify.min.js", "highlight.min.js", "render.js", "chat.js"]:
        assert re.search(rf'src="/static/[\w/.-]*{re.escape(name)}"', page)
    # No CDN: every script and stylesheet comes from /static/.
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page)
    vendor = settings_module.BASE_DIR / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    for library, version in [("marked", "18.2.1"), ("dompurify", "3.4.18"), ("highlight.js", "11.12.0")]:
        assert library in readme and version in readme
    for license_file in ["marked.LICENSE", "dompurify.LICENSE", "highlight.js.LICENSE"]:
        assert (vendor / license_file).stat().st_size > 500


def test_signups_are_limited_per_address(client, db, signup_on, settings):
    settings.RATE_LIMIT_SIGNUP = "3/hour"
    for n in range(3):
        password = f"{NEW_PASSWORD}{n}"
        answer = Client().post("/signup/", {"username": f"bot{n}", "password1": password, "password2": password})
        assert answer.status_code == 302
    refused = client.post("/signup/", {"username": "bot9", "password1": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 3600
    assert b"Too many sign-ups from your address" in refused.content
    assert not User.objects.filter(username="bot9").exists()
    assert User.objects.filter(username__startswith="bot").count() == 3

import re

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as settings_module
from django.test import AsyncClient, Client
from django.utils.html import escape

from accounts.models import User
from chat import turns
from chat.models import Conversation, Message, MessageStatus, Role
from chat.services import conversation_create, message_send
from conftest import make_user
from inference.models import ModelConfig

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "a long new passphrase"  # noqa: S105 - a test account
TURN_TIMEOUT = 120  # seconds: a cold model load and a whole answer of the bundled model take far less


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


def test_home_is_the_composer_with_the_model_picker_and_the_sidebar(client, user, local_model):
    ModelConfig.objects.create(slug="second", display_name="Second model", model=local_model.model)
    ModelConfig.objects.create(slug="off", display_name="Switched off", model=local_model.model, is_enabled=False)
    conversation_create(owner=user, title="An older chat")
    client.force_login(user)
    page = client.get("/").content.decode()
    composer = re.search(r'<form id="composer"[^>]*>', page).group(0)
    assert 'method="post"' in composer and 'action="/"' in composer
    assert 'name="csrfmiddlewaretoken"' in page
    assert re.search(r'<textarea id="prompt" name="content"', page)
    # The same choices as on a conversation page: the enabled models, the default selected.
    options = re.findall(r'<option value="([\w-]+)"( selected)?>', page)
    assert options == [("smollm2-135m", " selected"), ("second", "")]
    assert "Switched off" not in page
    # The sidebar, with the user's conversations and search, and the composer's script.
    assert "An older chat" in page and 'id="conversation-search"' in page
    assert re.search(r'src="/static/[\w/.-]*composer\.js"', page)


def test_visiting_home_and_new_chat_stores_no_conversation(client, user, local_model):
    client.force_login(user)
    home = client.get("/").content.decode()
    new_chat = re.search(r'<a class="new-chat" id="new-chat" href="([^"]+)"', home).group(1)
    assert new_chat == "/"
    for _ in range(3):
        assert client.get(new_chat).status_code == 200
    conversation = conversation_create(owner=user, title="Open")
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert re.search(r'<a class="new-chat" id="new-chat" href="/">', page)
    assert client.post("/c/new/").status_code == 404  # the old "store an empty conversation" action is gone
    assert list(Conversation.objects.all()) == [conversation]


@pytest.mark.parametrize("content", ["", "   \n\t "])
def test_an_empty_first_message_is_refused_and_nothing_is_stored(client, user, local_model, content):
    client.force_login(user)
    response = client.post("/", {"content": content, "model": ""})
    assert response.status_code == 400
    page = response.content.decode()
    assert re.search(r'role="alert"><span>The message is empty\.</span>', page)
    assert 'id="composer"' in page
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_an_over_long_first_message_gets_the_conversations_error_and_is_kept(client, user, local_model, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    content = "<b>eleven chars</b>"
    client.force_login(user)
    conversation = conversation_create(owner=user)
    in_a_conversation = client.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": content}, content_type="application/json"
    )
    assert in_a_conversation.status_code == 413
    conversation.delete()
    response = client.post("/", {"content": content, "model": "smollm2-135m"})
    assert response.status_code == 413
    page = response.content.decode()
    assert escape(in_a_conversation.json()["error"]["detail"]) in page
    assert "&lt;b&gt;eleven chars&lt;/b&gt;</textarea>" in page  # the text is given back, as text
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_an_unknown_model_stores_nothing(client, user, local_model):
    client.force_login(user)
    response = client.post("/", {"content": "Hello", "model": "no-such-model"})
    assert response.status_code == 400
    assert "No enabled model" in response.content.decode()
    assert not Conversation.objects.exists() and not Message.objects.exists()


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({"content": "Hello\x00there", "model": ""}, "Null characters are not allowed."),
        ({"content": "Hello", "model": "no such/model"}, "Enter a valid “slug”"),
        ({"content": "Hello", "model": "smoll\x00m"}, "Null characters are not allowed."),
    ],
)
def test_a_first_message_that_cannot_be_stored_is_a_400_not_an_error_page(client, user, local_model, form, reason):
    client.force_login(user)
    response = client.post("/", form)
    assert response.status_code == 400
    assert reason in response.content.decode()
    assert not Conversation.objects.exists()


def test_anonymous_visitors_cannot_start_a_conversation(client, local_model):
    response = client.post("/", {"content": "Hello"})
    assert response.status_code == 302 and response.url.startswith("/login/")
    assert not Conversation.objects.exists()


async def start_conversation(user, **form):
    """Post the home composer as ``user``; return the response once the answer it started is stored."""
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.post("/", form)
    assert await turns.turns_drain(timeout=TURN_TIMEOUT) == 0
    return response


@pytest.mark.django_db(transaction=True)
async def test_the_first_message_creates_one_conversation_and_its_answer(local_model):
    user = await database_sync_to_async(make_user)("alice")
    question = "What is the capital of France?"
    response = await start_conversation(user, content=question, model="")
    conversation = await Conversation.objects.select_related("model").aget()
    assert response.status_code == 302 and response.url == f"/c/{conversation.pk}/"
    assert conversation.owner_id == user.pk
    assert conversation.title == question
    assert conversation.model.slug == "smollm2-135m"  # the default
    messages = [m async for m in Message.objects.filter(conversation=conversation).order_by("created_at")]
    assert [(m.role, m.content) for m in messages[:1]] == [(Role.USER, question)]
    assert len(messages) == 2
    answer = messages[1]
    assert answer.role == Role.ASSISTANT and answer.status == MessageStatus.COMPLETE and answer.content.strip()

    # Its page shows the exchange.
    client = AsyncClient()
    await client.aforce_login(user)
    page = (await client.get(response.url)).content.decode()
    assert question in page and str(answer.pk) in page


@pytest.mark.django_db(transaction=True)
async def test_the_model_chosen_on_home_is_the_conversations_model(local_model):
    second = await ModelConfig.objects.acreate(slug="second", display_name="Second", model=local_model.model)
    user = await database_sync_to_async(make_user)("alice")
    response = await start_conversation(user, content="Hi", model="second")
    assert response.status_code == 302
    conversation = await Conversation.objects.aget()
    assert conversation.model_id == second.pk
    answer = await Message.objects.aget(conversation=conversation, role=Role.ASSISTANT)
    assert answer.model_slug == "second" and answer.status == MessageStatus.COMPLETE


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

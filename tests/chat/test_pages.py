import pytest

from chat.services import conversation_create, message_send

pytestmark = pytest.mark.django_db


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

"""The settings page (/settings/): memory on or off, the user's memories, adding and deleting them."""

import pytest
from django.test import Client

from agents.models import Memory, MemoryKind
from agents.services import MEMORY_NOTE_MAX_CHARS, memory_exchange_store, memory_note_create
from chat.models import Message, MessageStatus, Role
from chat.services import conversation_create

pytestmark = pytest.mark.django_db


def logged_in(user, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


def exchange(owner, *, title="Trip planning", question="Where am I going?", answer="To Lisbon."):
    conversation = conversation_create(owner=owner, title=title)
    Message.objects.create(conversation=conversation, role=Role.USER, content=question)
    reply = Message.objects.create(
        conversation=conversation, role=Role.ASSISTANT, content=answer, status=MessageStatus.COMPLETE
    )
    return memory_exchange_store(
        owner_id=owner.pk, conversation_id=conversation.pk, message_id=reply.pk, question=question, answer=answer
    )


def test_anonymous_visitors_are_sent_to_log_in(client):
    for url in ["/settings/"]:
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith("/login/?next=")
    response = client.post("/settings/memory/", {"memory_enabled": "on"})
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_every_page_links_to_the_settings(user, local_model):
    assert 'href="/settings/"' in logged_in(user).get("/").content.decode()


def test_the_page_lists_my_memories_with_kind_date_and_conversation_only_mine(user, other_user, local_model):
    mine = exchange(user)
    memory_note_create(owner=user, content="I prefer metric units.")
    exchange(other_user, title="Secret plans", question="Their question?", answer="Their answer.")
    page = logged_in(user).get("/settings/").content.decode()
    assert "Memory is off." in page and "Turn memory on" in page
    assert "Your memories (2)" in page
    assert "I prefer metric units." in page and "Your note" in page
    assert "Where am I going?" in page and "Question and answer" in page
    assert f'href="{mine.conversation.get_absolute_url()}">Trip planning</a>' in page
    assert "Their question?" not in page and "Secret plans" not in page


def test_memory_content_is_shown_as_text_not_markup(user, local_model):
    memory_note_create(owner=user, content="<script>alert(1)</script>")
    page = logged_in(user).get("/settings/").content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_turning_memory_on_and_off(user):
    client = logged_in(user)
    response = client.post("/settings/memory/", {"memory_enabled": "on"}, follow=True)
    user.refresh_from_db()
    assert user.memory_enabled is True
    page = response.content.decode()
    assert "Memory is on." in page and "Turn memory off" in page

    client.post("/settings/memory/", {"memory_enabled": "off"})
    user.refresh_from_db()
    assert user.memory_enabled is False


def test_a_bad_toggle_value_is_a_400_and_changes_nothing(user):
    assert logged_in(user).post("/settings/memory/", {"memory_enabled": "maybe"}).status_code == 400
    user.refresh_from_db()
    assert user.memory_enabled is False


def test_forms_need_the_csrf_token(user, local_model):
    memory = exchange(user)
    client = logged_in(user, csrf=True)
    assert client.post("/settings/memory/", {"memory_enabled": "on"}).status_code == 403
    assert client.post("/settings/memories/", {"content": "Remember me"}).status_code == 403
    assert client.post(f"/settings/memories/{memory.pk}/delete/").status_code == 403
    assert client.post("/settings/memories/delete/").status_code == 403
    user.refresh_from_db()
    assert user.memory_enabled is False and list(Memory.objects.all()) == [memory]

    # With the token the page's forms carry, they work.
    page = client.get("/settings/")
    token = page.cookies["csrftoken"].value
    assert client.post("/settings/memory/", {"memory_enabled": "on", "csrfmiddlewaretoken": token}).status_code == 302


def test_adding_a_memory_in_my_own_words(user):
    response = logged_in(user).post("/settings/memories/", {"content": "  I prefer metric units. "}, follow=True)
    note = Memory.objects.get(owner=user)
    assert (note.kind, note.content, note.conversation_id) == (MemoryKind.NOTE, "I prefer metric units.", None)
    assert len(note.embedding) == 384
    page = response.content.decode()
    assert "Stored; recalled once memory is on." in page and "I prefer metric units." in page


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        ("x" * (MEMORY_NOTE_MAX_CHARS + 1), "at most"),
    ],
    ids=["empty", "whitespace", "too long"],
)
def test_a_bad_note_shows_the_form_again_with_its_error(user, content, error):
    response = logged_in(user).post("/settings/memories/", {"content": content})
    assert response.status_code == 400
    assert error in response.content.decode()
    assert not Memory.objects.exists()


def test_deleting_one_memory_and_never_someone_elses(user, other_user, local_model):
    mine, kept = exchange(user), exchange(user, question="My dog?", answer="Rex.")
    theirs = exchange(other_user)
    client = logged_in(user)
    assert client.post(f"/settings/memories/{theirs.pk}/delete/").status_code == 404
    assert Memory.objects.filter(pk=theirs.pk).exists()
    response = client.post(f"/settings/memories/{mine.pk}/delete/")
    assert response.status_code == 302 and response.url == "/settings/#memories"
    assert set(Memory.objects.values_list("pk", flat=True)) == {kept.pk, theirs.pk}


def test_deleting_all_my_memories(user, other_user, local_model):
    exchange(user)
    memory_note_create(owner=user, content="I am vegetarian.")
    theirs = exchange(other_user)
    response = logged_in(user).post("/settings/memories/delete/", follow=True)
    assert "Deleted 2 memories." in response.content.decode()
    assert list(Memory.objects.values_list("pk", flat=True)) == [theirs.pk]
    assert "No memories yet." in response.content.decode()


def test_the_forms_take_post_only(user, local_model):
    memory = exchange(user)
    client = logged_in(user)
    for url in ["/settings/memory/", "/settings/memories/", "/settings/memories/delete/"]:
        assert client.get(url).status_code == 405
    assert client.get(f"/settings/memories/{memory.pk}/delete/").status_code == 405
    assert Memory.objects.filter(pk=memory.pk).exists()


def test_memories_come_fifty_a_page(user):
    for n in range(51):
        memory_note_create(owner=user, content=f"Note number {n}")
    client = logged_in(user)
    first = client.get("/settings/").content.decode()
    assert "Note number 50" in first and "Note number 0<" not in first and "Page 1 of 2" in first
    second = client.get("/settings/?page=2").content.decode()
    assert "Note number 0<" in second and "Note number 50" not in second

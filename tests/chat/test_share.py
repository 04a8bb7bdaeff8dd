"""Share links: a read-only snapshot at /s/<token>/, owner-scoped REST, the "Shared" page, continue, admin."""

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import AuditEvent
from chat.models import Conversation, MessageStatus, Role, SharedConversation
from chat.services import conversation_create, conversation_delete, share_create
from conftest import make_user
from tests.factories import message_add

pytestmark = pytest.mark.django_db

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=1</script>'


@pytest.fixture
def chat(user):
    """alice's conversation: a question, a failed answer, then a finished answer."""
    conversation = conversation_create(owner=user, title="Trip to Lyon")
    message_add(conversation=conversation, role=Role.USER, content="Where should I eat in Lyon?")
    message_add(conversation=conversation, role=Role.ASSISTANT, status=MessageStatus.ERROR, error="model crashed")
    message_add(
        conversation=conversation,
        role=Role.ASSISTANT,
        content="Try a **bouchon** in the old town.",
        model_slug="smollm2-135m",
    )
    return conversation


def api(user=None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


def browser(user=None) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def token_of(url: str) -> str:
    return re.search(r"/s/([^/]+)/$", url).group(1)


def test_owner_creates_lists_and_revokes_a_link_over_rest_and_nobody_else_can(user, chat):
    owner, other = api(user), api(make_user("bob"))

    created = owner.post(f"/api/v1/conversations/{chat.pk}/shares/", {"expires_in_days": 7}, format="json")
    assert created.status_code == 201, created.content
    share = created.json()
    assert share["url"].startswith("http://testserver/s/")
    assert share["active"] is True
    assert share["message_count"] == 2  # the failed answer is left out
    assert share["conversation"] == str(chat.pk)
    assert (
        timedelta(days=6, hours=23) < SharedConversation.objects.get().expires_at - timezone.now() <= timedelta(days=7)
    )
    assert [s["id"] for s in owner.get("/api/v1/shares/").json()["results"]] == [share["id"]]

    # Another user neither sees, nor revokes, nor shares alice's: 404, as for anything of hers.
    assert other.get("/api/v1/shares/").json()["results"] == []
    assert other.get(f"/api/v1/shares/{share['id']}/").status_code == 404
    assert other.delete(f"/api/v1/shares/{share['id']}/").status_code == 404
    assert other.post(f"/api/v1/conversations/{chat.pk}/shares/", {}, format="json").status_code == 404
    link = "/s/" + token_of(share["url"]) + "/"
    assert browser(make_user("carol")).get(link).status_code == 200  # reading the link is for anyone logged in

    assert owner.delete(f"/api/v1/shares/{share['id']}/").status_code == 204
    assert browser(user).get(link).status_code == 404
    listed = owner.get(f"/api/v1/shares/{share['id']}/").json()
    assert listed["active"] is False and listed["revoked_at"] is not None
    assert owner.delete(f"/api/v1/shares/{share['id']}/").status_code == 204  # again: nothing changes

    events = AuditEvent.objects.filter(target_type="chat.sharedconversation").order_by("created")
    assert [(e.action, e.actor) for e in events] == [("share.create", user), ("share.revoke", user)]
    assert not any(token_of(share["url"]) in str(e.changes) + e.target_label for e in events)


def test_a_conversation_with_nothing_finished_or_a_bad_expiry_is_refused_in_the_error_shape(user, chat):
    empty = conversation_create(owner=user, title="Empty")
    response = api(user).post(f"/api/v1/conversations/{empty.pk}/shares/", {}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "nothing_to_share"
    response = api(user).post(f"/api/v1/conversations/{chat.pk}/shares/", {"expires_in_days": 0}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert not SharedConversation.objects.exists()


def test_the_shared_page_is_a_snapshot_that_later_changes_do_not_touch(user, chat):
    share = share_create(conversation=chat)
    first = browser(user).get(share.get_absolute_url()).content.decode()

    # The conversation goes on, is renamed, loses a message, and is finally deleted.
    message_add(conversation=chat, role=Role.USER, content="And a museum?")
    chat.messages.filter(content__startswith="Try a").update(content="edited away")
    chat.title = "Renamed"
    chat.save(update_fields=["title"])
    chat.messages.filter(role=Role.USER).first().delete()
    after_edits = browser(user).get(share.get_absolute_url()).content.decode()
    conversation_delete(conversation=chat)
    after_delete = browser(user).get(share.get_absolute_url())

    for page in (first, after_edits, after_delete.content.decode()):
        assert "Where should I eat in Lyon?" in page
        assert "Try a **bouchon** in the old town." in page
        assert "Trip to Lyon" in page
        assert "And a museum?" not in page and "edited away" not in page and "Renamed" not in page
    assert after_delete.status_code == 200


def test_unknown_revoked_and_expired_links_are_the_same_404(user, chat):
    revoked, expired = share_create(conversation=chat), share_create(conversation=chat, expires_in_days=1)
    api(user).delete(f"/api/v1/shares/{revoked.pk}/")
    past = timezone.now() - timedelta(days=3)
    SharedConversation.objects.filter(pk=expired.pk).update(created_at=past, expires_at=past + timedelta(days=1))

    visitor = browser(make_user("bob"))
    pages = [visitor.get(f"/s/{token}/") for token in ("no-such-token", revoked.token, expired.token)]
    assert [p.status_code for p in pages] == [404, 404, 404]
    # Identical but for the logout form's CSRF token, which is masked afresh on every page.
    bodies = {re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", p.content) for p in pages}
    assert len(bodies) == 1
    assert b"Trip to Lyon" not in pages[1].content
    assert visitor.post(f"/s/{expired.token}/continue/").status_code == 404
    assert Conversation.objects.filter(owner__username="bob").count() == 0


def test_share_public_off_sends_anonymous_visitors_to_log_in_first(user, chat, settings):
    settings.SHARE_PUBLIC = False
    share = share_create(conversation=chat)
    for path in (share.get_absolute_url(), "/s/no-such-token/"):  # the same for both: nothing told
        response = browser().get(path)
        assert response.status_code == 302
        assert response.url == f"/login/?next={path}"
    assert "Try a **bouchon**" in browser(make_user("bob")).get(share.get_absolute_url()).content.decode()


def test_share_public_on_shows_the_snapshot_without_login_and_never_lets_it_be_indexed(user, chat, settings):
    settings.SHARE_PUBLIC = True
    share = share_create(conversation=chat)
    response = browser().get(share.get_absolute_url())
    assert response.status_code == 200
    page = response.content.decode()
    assert "Try a **bouchon** in the old town." in page
    assert '<meta name="robots" content="noindex, nofollow">' in page
    assert response["X-Robots-Tag"] == "noindex, nofollow"
    assert response["Referrer-Policy"] == "no-referrer"
    assert "Log in to continue this chat" in page
    # No way to another conversation: not the source's id, nor any /c/ link.
    assert str(chat.pk) not in page and "/c/" not in page
    missing = browser().get("/s/no-such-token/")
    assert missing.status_code == 404 and missing["X-Robots-Tag"] == "noindex, nofollow"


def test_html_in_a_shared_message_reaches_the_page_only_as_escaped_data(user, settings):
    settings.SHARE_PUBLIC = True
    conversation = conversation_create(owner=user, title=XSS)
    message_add(conversation=conversation, role=Role.USER, content=XSS)
    message_add(conversation=conversation, role=Role.ASSISTANT, content=XSS)
    page = browser().get(share_create(conversation=conversation).get_absolute_url()).content.decode()
    assert "<script>window.__xss" not in page and "<img src=x" not in page
    # The messages are JSON data for static/js/shared.js, which renders them with the chat's sanitiser.
    assert "\\u003Cimg src=x onerror" in page
    assert "js/render." in page


def test_continue_copies_the_snapshot_into_a_new_conversation_of_the_visitor(user, chat, settings):
    settings.SHARE_PUBLIC = True
    share = share_create(conversation=chat)
    bob = make_user("bob")

    anonymous = browser().post(f"/s/{share.token}/continue/")
    assert anonymous.status_code == 302 and anonymous.url.startswith("/login/?next=")

    response = browser(bob).post(f"/s/{share.token}/continue/")
    copy = Conversation.objects.get(owner=bob)
    assert response.status_code == 302 and response.url == f"/c/{copy.pk}/"
    assert copy.title == "Trip to Lyon"
    rows = list(copy.messages.order_by("created_at").values_list("role", "content", "model_slug", "status"))
    assert rows == [
        ("user", "Where should I eat in Lyon?", "", "complete"),
        ("assistant", "Try a **bouchon** in the old town.", "smollm2-135m", "complete"),
    ]
    # bob's copy is his own page; alice's conversation is untouched and still not his.
    assert browser(bob).get(f"/c/{copy.pk}/").status_code == 200
    assert browser(bob).get(f"/c/{chat.pk}/").status_code == 404
    assert chat.messages.count() == 3


def test_the_shared_page_lists_the_owners_links_and_revokes_one(user, chat):
    share = share_create(conversation=chat)
    bobs = conversation_create(owner=make_user("bob"), title="Bob's")
    message_add(conversation=bobs, role=Role.USER, content="x")
    other_share = share_create(conversation=bobs)

    alice = browser(user)
    page = alice.get("/shared/").content.decode()
    assert share.get_absolute_url() in page and "Trip to Lyon" in page
    assert other_share.token not in page
    assert alice.post(f"/shared/{other_share.pk}/revoke/").status_code == 404
    response = alice.post(f"/shared/{share.pk}/revoke/", follow=True)
    assert "Link revoked" in response.content.decode() and "Revoked" in response.content.decode()
    assert alice.get(share.get_absolute_url()).status_code == 404
    other_share.refresh_from_db()
    assert other_share.revoked_at is None


def test_admin_lists_links_with_their_snapshot_and_revokes_them_audited(admin_client, user, chat):
    share = share_create(conversation=chat)
    listing = admin_client.get("/admin/chat/sharedconversation/")
    assert listing.status_code == 200 and "Trip to Lyon" in listing.content.decode()
    detail = admin_client.get(f"/admin/chat/sharedconversation/{share.pk}/change/").content.decode()
    assert "Try a **bouchon** in the old town." in detail
    assert share.token not in detail  # an operator revokes a link without being able to open it

    response = admin_client.post(
        "/admin/chat/sharedconversation/",
        {"action": "revoke", "_selected_action": [str(share.pk)]},
        follow=True,
    )
    assert "Revoked 1 share link." in response.content.decode()
    share.refresh_from_db()
    assert share.revoked_at is not None
    revoke = AuditEvent.objects.get(action="share.revoke")
    assert revoke.actor.username == "admin" and revoke.target_id == str(share.pk)

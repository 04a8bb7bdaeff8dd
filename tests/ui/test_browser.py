"""The chat in a real browser: the home composer, streaming, stop, history, and that no payload runs script.

Sync Playwright in plain (not async) tests: its sync API refuses to run inside a running event loop.
"""

from __future__ import annotations

import re
import time

import pytest
from django.conf import settings

from chat.models import Conversation, Feedback, Message, MessageStatus, Role
from chat.services import conversation_create
from inference.models import ModelConfig, Provider
from tests.factories import message_add
from tests.servers import ScriptedServer

from .conftest import log_in
from .xss_payloads import EXTERNAL_IMAGES, PAYLOADS

pytestmark = pytest.mark.django_db(transaction=True)

ANSWER = ".message.assistant .content"


def wait_connected(page) -> None:
    page.wait_for_selector("#main[data-connected=true]")


def test_login_then_the_first_message_on_home_streams_its_answer_and_stop_keeps_it(
    browser_page, live_server_url, user, local_model
):
    page = browser_page
    page.goto(live_server_url + "/")
    assert "/login/" in page.url
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(live_server_url + "/")  # the home page is the composer
    composer = page.get_by_label("Message")
    assert page.evaluate("document.activeElement.id") == "prompt"
    assert page.get_by_label("Model").input_value() == "smollm2-135m"

    # An empty message goes nowhere: a note, no conversation.
    composer.press("Enter")
    assert page.locator("#status").text_content() == "The message is empty."
    assert page.url == live_server_url + "/"
    assert not Conversation.objects.exists()

    # The first message creates the conversation and moves there; its answer streams on that page.
    question = "Write a long story about a brave knight who fights a dragon, with many details."
    composer.fill(question)
    composer.press("Enter")
    page.wait_for_url(re.compile(r"/c/[0-9a-f-]+/$"))
    conversation = Conversation.objects.get()
    assert page.url == f"{live_server_url}/c/{conversation.pk}/"
    assert conversation.model == local_model
    assert page.locator(".message.user .content").inner_text() == question
    assert page.get_by_label("Message").input_value() == ""

    # The answer grows token by token: collect distinct snapshots of its text while it streams.
    snapshots: list[str] = []
    deadline = time.monotonic() + 60
    while len(snapshots) < 3 and time.monotonic() < deadline:
        text = page.evaluate(f"document.querySelector('{ANSWER}')?.textContent || ''")
        if text.strip() and (not snapshots or text != snapshots[-1]):
            snapshots.append(text)
        time.sleep(0.02)
    assert len(snapshots) >= 3, snapshots
    # (Markdown can shorten the text when a construct closes, e.g. "**bold" -> "bold": compare ends.)
    assert len(snapshots[0]) < len(snapshots[-1])
    assert page.get_by_role("button", name="Stop").is_visible()

    page.keyboard.press("Escape")  # Esc stops, like the Stop button
    page.wait_for_selector(".message.assistant[data-status=cancelled]")
    partial = page.locator(ANSWER).text_content()
    assert partial.strip().startswith(snapshots[0].strip()[:10]) and len(partial) >= len(snapshots[0])
    assert "Stopped" in page.locator(".message.assistant .meta").text_content()
    assert page.get_by_role("button", name="Send").is_visible()

    page.reload()
    page.wait_for_selector(".message.assistant[data-status=cancelled]")
    assert page.locator(".message.user .content").text_content() == question
    assert page.locator(ANSWER).text_content() == partial
    # The sidebar lists the conversation under the title taken from the question.
    assert page.locator("#conversations a[aria-current=page]").text_content().startswith("Write a long story")

    # "+ New chat" opens the empty composer again, and stores nothing.
    page.get_by_role("link", name="+ New chat").click()
    page.wait_for_url(live_server_url + "/")
    assert page.get_by_label("Message").input_value() == ""
    assert list(Conversation.objects.all()) == [conversation]


# Every distinct text the (first) answer shows, in order: window.__answers.
RECORD_ANSWER = """
window.__answers = [];
new MutationObserver(() => {
  const el = document.querySelector('.message.assistant .content');
  const text = el ? el.textContent : null;
  if (text !== null && text !== window.__answers[window.__answers.length - 1]) window.__answers.push(text);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def test_an_answer_already_streaming_when_its_page_opens_streams_on_without_gaps(
    browser_page, live_server_url, user, local_model
):
    # A slow model: its answer to the first message, sent from the home page, is still streaming
    # when the browser lands on the conversation page, which joins it midway.
    words = tuple(f" word{n:02d}" for n in range(60))
    with ScriptedServer(["ok"], words=words, word_delay=0.1) as server:
        ModelConfig.objects.create(
            slug="scripted",
            display_name="Scripted",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
        )
        page = browser_page
        log_in(page, live_server_url, user)
        page.add_init_script(RECORD_ANSWER)
        page.goto(live_server_url + "/")
        page.get_by_label("Model").select_option("scripted")
        page.get_by_label("Message").fill("Count for me")
        page.get_by_label("Message").press("Enter")
        page.wait_for_url(re.compile(r"/c/[0-9a-f-]+/$"))
        page.wait_for_selector(".message.assistant[data-status=complete]")
    answer = "".join(words).strip()
    assert page.locator(ANSWER).text_content().strip() == answer
    assert Conversation.objects.get().model.slug == "scripted"
    shown = [text.strip() for text in page.evaluate("window.__answers")]
    assert len(shown) >= 3, shown  # it grew on the page, not all at once
    # Each text shown on the way was the answer's beginning: nothing repeated, skipped or out of order.
    assert [text for text in shown if not answer.startswith(text)] == []
    assert shown == sorted(shown, key=len)


def test_a_refused_first_message_comes_back_with_the_reason(browser_page, live_server_url, user, local_model):
    too_long = "x" * (settings.CHAT_MAX_MESSAGE_CHARS + 1)
    page = browser_page
    log_in(page, live_server_url, user)
    page.goto(live_server_url + "/")
    page.get_by_label("Message").fill(too_long)
    page.get_by_label("Message").press("Enter")
    page.wait_for_selector("#composer-error")
    assert page.url == live_server_url + "/"
    assert "characters long; the limit is" in page.locator("#composer-error").text_content()
    assert page.get_by_label("Message").input_value() == too_long  # nothing typed is lost
    assert not Conversation.objects.exists()


def xss_check(page) -> None:
    """Assert nothing ran, and the rendered answers hold no live markup."""
    page.wait_for_timeout(500)  # let onerror/onload/ontoggle/animation handlers fire if any survived
    assert page.evaluate("window.__xss") is None
    assert page.dialogs == []
    bad = page.evaluate(
        """() => {
          const found = [];
          for (const el of document.querySelectorAll('#messages *, #xss-sandbox *')) {
            for (const attr of el.attributes) {
              if (/^(on|style$|srcdoc$)/i.test(attr.name)) found.push(el.tagName + ' ' + attr.name);
              if (/^(href|src|action|formaction|xlink:href|data)$/i.test(attr.name) &&
                  /^\\s*(javascript|vbscript|data:text)/i.test(attr.value)) found.push(el.tagName + ' ' + attr.value);
            }
            if (/^(SCRIPT|IFRAME|OBJECT|EMBED|STYLE|SVG|MATH|FORM|INPUT|META|BASE|LINK|TEMPLATE|NOSCRIPT)$/i
                .test(el.tagName) && el.closest('.content, #xss-sandbox')) found.push(el.tagName);
          }
          for (const a of document.querySelectorAll('#messages .content a[href], #xss-sandbox a[href]')) {
            if (a.target !== '_blank' || a.rel !== 'noopener noreferrer') found.push('link ' + a.outerHTML);
          }
          return found;
        }"""
    )
    assert bad == []
    assert not [url for url in page.requests if "tracker.invalid" in url]


def test_xss_payloads_run_nothing_as_user_text_or_model_output(browser_page, live_server_url, user, local_model):
    conversation = conversation_create(owner=user, title="XSS corpus")
    # Rows written directly: the corpus is fixture data. A stored, finished answer is exactly what the
    # history path renders, whichever model produced it.
    for payload in [*PAYLOADS, *EXTERNAL_IMAGES]:
        message_add(conversation=conversation, role=Role.USER, content=payload)
        message_add(conversation=conversation, role=Role.ASSISTANT, content=payload, status=MessageStatus.COMPLETE)
    # Citations and recorded steps are text too, whatever a document's title says.
    message_add(
        conversation=conversation,
        role=Role.ASSISTANT,
        content="See the sources.",
        status=MessageStatus.COMPLETE,
        citations=[{"document_id": "d1", "title": PAYLOADS[1], "chunk_id": 7, "similarity": 0.83}],
        metadata={"agents_used": ["retrieve", PAYLOADS[4]]},
    )
    page = browser_page
    log_in(page, live_server_url, user)
    page.goto(f"{live_server_url}/c/{conversation.pk}/")
    count = 2 * (len(PAYLOADS) + len(EXTERNAL_IMAGES)) + 1
    page.wait_for_function(f"document.querySelectorAll('#messages article').length === {count}")

    # User text is shown exactly as typed: as text, never as markup.
    shown = page.eval_on_selector_all(".message.user .content", "els => els.map(e => e.textContent)")
    assert sorted(shown) == sorted([*PAYLOADS, *EXTERNAL_IMAGES])
    # External images became a note, and were not requested.
    blocked = page.locator(".message.assistant .blocked-image[title*='tracker.invalid']")
    assert blocked.count() == len(EXTERNAL_IMAGES)
    sources = page.locator(".message.assistant .citations li")
    assert sources.count() == 1 and sources.text_content() == PAYLOADS[1] + " 83%"
    assert page.locator(".message.assistant .steps li").all_text_contents() == [
        "retrieve ✓",
        PAYLOADS[4].replace("_", " ") + " ✓",  # step names show "_" as spaces
    ]
    # Code stays code.
    assert "<img src=x onerror=window.__xss=1>" in page.locator(".message.assistant pre code").first.text_content()

    # The streaming path: the same render function, fed each payload as it grows chunk by chunk.
    page.evaluate(
        """(payloads) => {
          const box = document.createElement('div');
          box.id = 'xss-sandbox';
          document.body.append(box);
          for (const p of payloads) {
            const el = document.createElement('div');
            box.append(el);
            for (let i = 3; i < p.length; i += 5) ParleyRender.render(el, p.slice(0, i));
            ParleyRender.render(el, p);
          }
        }""",
        [*PAYLOADS, *EXTERNAL_IMAGES],
    )
    xss_check(page)


def test_payloads_streamed_by_a_model_run_nothing(browser_page, live_server_url, user, local_model):
    # A real OpenAI-compatible server whose answer is a few payloads, cut into stream chunks mid-tag.
    answer = "Here you go:\n\n" + "\n\n".join(PAYLOADS[:8] + EXTERNAL_IMAGES[:1]) + "\n\n[a link](https://example.org)"
    words = tuple(answer[i : i + 7] for i in range(0, len(answer), 7))
    with ScriptedServer(["ok"], words=words) as server:
        model = ModelConfig.objects.create(
            slug="scripted",
            display_name="Scripted",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
        )
        conversation = conversation_create(owner=user, model=model)
        page = browser_page
        log_in(page, live_server_url, user)
        page.goto(f"{live_server_url}/c/{conversation.pk}/")
        wait_connected(page)
        page.get_by_label("Model").select_option("scripted")
        page.get_by_label("Message").fill("Show me some HTML")
        page.get_by_role("button", name="Send").click()
        page.wait_for_selector(".message.assistant[data-status=complete]")
    assert page.locator(ANSWER).text_content().startswith("Here you go:")
    link = page.get_by_role("link", name="a link")
    assert link.get_attribute("rel") == "noopener noreferrer" and link.get_attribute("target") == "_blank"
    xss_check(page)


def test_sidebar_search_rename_archive_delete_draft_and_documents(browser_page, live_server_url, user, local_model):
    alpha = conversation_create(owner=user, title="Alpha trip")
    beta = conversation_create(owner=user, title="Beta notes")
    page = browser_page
    log_in(page, live_server_url, user)
    page.goto(f"{live_server_url}/c/{alpha.pk}/")
    wait_connected(page)
    sidebar = page.locator("#conversations")
    # The usage/quota pill (GET /api/v1/me/ "quota").
    page.wait_for_selector("#usage:not([hidden])")
    assert re.fullmatch(r"\S+ (/ \S+ tokens|tokens today)", page.locator("#usage").text_content())

    page.get_by_label("Search conversations").fill("beta")
    page.wait_for_function("document.querySelectorAll('#conversations li').length === 1")
    assert sidebar.inner_text().strip() == "Beta notes"
    page.get_by_label("Search conversations").fill("")
    page.wait_for_function("document.querySelectorAll('#conversations li').length === 2")

    page.get_by_role("button", name="Rename Alpha trip").click()
    page.get_by_label("New title").fill("Gamma plans")
    page.get_by_label("New title").press("Enter")
    page.wait_for_selector("#conversations a:text('Gamma plans')")
    alpha.refresh_from_db()
    assert alpha.title == "Gamma plans"

    page.get_by_role("button", name="Archive Beta notes").click()
    page.wait_for_function("document.querySelectorAll('#conversations li').length === 1")
    beta.refresh_from_db()
    assert beta.archived_at is not None
    page.get_by_role("button", name="Archived").click()
    page.wait_for_selector("#conversations a:text('Beta notes')")
    page.get_by_role("button", name="Delete Beta notes").click()
    page.wait_for_selector("#conversations li.muted")
    assert page.dialogs == ["Delete “Beta notes” and all its messages?"]
    assert not type(beta).objects.filter(pk=beta.pk).exists()

    # The draft survives a reload, per conversation.
    page.get_by_label("Message").fill("half-written thought\nsecond line")
    page.reload()
    assert page.get_by_label("Message").input_value() == "half-written thought\nsecond line"

    # Upload a document to the knowledge base and see it listed with its ingestion status.
    page.locator("#documents summary").click()
    page.get_by_label("Add a document to your knowledge base").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"Parley keeps notes about Lyon."}]
    )
    page.get_by_role("button", name="Upload").click()
    page.wait_for_selector("#document-list li")
    assert "notes" in page.locator("#document-list li").first.inner_text()


def test_reconnect_resumes_a_running_answer_and_an_error_can_be_retried(
    browser_page, live_server_url, user, local_model
):
    # A real OpenAI-compatible server: the first answer streams "Hello there" then goes silent (the
    # model times out: an error, partial text kept); the retry gets the whole "Hello there!".
    with ScriptedServer(["stall-midway", "ok"], stall_seconds=20) as server:
        model = ModelConfig.objects.create(
            slug="scripted",
            display_name="Scripted",
            provider=Provider.OPENAI_COMPATIBLE,
            model="scripted",
            base_url=server.base_url,
            idle_timeout=6.0,
            max_retries=0,
        )
        conversation = conversation_create(owner=user, model=model)
        page = browser_page
        sockets = []

        def relay(ws):  # the browser's socket, relayed to the real server, so the test can cut it
            ws.connect_to_server()
            sockets.append(ws)

        page.route_web_socket(re.compile(r"/ws/chat/"), relay)
        log_in(page, live_server_url, user)
        page.goto(f"{live_server_url}/c/{conversation.pk}/")
        wait_connected(page)
        page.get_by_label("Message").fill("Say hello")
        page.get_by_label("Message").press("Enter")
        page.wait_for_function(f"document.querySelector('{ANSWER}')?.textContent.trim() === 'Hello there'")

        sockets[0].close(code=4000, reason="test: connection lost")
        page.wait_for_selector("#main[data-connected=false]")
        wait_connected(page)  # reconnected with backoff, and caught up over REST
        assert len(sockets) == 2
        answer = page.locator(".message.assistant")
        assert answer.get_attribute("data-status") == "streaming"
        assert answer.locator(".content").text_content().strip() == "Hello there"
        assert page.get_by_role("button", name="Stop").is_visible()

        # The model goes silent: the answer ends in an error shown inline, partial text kept.
        page.wait_for_selector(".message.assistant[data-status=error]")
        assert answer.locator(".content").text_content().strip() == "Hello there"
        assert "No next token" in answer.locator(".error-box").text_content()

        answer.get_by_role("button", name="Retry").click()
        page.wait_for_selector(".message.assistant[data-status=complete]")
        assert page.locator(".message.assistant").count() == 1  # the failed answer was replaced
        assert page.locator(ANSWER).text_content().strip() == "Hello there!"
        assert page.locator(".message.assistant .error-box").is_hidden()

    answer.get_by_role("button", name="Good answer").click()
    page.wait_for_selector(".message.assistant .thumb.up[aria-pressed=true]")
    assert Feedback.objects.get(message_id=answer.get_attribute("data-message-id")).rating == "up"


def test_a_message_refused_or_lost_on_the_way_goes_back_into_the_composer(
    browser_page, live_server_url, user, local_model
):
    # A second model, the conversation's: switched off while the page is open, it refuses the send.
    second = ModelConfig.objects.create(slug="second", display_name="Second", model=local_model.model)
    conversation = conversation_create(owner=user, model=second)
    page = browser_page
    lose_next_send = []

    def relay(ws):  # the browser's socket, relayed to the real server, so the test can lose a frame
        server = ws.connect_to_server()

        def from_page(message):
            if lose_next_send and '"message.send"' in message:
                lose_next_send.clear()
                ws.close(code=4000, reason="test: connection lost")  # the server never sees the send
            else:
                server.send(message)

        ws.on_message(from_page)

    page.route_web_socket(re.compile(r"/ws/chat/"), relay)
    log_in(page, live_server_url, user)
    page.goto(f"{live_server_url}/c/{conversation.pk}/")
    wait_connected(page)
    composer = page.get_by_label("Message")

    # The server refuses the message (the chosen model was switched off meanwhile): an error frame.
    page.wait_for_selector("#model option[value=second]", state="attached")
    ModelConfig.objects.filter(pk=second.pk).update(is_enabled=False)
    composer.fill("A question worth keeping")
    composer.press("Enter")
    page.wait_for_selector(".send-error")
    assert composer.input_value() == "A question worth keeping"

    # The socket drops before the server gets the message: the text comes back, and stays after
    # the reconnect (the server has no such message).
    ModelConfig.objects.filter(pk=second.pk).update(is_enabled=True)
    lose_next_send.append(True)
    composer.press("Enter")
    page.wait_for_selector("#main[data-connected=false]")
    assert composer.input_value() == "A question worth keeping"
    wait_connected(page)
    assert composer.input_value() == "A question worth keeping"
    assert not Message.objects.filter(conversation=conversation).exists()

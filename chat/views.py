"""Server-rendered chat pages. The answer streams over the WebSocket (static/js/chat.js).

The settings page (``/settings/``): memory on or off, the user's memories, a note to remember.
Share links: the public page ``/s/<token>/``, "continue this chat", and the owner's list ``/shared/``.
"""

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages as notices
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.http import Http404, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_http_methods, require_POST

from accounts.services import user_memory_set
from accounts.throttling import websocket_message_throttle
from agents.selectors import memory_get, memory_list
from agents.services import memory_delete, memory_delete_all, memory_note_create
from core.errors import ParleyError
from inference.providers import ModelUnavailable
from inference.selectors import model_config_get, model_config_list

from . import services, turns
from .apis import import_upload_refuse_early
from .forms import (
    CustomInstructionsForm,
    FirstMessageForm,
    ImportForm,
    MemoryNoteForm,
    MemoryToggleForm,
    PromptForm,
)
from .selectors import (
    conversation_get,
    conversation_list,
    custom_instructions_get,
    import_job_list,
    message_path,
    prompt_get,
    prompt_list,
    share_get,
    share_get_active,
    share_list,
)
from .serializers import MessageNodeOutputSerializer


def _default_model_slug(user) -> str:
    """Return the slug of the model a turn of ``user`` uses when none is chosen ("" when none is open to them)."""
    try:
        return model_config_get(user=user).slug
    except ModelUnavailable:
        return ""


def _home_page(request, *, content: str = "", model_slug: str = "", error: ParleyError | None = None):
    """Render the home composer; with ``error``, the refused ``content`` again, the reason and its status."""
    response = render(
        request,
        "chat/home.html",
        {
            "conversations": conversation_list(user=request.user),
            "models": model_config_list(user=request.user),
            "current_model": model_slug or _default_model_slug(request.user),
            "content": content,
            "error": error,
        },
        status=error.status_code if error else 200,
    )
    if error is not None and error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    return response


@login_required
@require_http_methods(["GET", "POST"])
async def home(request):
    """The composer of a new conversation, with the sidebar.

    ``POST`` a form ``content`` (the first message) and ``model`` (a slug; empty: the default):
    create the conversation with that message and start its answer, then redirect (302) to the
    conversation's page, where the answer streams (the page picks the running turn up over the
    WebSocket and REST). Nothing is stored when the message is refused: the page comes back with
    the text kept, the reason shown, and the error's status, as a message sent in a conversation
    would be refused: 400 ``empty_message``, 413 ``message_too_long``, 400 ``model_unavailable``
    or ``invalid`` (a NUL character, a malformed model slug), 429 ``rate_limited`` /
    ``too_many_generations`` / ``quota_exceeded`` with ``Retry-After``.
    """
    if request.method != "POST":
        return await sync_to_async(_home_page)(request)
    form = FirstMessageForm(request.POST)
    content = request.POST.get("content", "")
    model_slug = request.POST.get("model", "")
    user = await request.auser()
    try:
        if not form.is_valid():
            raise ParleyError(form.error_detail(), code="invalid")
        # Counted like a message sent over the chat WebSocket: the UI's messages share RATE_LIMIT_WS.
        await sync_to_async(websocket_message_throttle)(user=user)
        turn = await sync_to_async(services.conversation_start)(
            owner=user,
            content=form.cleaned_data["content"],
            model_slug=form.cleaned_data["model"] or None,
            attachments=request.POST.getlist("attachments"),  # image ids the composer uploaded
        )
    except ParleyError as exc:
        return await sync_to_async(_home_page)(request, content=content, model_slug=model_slug, error=exc)
    # On this process's event loop (or in a Celery worker), not tied to this request: the answer is
    # generated while the browser follows the redirect and connects its socket.
    turns.turn_start(turn, until_taken=True)
    return redirect("chat:conversation", conversation_id=turn.user_message.conversation_id)


@login_required
def conversation_detail(request, conversation_id):
    """The chat page of one of the user's conversations (404 for anyone else's)."""
    conversation = conversation_get(user=request.user, conversation_id=conversation_id)
    services.conversation_orphans_finalize(conversation=conversation)  # never show Stop for a dead answer
    messages = MessageNodeOutputSerializer(message_path(conversation=conversation), many=True).data
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": conversation,
            "conversations": conversation_list(user=request.user),
            "messages_data": messages,
            "models": model_config_list(user=request.user),
            "current_model": conversation.model.slug if conversation.model_id else _default_model_slug(request.user),
        },
    )


MEMORIES_PER_PAGE = 50


IMPORT_JOBS_SHOWN = 5  # the newest import jobs on the settings page, with their reports


def _settings_page(
    request,
    *,
    note_form: MemoryNoteForm | None = None,
    instructions_form: CustomInstructionsForm | None = None,
    prompt_form: PromptForm | None = None,
    import_form: ImportForm | None = None,
    import_error: str = "",
    status: int = 200,
):
    memories = memory_list(user=request.user).select_related("conversation")
    page = Paginator(memories, MEMORIES_PER_PAGE).get_page(request.GET.get("page"))
    instructions = custom_instructions_get(user=request.user)
    if instructions_form is None:
        instructions_form = CustomInstructionsForm(
            initial={
                "about_me": instructions.about_me,
                "how_to_answer": instructions.how_to_answer,
                "enabled": instructions.enabled,
            }
        )
    context = {
        "note_form": note_form or MemoryNoteForm(),
        "page": page,
        "memory_count": page.paginator.count,
        "instructions_form": instructions_form,
        "prompt_form": prompt_form or PromptForm(user=request.user),
        "prompts": prompt_list(user=request.user).filter(owner=request.user),
        "import_form": import_form or ImportForm(),
        "import_error": import_error,
        "import_jobs": import_job_list(user=request.user)[:IMPORT_JOBS_SHOWN],
    }
    return render(request, "chat/settings.html", context, status=status)


@login_required
def settings_page(request):
    """The user's settings: memory on or off, their memories (newest first, 50 a page), a note to add,
    their custom instructions and their prompt library."""
    return _settings_page(request)


def _back_to_memories() -> str:
    return reverse("chat:settings") + "#memories"


@login_required
@require_POST
def memory_toggle(request):
    """Turn the user's memory on or off (``memory_enabled=on|off``), then back to the settings page."""
    form = MemoryToggleForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("memory_enabled must be on or off.")
    enabled = form.cleaned_data["memory_enabled"] == "on"
    user_memory_set(user=request.user, enabled=enabled)
    notices.success(request, "Memory is on." if enabled else "Memory is off.")
    return redirect("chat:settings")


@login_required
@require_POST
def memory_add(request):
    """Store a note the user typed as a memory, then back to the list.

    Not valid (empty, too long): the page again with the form's errors, status 400. The embedding
    model failing: the page with its message and the error's status (503 or 502).
    """
    form = MemoryNoteForm(request.POST)
    if not form.is_valid():
        return _settings_page(request, note_form=form, status=400)
    try:
        memory_note_create(owner=request.user, content=form.cleaned_data["content"])
    except ParleyError as exc:
        form.add_error(None, exc.detail)
        return _settings_page(request, note_form=form, status=exc.status_code)
    notices.success(request, "Remembered." if request.user.memory_enabled else "Stored; recalled once memory is on.")
    return redirect(_back_to_memories())


@login_required
@require_POST
def memory_remove(request, memory_id):
    """Delete one of the user's memories (404 for anyone else's)."""
    memory_delete(memory=memory_get(user=request.user, memory_id=memory_id))
    notices.success(request, "Memory deleted.")
    return redirect(_back_to_memories())


@login_required
@require_POST
def memory_remove_all(request):
    """Delete all the user's memories."""
    deleted = memory_delete_all(owner=request.user)
    notices.success(request, f"Deleted {deleted} memor{'y' if deleted == 1 else 'ies'}.")
    return redirect(_back_to_memories())


# Share pages: the link must never be indexed, nor leak in a Referer, nor be served from a cache
# after it is revoked.
SHARE_PAGE_HEADERS = {
    "X-Robots-Tag": "noindex, nofollow",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _share_page(request, template: str, context: dict | None = None, *, status: int = 200):
    response = render(request, template, context or {}, status=status)
    for header, value in SHARE_PAGE_HEADERS.items():
        response[header] = value
    return response


def shared_conversation(request, token: str):
    """The read-only page of a share link (``/s/<token>/``): the snapshot, and "Continue this chat".

    With ``SHARE_PUBLIC`` off, anonymous visitors go to the login page first (``next=`` back here),
    before the token is even looked up: whether a link exists is not told to them. An unknown,
    revoked or expired token is one and the same 404 page. The messages are rendered in the
    browser by the chat's own renderer (static/js/render.js: marked, then DOMPurify).
    """
    if not settings.SHARE_PUBLIC and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    try:
        share = share_get_active(token=token)
    except Http404:
        return _share_page(request, "chat/share_missing.html", status=404)
    return _share_page(request, "chat/shared.html", {"share": share, "messages_data": share.messages})


@login_required
@require_POST
def shared_conversation_continue(request, token: str):
    """Copy a share link's snapshot into a new conversation of the visitor's, then open it (302).

    The same 404 page as :func:`shared_conversation` when the link does not open.
    """
    try:
        share = share_get_active(token=token)
    except Http404:
        return _share_page(request, "chat/share_missing.html", status=404)
    conversation = services.share_continue(share=share, user=request.user)
    return redirect(conversation)


@login_required
def shares_page(request):
    """The user's share links ("Shared"), newest first, each with its state and a Revoke button."""
    page = Paginator(share_list(user=request.user), MEMORIES_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request, "chat/shares.html", {"page": page, "now": timezone.now(), "share_public": settings.SHARE_PUBLIC}
    )


@login_required
@require_POST
def share_revoke(request, share_id):
    """Revoke one of the user's share links (404 for anyone else's), then back to the list."""
    services.share_revoke(share=share_get(user=request.user, share_id=share_id))
    notices.success(request, "Link revoked: it no longer opens.")
    return redirect("chat:shares")


@login_required
@require_POST
def custom_instructions_save(request):
    """Store the user's custom instructions, then back to the settings page (400 with the form's errors)."""
    form = CustomInstructionsForm(request.POST)
    if not form.is_valid():
        return _settings_page(request, instructions_form=form, status=400)
    services.custom_instructions_set(user=request.user, **form.cleaned_data)
    notices.success(request, "Custom instructions saved.")
    return redirect(reverse("chat:settings") + "#instructions")


@login_required
@require_POST
def prompt_add(request):
    """Add a prompt to the user's library, then back to the list (400 with the form's errors)."""
    form = PromptForm(request.POST, user=request.user)
    if not form.is_valid():
        return _settings_page(request, prompt_form=form, status=400)
    try:
        services.prompt_create(owner=request.user, **form.cleaned_data)
    except ParleyError as exc:
        form.add_error(None, exc.detail)
        return _settings_page(request, prompt_form=form, status=exc.status_code)
    notices.success(request, "Prompt saved: type / in the composer to use it.")
    return redirect(reverse("chat:settings") + "#prompts")


@login_required
@require_POST
def prompt_remove(request, prompt_id):
    """Delete one of the user's prompts (404 for anyone else's)."""
    services.prompt_delete(prompt=prompt_get(user=request.user, prompt_id=prompt_id, owned=True))
    notices.success(request, "Prompt deleted.")
    return redirect(reverse("chat:settings") + "#prompts")


@csrf_exempt  # checked below, once a too large upload has been refused unread
@login_required
@require_POST
def import_upload(request):
    """Queue an import of the uploaded export (ChatGPT's or Parley's), then back to the settings page,
    where its progress and report show. A body larger than ``IMPORT_MAX_BYTES`` is refused (413)
    before it is read: the CSRF check would otherwise read it all first."""
    try:
        import_upload_refuse_early(request)
    except ParleyError as exc:
        return _settings_page(request, import_error=exc.detail, status=exc.status_code)
    return _import_upload(request)


@csrf_protect
def _import_upload(request):
    form = ImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return _settings_page(request, import_form=form, status=400)
    upload = form.cleaned_data["file"]
    try:
        if upload.size > settings.IMPORT_MAX_BYTES:
            raise services.import_too_large(size=upload.size)
        services.import_job_create(owner=request.user, data=upload.read(), filename=upload.name or "")
    except ParleyError as exc:
        form.add_error(None, exc.detail)
        return _settings_page(request, import_form=form, status=exc.status_code)
    notices.success(request, "Import queued: its progress and report show below.")
    return redirect(reverse("chat:settings") + "#imports")

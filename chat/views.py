"""Server-rendered chat pages. The answer streams over the WebSocket (static/js/chat.js).

The settings page (``/settings/``): memory on or off, the user's memories, a note to remember.
"""

from django.contrib import messages as notices
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.services import user_memory_set
from agents.selectors import memory_get, memory_list
from agents.services import memory_delete, memory_delete_all, memory_note_create
from core.errors import ParleyError
from inference.selectors import model_config_list

from . import services
from .forms import MemoryNoteForm, MemoryToggleForm
from .selectors import conversation_get, conversation_list, message_list
from .serializers import MessageOutputSerializer


@login_required
def home(request):
    """The conversation list, with a button to start a new one."""
    return render(request, "chat/home.html", {"conversations": conversation_list(user=request.user)})


@login_required
@require_POST
def conversation_new(request):
    """Start an empty conversation and open it."""
    conversation = services.conversation_create(owner=request.user)
    return redirect(conversation)


@login_required
def conversation_detail(request, conversation_id):
    """The chat page of one of the user's conversations (404 for anyone else's)."""
    conversation = conversation_get(user=request.user, conversation_id=conversation_id)
    services.conversation_orphans_finalize(conversation=conversation)  # never show Stop for a dead answer
    messages = MessageOutputSerializer(message_list(conversation=conversation), many=True).data
    return render(
        request,
        "chat/conversation.html",
        {
            "conversation": conversation,
            "conversations": conversation_list(user=request.user),
            "messages_data": messages,
            "models": model_config_list(),
        },
    )


MEMORIES_PER_PAGE = 50


def _settings_page(request, *, note_form: MemoryNoteForm | None = None, status: int = 200):
    memories = memory_list(user=request.user).select_related("conversation")
    page = Paginator(memories, MEMORIES_PER_PAGE).get_page(request.GET.get("page"))
    context = {"note_form": note_form or MemoryNoteForm(), "page": page, "memory_count": page.paginator.count}
    return render(request, "chat/settings.html", context, status=status)


@login_required
def settings_page(request):
    """The user's settings: memory on or off, their memories (newest first, 50 a page), a note to add."""
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

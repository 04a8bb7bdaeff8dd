"""Server-rendered chat pages. The answer streams over the WebSocket (static/js/chat.js)."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from inference.selectors import model_config_list

from . import services
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

"""Reads for conversations and messages."""

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchVector
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.http import Http404
from django.utils import timezone

from accounts.models import UsageRecord, User
from accounts.quotas import generation_live
from inference.images import image_part

from .models import (
    Attachment,
    Conversation,
    CustomInstructions,
    ImportJob,
    Message,
    MessageStatus,
    Prompt,
    PromptVisibility,
    Role,
    SharedConversation,
)

logger = logging.getLogger(__name__)

# A message still "streaming" after this long was orphaned by a process that died mid-generation,
# when its lease cannot be read (Redis down) or at `manage.py finalize_orphans` without --all.
STALE_GENERATION_AFTER = timedelta(minutes=10)


# PostgreSQL text search configuration: "simple" lower-cases and splits words without stemming or
# stop words, so it works the same for every language people chat in.
SEARCH_CONFIG = "simple"


def _owned(*, user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).select_related("model")


def conversation_list(*, user: User, query: str = "", archived: bool = False) -> QuerySet[Conversation]:
    """Return ``user``'s conversations, most recently active first.

    ``archived``: the archived ones instead of the others. ``query``: only those whose title or any
    message's content matches it, by PostgreSQL full-text search (``websearch_to_tsquery`` syntax:
    words, ``"a phrase"``, ``or``, ``-word``; config :data:`SEARCH_CONFIG`). A query with no words
    matches nothing.
    """
    conversations = _owned(user=user).filter(archived_at__isnull=not archived)
    query = query.strip()
    if query:
        search = SearchQuery(query, search_type="websearch", config=SEARCH_CONFIG)
        # EXISTS rather than a join: a conversation with many matching messages is listed once.
        matching_messages = (
            # Every branch: text only an earlier edit or answer holds still finds its conversation.
            Message.objects.filter(conversation=OuterRef("pk"))
            .annotate(document=SearchVector("content", config=SEARCH_CONFIG))
            .filter(document=search)
        )
        conversations = conversations.annotate(title_document=SearchVector("title", config=SEARCH_CONFIG)).filter(
            Q(title_document=search) | Exists(matching_messages)
        )
    return conversations


def conversation_get(*, user: User, conversation_id) -> Conversation:
    """Return ``user``'s conversation ``conversation_id``, archived or not.

    Raise ``Http404`` when it does not exist or belongs to someone else (the two are not told apart,
    so ids of other users' conversations are not revealed).
    """
    conversation = _owned(user=user).filter(pk=conversation_id).first()
    if conversation is None:
        raise Http404("No such conversation.")
    return conversation


# The ids of a message and its ancestors: a recursive CTE over ``parent``, from the given message or,
# when that is NULL, the conversation's active leaf read in the same statement (so a stale in-memory
# conversation never picks an old branch). Parameters: conversation id, message id or None,
# conversation id. Table names are the models' (chat_message, chat_conversation).
_PATH_SQL = (
    "WITH RECURSIVE path(id, parent_id) AS ("
    " SELECT id, parent_id FROM chat_message WHERE conversation_id = %s"
    " AND id = COALESCE(%s::uuid, (SELECT active_leaf_id FROM chat_conversation WHERE id = %s))"
    " UNION ALL SELECT m.id, m.parent_id FROM chat_message m JOIN path ON m.id = path.parent_id"
    ") SELECT id FROM path"
)
# The ids of a message and every message under it. Parameter: the message id.
_SUBTREE_SQL = (
    "WITH RECURSIVE below(id) AS ("
    " SELECT id FROM chat_message WHERE id = %s"
    " UNION ALL SELECT m.id FROM chat_message m JOIN below ON m.parent_id = below.id"
    ") SELECT id FROM below"
)


def message_list(*, conversation: Conversation, leaf: Message | None = None) -> QuerySet[Message]:
    """Return the active path of the conversation, oldest first: its active leaf and the leaf's ancestors.

    ``leaf``: the path ending at that message instead (a turn's history ends at its own answer,
    whatever branch is shown meanwhile). Other branches (earlier edits, regenerated answers) are
    left out; :func:`message_tree` has them all. One query.
    """
    leaf_id = leaf.pk if leaf is not None else None
    path = RawSQL(_PATH_SQL, [conversation.pk, leaf_id, conversation.pk])  # noqa: S611 (constant SQL, bound values)
    return conversation.messages.filter(pk__in=path).order_by("created_at", "pk")


def message_tree(*, conversation: Conversation) -> QuerySet[Message]:
    """Return every message of the conversation, all branches, oldest first."""
    return conversation.messages.order_by("created_at", "pk")


def message_siblings_attach(*, conversation: Conversation, messages: list[Message]) -> list[Message]:
    """Set ``sibling_ids`` on each of ``messages``: the ids of the messages sharing its parent
    (itself included), oldest first. One query; return ``messages``.
    """
    if not messages:
        return messages
    parents = {m.parent_id for m in messages}
    match = Q(parent_id__in=[p for p in parents if p is not None])
    if None in parents:
        match |= Q(parent__isnull=True)
    rows = conversation.messages.filter(match).order_by("created_at", "pk")
    children: dict = {}
    for pk, parent_id in rows.values_list("pk", "parent_id"):
        children.setdefault(parent_id, []).append(pk)
    for message in messages:
        message.sibling_ids = children.get(message.parent_id, [message.pk])
    return messages


def message_path(*, conversation: Conversation) -> list[Message]:
    """Return the active path (:func:`message_list`), with ``sibling_ids`` and images. Three queries."""
    messages = list(message_list(conversation=conversation).prefetch_related("attachments"))
    return message_siblings_attach(conversation=conversation, messages=messages)


def message_tree_nodes(*, conversation: Conversation) -> tuple[list[Message], list]:
    """Return every message (:func:`message_tree`), each with its ``sibling_ids``, and the active path's ids.

    ``([Message], [id, ...])``: all branches oldest first; the path root first. Two queries.
    """
    messages = list(message_tree(conversation=conversation).prefetch_related("attachments"))
    children: dict = {}
    for message in messages:
        children.setdefault(message.parent_id, []).append(message.pk)
    for message in messages:
        message.sibling_ids = children[message.parent_id]
    path = list(message_list(conversation=conversation).values_list("pk", flat=True))
    return messages, path


def message_leaf_latest(*, message: Message) -> Message:
    """Return the newest message of the subtree under ``message`` (itself when it has no children).

    The newest descendant is always a leaf: anything created under it would be newer. One query.
    """
    below = RawSQL(_SUBTREE_SQL, [message.pk])  # noqa: S611 (constant SQL, bound values)
    return Message.objects.filter(pk__in=below).order_by("-created_at", "-pk").first()


def message_get(*, conversation: Conversation, message_id) -> Message:
    """Return message ``message_id`` of ``conversation`` (on any branch); raise ``Http404`` if none."""
    message = conversation.messages.filter(pk=message_id).first()
    if message is None:
        raise Http404("No such message.")
    return message


def orphan_grace() -> timedelta:
    """Return how long a new answer is never taken for an orphan (``GENERATION_ORPHAN_GRACE_SECONDS``)."""
    return timedelta(seconds=settings.GENERATION_ORPHAN_GRACE_SECONDS)


def generations_unfinished(*, conversation: Conversation) -> QuerySet[Message]:
    """Return the conversation's assistant messages still ``pending``/``streaming``, newest first."""
    return conversation.messages.filter(
        role=Role.ASSISTANT, status__in=[MessageStatus.PENDING, MessageStatus.STREAMING]
    ).order_by("-created_at")


def answers_get(*, conversation: Conversation, message_ids) -> list[Message]:
    """Return the assistant messages of ``conversation`` among ``message_ids`` (an iterable of ids)."""
    return list(conversation.messages.filter(role=Role.ASSISTANT, pk__in=list(message_ids)))


def generation_running(*, message: Message, owner_id: int) -> bool:
    """Return whether the unfinished answer ``message`` (of ``owner_id``'s conversation) is still being generated.

    A running answer holds a generation lease in Redis that its turn renews
    (:func:`accounts.quotas.generation_live`); a process that dies stops renewing it, and once it
    expires the answer is orphaned. An answer younger than ``GENERATION_ORPHAN_GRACE_SECONDS`` counts
    as running: its lease is taken before it is stored, but the clocks of PostgreSQL, Redis and the
    web process differ a little. With Redis unreachable nothing can be told apart: an answer
    counts as running until it is :data:`STALE_GENERATION_AFTER` old.
    """
    age = timezone.now() - message.created_at
    if age < orphan_grace():
        return True
    live = generation_live(user_id=owner_id, generation_id=str(message.pk))
    if live is None:
        return age < STALE_GENERATION_AFTER
    return live


def generation_active(*, conversation: Conversation) -> Message | None:
    """Return the assistant message being generated in ``conversation``, if any (not orphaned ones)."""
    for message in generations_unfinished(conversation=conversation):
        if generation_running(message=message, owner_id=conversation.owner_id):
            return message
    return None


def model_messages(*, conversation: Conversation, system_prompt: str = "", leaf: Message | None = None) -> list[dict]:
    """Return the conversation as chat messages for a model: ``[{"role", "content"}]``, oldest first.

    Only the active path (or the path ending at ``leaf``; see :func:`message_list`): other
    branches never reach the model. Includes the system prompt (when given), user messages and
    finished assistant answers (complete, or the partial text of a cancelled one); leaves out
    failed answers and the one being generated. A user message with images has OpenAI's list
    content, its text then each image as a data URL read from storage
    (:func:`attachment_content_parts`): every turn sends every image of its branch.
    """
    messages = [{"role": Role.SYSTEM.value, "content": system_prompt}] if system_prompt else []
    rows = (
        message_list(conversation=conversation, leaf=leaf)
        .filter(role__in=[Role.USER, Role.ASSISTANT], status__in=[MessageStatus.COMPLETE, MessageStatus.CANCELLED])
        .prefetch_related("attachments")
    )
    for m in rows:
        images = list(m.attachments.all())
        if images:
            text = [{"type": "text", "text": m.content}] if m.content else []
            messages.append({"role": m.role, "content": text + attachment_content_parts(attachments=images)})
        elif m.content:
            messages.append({"role": m.role, "content": m.content})
    return messages


def attachment_content_parts(*, attachments: list[Attachment]) -> list[dict]:
    """Return OpenAI ``image_url`` parts (data URLs) of ``attachments``, read from storage.

    An image whose file is missing from storage becomes a text part saying so (and is logged), so
    the model and the user are told rather than the image vanishing.
    """
    parts = []
    for attachment in attachments:
        try:
            with attachment.file.open("rb") as file:
                data = file.read()
        except (FileNotFoundError, OSError):
            logger.error("The image %s of message %s is missing from storage", attachment.pk, attachment.message_id)
            parts.append({"type": "text", "text": "[image unavailable: its file is missing from storage]"})
            continue
        parts.append(image_part(data=data, content_type=attachment.content_type))
    return parts


def attachment_get(*, user: User, attachment_id) -> Attachment:
    """Return image ``attachment_id`` if ``user`` may see it: its owner, or staff allowed to view messages.

    Raise ``Http404`` otherwise (another user's image is not told apart from a missing one).
    """
    attachment = Attachment.objects.filter(pk=attachment_id).first()
    allowed = attachment is not None and (
        attachment.owner_id == user.pk or (user.is_staff and user.has_perm("chat.view_message"))
    )
    if not allowed:
        raise Http404("No such image.")
    return attachment


def active_user_count(*, since) -> int:
    """Return how many users sent a chat message, or made any model request (a ``UsageRecord``:
    chat or /v1), at or after ``since`` (an aware datetime)."""
    sent = Message.objects.filter(conversation__owner=OuterRef("pk"), role=Role.USER, created_at__gte=since)
    requested = UsageRecord.objects.filter(user=OuterRef("pk"), created_at__gte=since)
    return User.objects.filter(Q(Exists(sent)) | Q(Exists(requested))).count()


def session_count() -> int:
    """Return the number of unexpired sessions in the database (logins that have not ended or expired)."""
    from django.contrib.sessions.models import Session

    return Session.objects.filter(expire_date__gt=timezone.now()).count()


def share_list(*, user: User) -> QuerySet[SharedConversation]:
    """Return ``user``'s share links, newest first: active, expired and revoked ones alike."""
    return SharedConversation.objects.filter(owner=user).order_by("-created_at")


def share_get(*, user: User, share_id) -> SharedConversation:
    """Return ``user``'s share link ``share_id``; raise ``Http404`` when none (or someone else's)."""
    share = share_list(user=user).filter(pk=share_id).first()
    if share is None:
        raise Http404("No such share link.")
    return share


def share_get_active(*, token: str) -> SharedConversation:
    """Return the share link whose token is ``token`` if it still opens (not revoked, not expired).

    Raise ``Http404`` otherwise, the same for an unknown, a revoked and an expired token, so a
    visitor learns nothing about links that do not open.
    """
    now = timezone.now()
    share = (
        SharedConversation.objects.filter(token=token, revoked_at__isnull=True)
        .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        .first()
    )
    if share is None:
        raise Http404("No such share link.")
    return share


def prompt_list(*, user: User, query: str = "") -> QuerySet[Prompt]:
    """Return the library prompts ``user`` may use, by title: their own, those shared with everyone, and
    those shared with a group they are in. ``query``: only titles containing it (any case)."""
    visible = (
        Q(owner=user)
        | Q(visibility=PromptVisibility.EVERYONE)
        | Q(visibility=PromptVisibility.GROUPS, groups__in=user.groups.all())
    )
    prompts = Prompt.objects.filter(visible).distinct().select_related("owner").prefetch_related("groups")
    query = query.strip()
    if query:
        prompts = prompts.filter(title__icontains=query)
    return prompts.order_by("title", "created_at")


def prompt_get(*, user: User, prompt_id, owned: bool = False) -> Prompt:
    """Return prompt ``prompt_id`` if ``user`` may use it (``owned``: only if it is theirs, to change it).

    Raise ``Http404`` otherwise: a prompt that is not shared with ``user`` is not revealed.
    """
    prompts = Prompt.objects.filter(owner=user) if owned else prompt_list(user=user)
    prompt = prompts.filter(pk=prompt_id).first()
    if prompt is None:
        raise Http404("No such prompt.")
    return prompt


def custom_instructions_get(*, user: User) -> CustomInstructions:
    """Return ``user``'s custom instructions (unsaved and empty when they have set none)."""
    return CustomInstructions.objects.filter(user=user).first() or CustomInstructions(user=user)


def custom_instructions_prompt(*, user_id: int) -> str:
    """Return the part of a turn's system prompt that carries user ``user_id``'s custom instructions.

    "" when they have none or turned them off. Otherwise a short block naming each non-empty part
    ("About the user:", "How to answer:"), meant to follow the model's own system prompt.
    """
    instructions = CustomInstructions.objects.filter(user_id=user_id, enabled=True).first()
    if instructions is None:
        return ""
    parts = [
        f"{label}\n{text}"
        for label, text in (
            ("About the user:", instructions.about_me),
            ("How the user wants you to answer:", instructions.how_to_answer),
        )
        if text
    ]
    if not parts:
        return ""
    return "The user's custom instructions.\n\n" + "\n\n".join(parts)


def import_job_list(*, user: User) -> QuerySet[ImportJob]:
    """Return ``user``'s import jobs, newest first, without their uploaded files."""
    return ImportJob.objects.filter(owner=user).defer("data").order_by("-created_at")


def import_job_get(*, user: User, job_id) -> ImportJob:
    """Return ``user``'s import job ``job_id``; raise ``Http404`` when none (or someone else's)."""
    job = import_job_list(user=user).filter(pk=job_id).first()
    if job is None:
        raise Http404("No such import job.")
    return job


def conversation_export_list(*, user: User, ids: list | None = None) -> QuerySet[Conversation]:
    """Return ``user``'s conversations to export: all of them (archived too), or those of ``ids``
    that are theirs (another user's id is silently not there)."""
    conversations = Conversation.objects.filter(owner=user)
    if ids:
        conversations = conversations.filter(pk__in=ids)
    return conversations

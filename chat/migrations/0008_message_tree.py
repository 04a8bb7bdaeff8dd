# Messages form a tree (Message.parent) with the shown branch at Conversation.active_leaf; the
# regenerate-only link Message.superseded_by is folded into it and dropped (one source of truth).

import django.db.models.deletion
from django.db import migrations, models

BATCH = 1000  # messages written per UPDATE batch


def link_messages(apps, schema_editor):
    """Link each conversation's messages into one chain in creation order.

    An answer replaced by a regeneration (``superseded_by`` set) becomes a sibling of its
    replacement: every message's parent is the latest message created before it that was not
    replaced. Only the last answer could be regenerated, so a replaced answer never had followers,
    and nothing existing is lost. The active leaf is the last message that was not replaced.
    """
    # Fire the new foreign keys' checks now, not at commit: the column drop below cannot run on a
    # table with pending trigger events.
    schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    Conversation = apps.get_model("chat", "Conversation")
    Message = apps.get_model("chat", "Message")
    changed = []
    for conversation_id in Conversation.objects.values_list("pk", flat=True).iterator():
        tip = None
        for message in (
            Message.objects.filter(conversation_id=conversation_id)
            .only("pk", "parent_id", "superseded_by_id", "created_at")
            .order_by("created_at", "pk")
        ):
            message.parent_id = tip
            changed.append(message)
            if message.superseded_by_id is None:
                tip = message.pk
        if tip is not None:
            Conversation.objects.filter(pk=conversation_id).update(active_leaf_id=tip)
        if len(changed) >= BATCH:
            Message.objects.bulk_update(changed, ["parent"], batch_size=BATCH)
            changed = []
    if changed:
        Message.objects.bulk_update(changed, ["parent"], batch_size=BATCH)
    schema_editor.execute("SET CONSTRAINTS ALL DEFERRED")


def unlink_messages(apps, schema_editor):
    """Going back: answers off the active path are marked replaced by the active one of their siblings."""
    schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    Conversation = apps.get_model("chat", "Conversation")
    Message = apps.get_model("chat", "Message")
    for conversation in Conversation.objects.exclude(active_leaf=None).iterator():
        path, node = set(), conversation.active_leaf_id
        parents = dict(Message.objects.filter(conversation_id=conversation.pk).values_list("pk", "parent_id"))
        while node is not None:
            path.add(node)
            node = parents.get(node)
        for message in Message.objects.filter(conversation_id=conversation.pk).exclude(pk__in=path):
            replacement = next(
                (pk for pk, parent in parents.items() if parent == message.parent_id and pk in path), None
            )
            Message.objects.filter(pk=message.pk).update(superseded_by_id=replacement or conversation.active_leaf_id)
    schema_editor.execute("SET CONSTRAINTS ALL DEFERRED")


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0007_conversation_metadata_import_job"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                help_text="The message this one follows; empty for a first message. Siblings: an edit or a regeneration.",
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="chat.message",
            ),
        ),
        migrations.AddField(
            model_name="conversation",
            name="active_leaf",
            field=models.ForeignKey(
                blank=True,
                help_text="The last message of the branch shown and sent to the model: the active path is it and "
                "its ancestors. Empty until the first message.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="chat.message",
            ),
        ),
        migrations.RunPython(link_messages, unlink_messages),
        migrations.RemoveField(
            model_name="message",
            name="superseded_by",
        ),
    ]

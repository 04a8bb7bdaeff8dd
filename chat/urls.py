from django.urls import path

from . import admin_apis, apis, views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("s/<str:token>/", views.shared_conversation, name="shared_conversation"),
    path("s/<str:token>/continue/", views.shared_conversation_continue, name="shared_conversation_continue"),
    path("shared/", views.shares_page, name="shares"),
    path("shared/<uuid:share_id>/revoke/", views.share_revoke, name="share_revoke"),
    path("settings/", views.settings_page, name="settings"),
    path("settings/instructions/", views.custom_instructions_save, name="custom_instructions"),
    path("settings/prompts/", views.prompt_add, name="prompt_add"),
    path("settings/prompts/<uuid:prompt_id>/delete/", views.prompt_remove, name="prompt_delete"),
    path("settings/imports/", views.import_upload, name="import_upload"),
    path("settings/memory/", views.memory_toggle, name="memory_toggle"),
    path("settings/memories/", views.memory_add, name="memory_add"),
    path("settings/memories/delete/", views.memory_remove_all, name="memory_delete_all"),
    path("settings/memories/<uuid:memory_id>/delete/", views.memory_remove, name="memory_delete"),
]

api_urlpatterns = [
    path("admin/sessions/count/", admin_apis.SessionCountApi.as_view(), name="api_admin_sessions_count"),
    path("conversations/", apis.ConversationListApi.as_view(), name="api_conversations"),
    path("conversations/export/", apis.ConversationExportApi.as_view(), name="api_conversations_export"),
    path("imports/", apis.ImportJobListApi.as_view(), name="api_imports"),
    path("imports/<uuid:import_job_id>/", apis.ImportJobDetailApi.as_view(), name="api_import"),
    path("conversations/<uuid:conversation_id>/", apis.ConversationDetailApi.as_view(), name="api_conversation"),
    path("conversations/<uuid:conversation_id>/stop/", apis.ConversationStopApi.as_view(), name="api_stop"),
    path("conversations/<uuid:conversation_id>/shares/", apis.ConversationShareApi.as_view(), name="api_share"),
    path("attachments/", apis.AttachmentListApi.as_view(), name="api_attachments"),
    path("attachments/<uuid:attachment_id>/", apis.AttachmentContentApi.as_view(), name="api_attachment_content"),
    path(
        "attachments/<uuid:attachment_id>/thumbnail/",
        apis.AttachmentThumbnailApi.as_view(),
        name="api_attachment_thumbnail",
    ),
    path("prompts/", apis.PromptListApi.as_view(), name="api_prompts"),
    path("prompts/<uuid:prompt_id>/", apis.PromptDetailApi.as_view(), name="api_prompt"),
    path("me/instructions/", apis.CustomInstructionsApi.as_view(), name="api_custom_instructions"),
    path("shares/", apis.ShareListApi.as_view(), name="api_shares"),
    path("shares/<uuid:share_id>/", apis.ShareDetailApi.as_view(), name="api_share_detail"),
    path("conversations/<uuid:conversation_id>/messages/", apis.MessageListApi.as_view(), name="api_messages"),
    path("conversations/<uuid:conversation_id>/messages/tree/", apis.MessageTreeApi.as_view(), name="api_message_tree"),
    path(
        "conversations/<uuid:conversation_id>/messages/<uuid:message_id>/edit/",
        apis.MessageEditApi.as_view(),
        name="api_message_edit",
    ),
    path(
        "conversations/<uuid:conversation_id>/messages/<uuid:message_id>/activate/",
        apis.MessageActivateApi.as_view(),
        name="api_message_activate",
    ),
    path(
        "conversations/<uuid:conversation_id>/messages/<uuid:message_id>/regenerate/",
        apis.MessageRegenerateApi.as_view(),
        name="api_message_regenerate",
    ),
    path(
        "conversations/<uuid:conversation_id>/messages/<uuid:message_id>/feedback/",
        apis.MessageFeedbackApi.as_view(),
        name="api_message_feedback",
    ),
]

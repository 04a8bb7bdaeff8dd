from django.urls import path

from . import apis, views

app_name = "chat"

urlpatterns = [
    path("", views.home, name="home"),
    path("c/new/", views.conversation_new, name="conversation_new"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
]

api_urlpatterns = [
    path("conversations/", apis.ConversationListApi.as_view(), name="api_conversations"),
    path("conversations/<uuid:conversation_id>/messages/", apis.MessageListApi.as_view(), name="api_messages"),
]

from django.urls import path

from . import apis

api_urlpatterns = [
    path("documents/", apis.DocumentListApi.as_view(), name="api_documents"),
    path("documents/<uuid:document_id>/", apis.DocumentDetailApi.as_view(), name="api_document"),
    path("memories/", apis.MemoryListApi.as_view(), name="api_memories"),
    path("memories/<uuid:memory_id>/", apis.MemoryDetailApi.as_view(), name="api_memory"),
]

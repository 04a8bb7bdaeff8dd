from django.urls import path

from . import apis

api_urlpatterns = [
    path("documents/", apis.DocumentListApi.as_view(), name="api_documents"),
    path("documents/<uuid:document_id>/", apis.DocumentDetailApi.as_view(), name="api_document"),
]

from django.urls import path

from . import apis

api_urlpatterns = [
    path("models/", apis.ModelListApi.as_view(), name="api_models"),
]

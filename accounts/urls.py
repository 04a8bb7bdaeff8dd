from django.urls import path

from . import apis

api_urlpatterns = [
    path("auth/token/", apis.TokenObtainApi.as_view(), name="api_token"),
    path("auth/token/refresh/", apis.TokenRefreshApi.as_view(), name="api_token_refresh"),
    path("me/", apis.MeApi.as_view(), name="api_me"),
    path("keys/", apis.APIKeyListApi.as_view(), name="api_keys"),
    path("keys/<uuid:api_key_id>/", apis.APIKeyDetailApi.as_view(), name="api_key"),
]

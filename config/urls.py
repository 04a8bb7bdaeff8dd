from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chat.urls import api_urlpatterns as chat_api
from inference.urls import api_urlpatterns as inference_api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", auth_views.LoginView.as_view(template_name="registration/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include(chat_api)),
    path("api/v1/", include(inference_api)),
    path("", include("chat.urls")),
]

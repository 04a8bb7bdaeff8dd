from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from accounts import sso
from accounts import views as account_views
from accounts.admin_views import spend_dashboard
from accounts.urls import api_urlpatterns as accounts_api
from agents.urls import api_urlpatterns as agents_api
from chat.urls import api_urlpatterns as chat_api
from core import health, prometheus
from core.static import favicon
from inference.admin_apis import AdminMetricsApi
from inference.admin_views import cache_dashboard, metrics_dashboard
from inference.urls import api_urlpatterns as inference_api

urlpatterns = [
    path("admin/cache/", admin.site.admin_view(cache_dashboard), name="admin_cache"),
    path("admin/metrics/", admin.site.admin_view(metrics_dashboard), name="admin_metrics"),
    path("admin/spend/", admin.site.admin_view(spend_dashboard), name="admin_spend"),
    # The admin's own login view (throttled by its form, accounts.forms), answering 429 when locked out.
    path("admin/login/", account_views.lockout_status(admin.site.login)),
    path("admin/", admin.site.urls),
    path("login/", account_views.lockout_status(account_views.LoginView.as_view()), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", account_views.signup, name="signup"),
    # Single sign-on (accounts.sso): django-allauth's OpenID Connect views, with Parley's ID-token check.
    path("accounts/oidc/<str:provider_id>/login/", sso.oidc_login, name="openid_connect_login"),
    path("accounts/oidc/<str:provider_id>/login/callback/", sso.oidc_callback, name="openid_connect_callback"),
    path("password/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", account_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("api/v1/admin/metrics/", AdminMetricsApi.as_view(), name="api_admin_metrics"),
    path("api/v1/", include(chat_api)),
    path("api/v1/", include(inference_api)),
    path("api/v1/", include(accounts_api)),
    path("api/v1/", include(agents_api)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    # The split view serves its start-up script from a URL, not inline: the page passes the CSP.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api_schema"), name="api_docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api_schema"), name="api_redoc"),
    path("health/", health.liveness, name="health"),
    path("health/ready/", health.readiness, name="health_ready"),
    path("metrics", prometheus.metrics_view, name="prometheus_metrics"),
    path("favicon.ico", favicon, name="favicon"),
    path("v1/", include("inference.gateway_urls")),
    path("", include("chat.urls")),
]

# Django-level errors (no matching URL, an unhandled exception, ...): the API's JSON error shape
# under /api/ and /v1/, Django's usual pages elsewhere. Used when DEBUG is off.
handler400 = "core.handlers.bad_request"
handler403 = "core.handlers.permission_denied"
handler404 = "core.handlers.page_not_found"
handler500 = "core.handlers.server_error"

from django.urls import path

from . import admin_apis, apis

api_urlpatterns = [
    path("admin/model/info/", admin_apis.ModelInfoApi.as_view(), name="api_admin_model_info"),
    path("models/", apis.ModelListApi.as_view(), name="api_models"),
    path("cache/health/", apis.CacheHealthApi.as_view(), name="api_cache_health"),
    path("cache/stats/", apis.CacheStatsApi.as_view(), name="api_cache_stats"),
    path("cache/<str:layer>/", apis.CacheFlushApi.as_view(), name="api_cache_flush"),
]

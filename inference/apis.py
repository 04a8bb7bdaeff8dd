"""Inference REST API under /api/v1/."""

from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from .selectors import model_config_get, model_config_list


class ModelListApi(APIView):
    """``GET``: the enabled models a user can pick (``"model": slug`` in a message), default first."""

    class OutputSerializer(serializers.Serializer):
        slug = serializers.SlugField()
        display_name = serializers.CharField()
        provider = serializers.CharField()
        context_window = serializers.IntegerField()
        is_default = serializers.BooleanField()

    def get(self, request):
        configs = list(model_config_list())
        default_slug = model_config_get().slug if configs else None
        rows = [
            {
                "slug": c.slug,
                "display_name": c.display_name,
                "provider": c.provider,
                "context_window": c.context_window,
                "is_default": c.slug == default_slug,
            }
            for c in sorted(configs, key=lambda c: (c.slug != default_slug, c.display_name))
        ]
        return Response(self.OutputSerializer(rows, many=True).data)

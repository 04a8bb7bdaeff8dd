"""Accounts REST API under /api/v1/: JWT tokens, the current user, API keys."""

from django.core.exceptions import ObjectDoesNotExist
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt import views as jwt_views
from rest_framework_simplejwt.exceptions import InvalidToken, TokenError
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer

from core.schema import ERRORS

from . import services
from .budgets import budget_statuses
from .models import APIKey
from .permissions import IsNotAPIKey
from .quotas import quota_status
from .selectors import api_key_get, api_key_list, usage_today
from .throttling import LoginRateThrottle, parse_rate

# Keys are managed with a login or a JWT, not with an API key (IsNotAPIKey).
KEY_MANAGEMENT_AUTH = [{"jwtAuth": []}, {"cookieAuth": []}]
EXAMPLE_KEY = {
    "id": "0b7c1a52-3f0e-4a55-9d6b-2f1e8c2d4a10",
    "name": "laptop script",
    "prefix": "pk_Xq3v9Lm2",
    "created_at": "2026-01-05T09:30:00Z",
    "allowed_models": None,
    "expires_at": None,
    "rate_limit": "",
}
EXAMPLE_BUDGET = {
    "id": 3,
    "subject_type": "group",
    "subject": "research",
    "amount": "50.00",
    "spent": "41.250000",
    "remaining": "8.750000",
    "period": "month",
    "period_start": "2026-01-01T00:00:00Z",
    "resets_at": "2026-02-01T00:00:00Z",
    "threshold_percent": 80,
}


class BudgetSerializer(serializers.Serializer):
    """One money budget in its current period (:class:`accounts.budgets.BudgetStatus`); USD as decimal strings."""

    id = serializers.IntegerField()
    subject_type = serializers.ChoiceField(choices=["user", "group", "api_key"])
    subject = serializers.CharField(help_text="Username, group name, or the API key's prefix.")
    amount = serializers.DecimalField(max_digits=12, decimal_places=2, help_text="USD per period.")
    spent = serializers.DecimalField(max_digits=14, decimal_places=6, help_text="USD spent this period.")
    remaining = serializers.DecimalField(max_digits=14, decimal_places=6, help_text="USD left this period.")
    period = serializers.ChoiceField(choices=["day", "week", "month"], help_text="UTC; weeks start on Monday.")
    period_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField(help_text="The period's end, when spend starts again from 0.")
    threshold_percent = serializers.IntegerField(
        allow_null=True, help_text="Percent of the amount at which operators are notified; null: none."
    )


class TokenObtainApi(jwt_views.TokenObtainPairView):
    """``POST {"username", "password"}``: a JWT pair ``{"access", "refresh"}``.

    Throttled per client IP and per account name (``RATE_LIMIT_LOGIN``, default 10/min each): 429 with
    ``Retry-After``.
    Wrong credentials: 401 ``no_active_account``.
    """

    throttle_classes = [LoginRateThrottle]
    throttle_scope = "login"

    @extend_schema(
        summary="Obtain a JWT pair",
        responses={200: TokenObtainPairSerializer, 401: ERRORS[401]},
        examples=[
            OpenApiExample("credentials", value={"username": "alice", "password": "correct horse"}, request_only=True),
            OpenApiExample("tokens", value={"access": "eyJhbGciOi...", "refresh": "eyJhbGciOi..."}, response_only=True),
        ],
    )
    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except TokenError as exc:
            raise InvalidToken(exc.args[0]) from exc
        # A refused attempt is recorded by accounts.signals (Django's user_login_failed).
        services.audit_record(action="auth.login", actor=serializer.user, target=serializer.user)
        return Response(serializer.validated_data, status=status.HTTP_200_OK)


class TokenRefreshApi(jwt_views.TokenRefreshView):
    """``POST {"refresh"}``: a new access token ``{"access"}``; 401 ``token_not_valid`` for a bad one."""

    @extend_schema(
        summary="Refresh an access token",
        responses={200: TokenRefreshSerializer, 401: ERRORS[401]},
        examples=[
            OpenApiExample("refresh token", value={"refresh": "eyJhbGciOi..."}, request_only=True),
            OpenApiExample("access token", value={"access": "eyJhbGciOi..."}, response_only=True),
        ],
    )
    def post(self, request, *args, **kwargs):
        try:
            return super().post(request, *args, **kwargs)
        except ObjectDoesNotExist as exc:
            # simplejwt looks the token's user up with .get(): a deleted user is a bad token, not a 500.
            raise InvalidToken("The token's user no longer exists.") from exc


class MeApi(APIView):
    """``GET``: the authenticated user's profile, their usage today, their daily token quota (UTC days) and
    the money budgets that apply to them (their own, their groups', and the API key's when called with one).

    ``PATCH {"memory_enabled": bool}``: turn memory on or off (see ``/api/v1/memories/``); answers as ``GET``.
    """

    class InputSerializer(serializers.Serializer):
        memory_enabled = serializers.BooleanField(
            required=False,
            help_text="Remember finished answers and recall memories (and your notes) in your other conversations.",
        )

    class OutputSerializer(serializers.Serializer):
        class UsageTodaySerializer(serializers.Serializer):
            requests = serializers.IntegerField(help_text="Model requests today (chat turns and /v1 calls).")
            prompt_tokens = serializers.IntegerField()
            completion_tokens = serializers.IntegerField()
            total_tokens = serializers.IntegerField()
            cost = serializers.DecimalField(max_digits=14, decimal_places=6, help_text="USD.")

        class QuotaSerializer(serializers.Serializer):
            daily_tokens = serializers.IntegerField(
                allow_null=True, help_text="Prompt + completion tokens allowed per UTC day; null: unlimited."
            )
            used = serializers.IntegerField(help_text="Tokens used today.")
            remaining = serializers.IntegerField(allow_null=True, help_text="Tokens left today; null: unlimited.")
            resets_at = serializers.DateTimeField(help_text="Next UTC midnight.")

        id = serializers.IntegerField()
        username = serializers.CharField()
        email = serializers.CharField(allow_blank=True, help_text="Email address; empty when none is set.")
        is_staff = serializers.BooleanField()
        date_joined = serializers.DateTimeField()
        memory_enabled = serializers.BooleanField(
            help_text="Finished answers are remembered and memories recalled in your other conversations."
        )
        usage_today = UsageTodaySerializer()
        quota = QuotaSerializer()
        budgets = BudgetSerializer(many=True, help_text="Money budgets applying to your requests; [] when none.")

    @extend_schema(
        summary="The current user",
        responses=OutputSerializer,
        examples=[
            OpenApiExample(
                "alice",
                value={
                    "id": 7,
                    "username": "alice",
                    "email": "alice@example.com",
                    "is_staff": False,
                    "date_joined": "2026-01-02T10:00:00Z",
                    "memory_enabled": False,
                    "usage_today": {
                        "requests": 12,
                        "prompt_tokens": 5400,
                        "completion_tokens": 2100,
                        "total_tokens": 7500,
                        "cost": "0.000000",
                    },
                    "quota": {
                        "daily_tokens": 200000,
                        "used": 7500,
                        "remaining": 192500,
                        "resets_at": "2026-01-06T00:00:00Z",
                    },
                    "budgets": [EXAMPLE_BUDGET],
                },
            )
        ],
    )
    def get(self, request):
        return Response(self._profile(request.user, request.auth))

    @extend_schema(
        summary="Change the current user's settings",
        request=InputSerializer,
        responses=OutputSerializer,
        examples=[OpenApiExample("memory on", value={"memory_enabled": True}, request_only=True)],
    )
    def patch(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = request.user
        if "memory_enabled" in serializer.validated_data:
            user = services.user_memory_set(user=user, enabled=serializer.validated_data["memory_enabled"])
        return Response(self._profile(user, request.auth))

    def _profile(self, user, auth=None) -> dict:
        api_key_id = auth.pk if isinstance(auth, APIKey) else None
        data = {
            "id": user.pk,
            "username": user.username,
            "email": user.email,
            "is_staff": user.is_staff,
            "date_joined": user.date_joined,
            "memory_enabled": user.memory_enabled,
            "usage_today": usage_today(user=user),
            "quota": quota_status(user=user),
            "budgets": budget_statuses(user_id=user.pk, api_key_id=api_key_id),
        }
        return self.OutputSerializer(data).data


class APIKeyListApi(APIView):
    """``GET``: the user's active API keys, by prefix (never the key), each with its scopes and own money budgets.
    ``POST {"name", "allowed_models"?, "expires_at"?, "rate_limit"?}``: a new key.

    Scopes only narrow a key: ``allowed_models`` (slugs; omitted or null: every model the user may
    use; a model the user may not use, now or later, is refused to the key as well), ``expires_at``
    (after it the key is refused, 401 ``invalid_api_key``), ``rate_limit`` (``"60/min"``, on top of
    the user's own limit).

    The new key is in the ``POST`` response only, once. Managing keys needs a login or a JWT: a
    request authenticated by an API key gets 403 ``api_key_not_allowed``.
    """

    permission_classes = [IsAuthenticated, IsNotAPIKey]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        allowed_models = serializers.ListField(
            child=serializers.SlugField(max_length=64),
            required=False,
            allow_null=True,
            max_length=100,
            help_text="Model slugs the key may use (of those you may use). Omitted or null: all of yours.",
        )
        expires_at = serializers.DateTimeField(
            required=False, allow_null=True, help_text="When the key stops working. Omitted or null: never."
        )
        rate_limit = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=32,
            help_text='Requests per window for this key, e.g. "60/min" (s, min, hour, day), on top of yours.',
        )

        def validate_expires_at(self, value):
            if value is not None and value <= timezone.now():
                raise serializers.ValidationError("Must be in the future.")
            return value

        def validate_rate_limit(self, value):
            try:
                parse_rate(value)
            except ValueError:
                raise serializers.ValidationError('A rate such as "60/min" (per s, min, hour or day).') from None
            return value

    class ScopesSerializer(serializers.Serializer):
        allowed_models = serializers.ListField(
            child=serializers.CharField(), allow_null=True, help_text="null: every model you may use."
        )
        expires_at = serializers.DateTimeField(allow_null=True)
        rate_limit = serializers.CharField(allow_blank=True)

    class OutputSerializer(ScopesSerializer):
        id = serializers.UUIDField()
        name = serializers.CharField()
        prefix = serializers.CharField(help_text="The key's first characters, to recognise it.")
        created_at = serializers.DateTimeField()
        last_used_at = serializers.DateTimeField(allow_null=True, help_text="Updated at most once a minute.")
        budgets = BudgetSerializer(many=True, help_text="The key's own budgets (your and your groups' apply too).")

    class CreateOutputSerializer(ScopesSerializer):
        id = serializers.UUIDField()
        name = serializers.CharField()
        prefix = serializers.CharField()
        key = serializers.CharField(help_text="The full key. Shown only in this response: store it now.")
        created_at = serializers.DateTimeField()

    @extend_schema(
        summary="List API keys",
        auth=KEY_MANAGEMENT_AUTH,
        responses=OutputSerializer(many=True),
        examples=[
            OpenApiExample(
                "keys",
                value=[
                    {
                        **EXAMPLE_KEY,
                        "last_used_at": None,
                        "budgets": [{**EXAMPLE_BUDGET, "subject_type": "api_key", "subject": "pk_Xq3v9Lm2"}],
                    }
                ],
            )
        ],
    )
    def get(self, request):
        keys = [
            {
                "id": key.id,
                "name": key.name,
                "prefix": key.prefix,
                "created_at": key.created_at,
                "last_used_at": key.last_used_at,
                "allowed_models": key.allowed_models,
                "expires_at": key.expires_at,
                "rate_limit": key.rate_limit,
                "budgets": budget_statuses(user_id=request.user.pk, api_key_id=key.pk, keys_only=True),
            }
            for key in api_key_list(user=request.user)
        ]
        return Response(self.OutputSerializer(keys, many=True).data)

    @extend_schema(
        summary="Create an API key",
        auth=KEY_MANAGEMENT_AUTH,
        request=InputSerializer,
        responses={201: CreateOutputSerializer},
        examples=[
            OpenApiExample("name", value={"name": "laptop script"}, request_only=True),
            OpenApiExample(
                "new key",
                value={**EXAMPLE_KEY, "key": "pk_Xq3v9Lm2...(43 characters after pk_)"},
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        api_key, key = services.api_key_create(user=request.user, **serializer.validated_data)
        data = self.CreateOutputSerializer(
            {
                "id": api_key.id,
                "name": api_key.name,
                "prefix": api_key.prefix,
                "key": key,
                "created_at": api_key.created_at,
                "allowed_models": api_key.allowed_models,
                "expires_at": api_key.expires_at,
                "rate_limit": api_key.rate_limit,
            }
        ).data
        return Response(data, status=status.HTTP_201_CREATED)


class APIKeyDetailApi(APIView):
    """``DELETE``: revoke one of the user's API keys (204); 404 for another user's or a revoked key."""

    permission_classes = [IsAuthenticated, IsNotAPIKey]

    @extend_schema(summary="Revoke an API key", auth=KEY_MANAGEMENT_AUTH, responses={204: None})
    def delete(self, request, api_key_id):
        services.api_key_revoke(api_key=api_key_get(user=request.user, api_key_id=api_key_id))
        return Response(status=status.HTTP_204_NO_CONTENT)

"""OpenAI-compatible gateway under ``/v1/``: models, chat completions (streamed or not) and embeddings.

Any OpenAI client works against Parley unchanged: ``openai.OpenAI(base_url=".../v1", api_key="pk_...")``.
Requests are authenticated by per-user API keys only, and every error has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, not Parley's. Wire format:
https://platform.openai.com/docs/api-reference.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
import struct
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpResponse, JsonResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import APIKeyAuthentication
from accounts.metering import Admission
from accounts.models import APIKey, UsageSource, UsageStatus, User
from accounts.quotas import GenerationKeepalive
from accounts.throttling import user_rate_check
from core.errors import ParleyError, database_unavailable, payload_too_large
from core.parsers import JSONParser

from .embeddings import embed_texts
from .images import ImageInvalid, ImageTooLarge, ImageTypeUnsupported, ImageUrlRefused, image_from_url, image_part
from .images import vision_check as images_vision_check
from .models import ModelConfig
from .pipeline import Generation
from .providers import Chunk, GenerationParams, ModelUnavailable, Usage, content_images, image_count, prompt_chars
from .selectors import model_config_get, model_config_list
from .server_tools import ServerLabelInvalid, ServerTool, ServerToolLoop, ServerToolsUnavailable, server_tools_resolve
from .services import MILLION, cost_estimate, generation_params
from .sse import event_stream_response, sse_frame

logger = logging.getLogger(__name__)

# --- Errors -----------------------------------------------------------------------------------


class OpenAIError(Exception):
    """An error answered in OpenAI's shape, with an HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = status.HTTP_400_BAD_REQUEST,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.type = type
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_type(status_code: int) -> str:
    """Return OpenAI's error ``type`` for an HTTP status."""
    if status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        return "rate_limit_error"
    if status_code >= 500:
        return "server_error"
    return "invalid_request_error"


def _from_parley(exc: ParleyError, param: str | None = None) -> OpenAIError:
    """Map a Parley (inference) error to its OpenAI equivalent, keeping its status and code.

    ``model_busy``/``model_unavailable`` → 503 (``Retry-After`` when known), ``upstream_rate_limited``
    and Parley's own ``rate_limited`` → 429 ``rate_limit_exceeded``, ``budget_exceeded`` → 429 of type
    ``insufficient_quota`` (its message says when the budget resets), ``model_timeout`` → 504,
    ``context_length_exceeded`` → 400 of that code.
    """
    code = "rate_limit_exceeded" if exc.code in ("upstream_rate_limited", "rate_limited") else exc.code
    # A spent budget is OpenAI's "out of credit" 429, which clients tell apart from a rate limit.
    error_type = "insufficient_quota" if exc.code == "budget_exceeded" else _error_type(exc.status_code)
    return OpenAIError(
        exc.detail,
        status_code=exc.status_code,
        type=error_type,
        param=param or getattr(exc, "param", None),
        code=code,
        retry_after=exc.retry_after,
    )


def _validation_param(detail, prefix: str = "") -> tuple[str | None, str]:
    """Return ``(param, message)`` of the first error in a DRF ``ValidationError.detail``.

    ``param`` is a path in OpenAI's style: ``messages[0].role``.
    """
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        if key == "non_field_errors":
            return _validation_param(value, prefix)
        if isinstance(key, int):
            return _validation_param(value, f"{prefix}[{key}]")
        return _validation_param(value, f"{prefix}.{key}" if prefix else str(key))
    if isinstance(detail, list) and detail:
        return _validation_param(detail[0], prefix)
    return prefix or None, str(detail)


def openai_error(exc: Exception) -> OpenAIError | None:
    """Return ``exc`` as an :class:`OpenAIError` (status, type, code), or None for an unexpected error."""
    if isinstance(exc, RequestDataTooBig):
        exc = payload_too_large()
    exc = database_unavailable(exc) or exc  # PostgreSQL unreachable: 503 server_error, code database_unavailable
    if isinstance(exc, ParleyError):
        exc = _from_parley(exc)
    elif isinstance(exc, Http404):
        exc = OpenAIError("Not found.", status_code=404, code="not_found")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.ValidationError):
        param, message = _validation_param(exc.detail)
        exc = OpenAIError(f"{param}: {message}" if param else message, param=param, code="invalid_value")
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        message = (
            "Invalid, revoked or expired API key."
            if isinstance(exc, exceptions.AuthenticationFailed)
            else "You didn't provide an API key. Send it as 'Authorization: Bearer pk_...'."
        )
        exc = OpenAIError(message, status_code=401, code="invalid_api_key")
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        wait = getattr(exc, "wait", None)
        exc = OpenAIError(
            str(exc.detail),
            status_code=exc.status_code,
            type=_error_type(exc.status_code),
            code=codes if isinstance(codes, str) else None,
            retry_after=math.ceil(wait) if wait else None,
        )
    return exc if isinstance(exc, OpenAIError) else None


def openai_exception_handler(exc, context) -> Response | None:
    """Render errors of the DRF ``/v1/`` views in OpenAI's shape; leave unexpected ones to a 500."""
    error = openai_error(exc)
    if error is None:  # unexpected: still an OpenAI-shaped 500, which OpenAI's clients understand
        logger.error("Unexpected error in %s", type(context.get("view")).__name__, exc_info=exc)
        error = OpenAIError("The server had an error processing your request.", status_code=500, type="server_error")
    response = Response(error.body(), status=error.status_code)
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    if error.status_code == 401:
        response["WWW-Authenticate"] = APIKeyAuthentication().authenticate_header(context.get("request"))
    return response


class GatewayApi(APIView):
    """Base of the ``/v1/`` views: API keys only, OpenAI's error shape, left out of Parley's OpenAPI schema."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [IsAuthenticated]

    def get_exception_handler(self):
        return openai_exception_handler


def _validated(serializer_class: type[serializers.Serializer], data) -> dict:
    if not isinstance(data, dict):
        raise OpenAIError("The request body must be a JSON object.")
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _model_get(slug: str, *, api_key: APIKey) -> ModelConfig:
    """Return the enabled model ``slug`` if ``api_key`` (and its user) may use it; else raise 404 ``model_not_found``.

    A model closed to the key's user (:func:`accounts.access.visible_to`) or outside the key's
    ``allowed_models`` is as unknown as a missing one: the same 404, never another model instead.
    """
    try:
        return model_config_get(slug=slug, api_key=api_key)
    except ModelUnavailable:
        raise OpenAIError(
            f"The model '{slug}' does not exist or is not enabled.",
            status_code=404,
            param="model",
            code="model_not_found",
        ) from None


# --- Models -----------------------------------------------------------------------------------


@extend_schema(exclude=True)
class ModelListGateway(GatewayApi):
    """``GET /v1/models``: the enabled models the key may use, as OpenAI model objects (``id`` is the slug), with
    Parley's ``capabilities``: ``{"vision", "tools", "response_format", "logprobs"}`` booleans (what a request may
    ask for)."""

    def get(self, request):
        data = [
            {
                "id": config.slug,
                "object": "model",
                "created": int(config.created_at.timestamp()),
                "owned_by": "parley",
                "capabilities": {
                    "vision": config.supports_vision,
                    "tools": config.supports_tools,
                    "response_format": config.supports_response_format,
                    "logprobs": config.supports_logprobs,
                },
            }
            for config in model_config_list(api_key=request.auth)
        ]
        return Response({"object": "list", "data": data})


# --- Chat completions -------------------------------------------------------------------------


def _content_part_valid(part) -> bool:
    """Return whether ``part`` is a text part or an ``{"type": "image_url", "image_url": {"url", "detail"?}}`` one."""
    if not isinstance(part, dict):
        return False
    if part.get("type") == "text":
        return isinstance(part.get("text"), str)
    image = part.get("image_url")
    return (
        part.get("type") == "image_url"
        and isinstance(image, dict)
        and isinstance(image.get("url"), str)
        and image.get("detail", "auto") in ("auto", "low", "high")
    )


class _ContentField(serializers.Field):
    """A message's ``content``: a string, or a list of text parts (joined into a string) and
    ``image_url`` parts (kept as a list: see :func:`_images_clean`)."""

    default_error_messages = {"invalid": "Must be a string or a list of text and image_url content parts."}

    def to_internal_value(self, data) -> str | list[dict]:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and all(_content_part_valid(part) for part in data):
            if any(part["type"] == "image_url" for part in data):
                return [
                    {"type": "text", "text": p["text"]}
                    if p["type"] == "text"
                    else {"type": "image_url", "image_url": {"url": p["image_url"]["url"]}}
                    for p in data
                ]
            return "".join(part["text"] for part in data)
        self.fail("invalid")

    def to_representation(self, value):
        return value


class _StopField(serializers.Field):
    """``stop``: null, a string or a list of up to 4 strings; always a list inside."""

    default_error_messages = {"invalid": "Must be a string or a list of up to 4 non-empty strings."}

    def to_internal_value(self, data) -> list[str]:
        if isinstance(data, str) and data:
            return [data]
        if isinstance(data, list) and len(data) <= 4 and all(isinstance(s, str) and s for s in data):
            return data
        self.fail("invalid")

    def to_representation(self, value):
        return value


class _StrictBooleanField(serializers.BooleanField):
    """A JSON boolean only (DRF's also takes ``"yes"``, ``1``, ...)."""

    def to_internal_value(self, data) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class _StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class _StrictFloatField(serializers.FloatField):
    def to_internal_value(self, data) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


# Roles a chat model reads; OpenAI's newer "developer" role means "system" here.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for a function's name


class _ObjectField(serializers.JSONField):
    """A JSON object (a dict), e.g. a JSON schema."""

    default_error_messages = {"not_object": "Must be a JSON object."}

    def to_internal_value(self, data) -> dict:
        if not isinstance(data, dict):
            self.fail("not_object")
        return data


class _ToolChoiceField(serializers.Field):
    """``tool_choice``: ``"none"``, ``"auto"``, ``"required"`` or ``{"type": "function", "function": {"name"}}``."""

    default_error_messages = {
        # (DRF formats these messages: braces doubled.)
        "invalid": 'Must be "none", "auto", "required" or {{"type": "function", "function": {{"name": ...}}}}.'
    }

    def to_internal_value(self, data) -> str | dict:
        if data in ("none", "auto", "required"):
            return data
        if (
            isinstance(data, dict)
            and data.get("type") == "function"
            and isinstance(data.get("function"), dict)
            and isinstance(data["function"].get("name"), str)
        ):
            return {"type": "function", "function": {"name": data["function"]["name"]}}
        self.fail("invalid")

    def to_representation(self, value):
        return value


class _FunctionSerializer(serializers.Serializer):
    name = serializers.RegexField(FUNCTION_NAME)
    description = serializers.CharField(required=False, allow_blank=True)
    parameters = _ObjectField(required=False)
    strict = _StrictBooleanField(required=False, allow_null=True)


class _AllowedToolsField(serializers.Field):
    """An MCP tool's ``allowed_tools``: a list of tool names, or OpenAI's filter ``{"tool_names": [...]}``."""

    default_error_messages = {"invalid": 'Must be a list of tool names or {{"tool_names": [...]}}.'}

    def to_internal_value(self, data) -> list[str]:
        if isinstance(data, dict) and "tool_names" in data and set(data) <= {"tool_names", "read_only"}:
            data = data["tool_names"]
        if isinstance(data, list) and len(data) <= 128 and all(isinstance(name, str) and name for name in data):
            return data
        self.fail("invalid")

    def to_representation(self, value):
        return value


class _ToolSerializer(serializers.Serializer):
    """One of ``tools``: a function the client runs, or an MCP server of the operator's that Parley runs
    (``{"type": "mcp", "server_label", "allowed_tools"?, "require_approval"?: "never"}``)."""

    type = serializers.ChoiceField(choices=["function", "mcp"])
    function = _FunctionSerializer(required=False)
    server_label = serializers.CharField(required=False, max_length=200)
    allowed_tools = _AllowedToolsField(required=False, allow_null=True)
    require_approval = serializers.JSONField(required=False, allow_null=True)
    server_url = serializers.CharField(required=False, allow_blank=True)

    def validate(self, data):
        if data["type"] == "function":
            if "function" not in data:
                raise serializers.ValidationError({"function": "Required when type is function."})
            return data
        if not data.get("server_label"):
            raise serializers.ValidationError({"server_label": "Required when type is mcp."})
        if data.get("server_url"):
            raise serializers.ValidationError(
                {"server_url": "Parley runs only the MCP servers its operator registered: name one by server_label."}
            )
        if data.get("require_approval") not in (None, "never"):
            raise serializers.ValidationError(
                {"require_approval": 'Only "never" is supported: Parley runs the allowed tools without asking.'}
            )
        return data


class _ToolCallSerializer(serializers.Serializer):
    """One call in an assistant message's ``tool_calls``; ``arguments`` is a string, as the model wrote it."""

    class CallFunctionSerializer(serializers.Serializer):
        name = serializers.CharField()
        arguments = serializers.CharField(allow_blank=True, trim_whitespace=False)

    id = serializers.CharField()
    type = serializers.ChoiceField(choices=["function"])
    function = CallFunctionSerializer()


class _ResponseFormatSerializer(serializers.Serializer):
    class JsonSchemaSerializer(serializers.Serializer):
        name = serializers.RegexField(FUNCTION_NAME)
        description = serializers.CharField(required=False, allow_blank=True)
        schema = _ObjectField(required=False)
        strict = _StrictBooleanField(required=False, allow_null=True)

    type = serializers.ChoiceField(choices=["text", "json_object", "json_schema"])
    json_schema = JsonSchemaSerializer(required=False)

    def validate(self, data):
        if data["type"] == "json_schema" and "json_schema" not in data:
            raise serializers.ValidationError({"json_schema": "Required when type is json_schema."})
        return data


class ChatCompletionInput(serializers.Serializer):
    """The body of ``POST /v1/chat/completions`` that Parley reads (OpenAI's names and ranges)."""

    class MessageSerializer(serializers.Serializer):
        role = serializers.ChoiceField(choices=sorted(ROLES))
        content = _ContentField(required=False, allow_null=True)
        tool_calls = serializers.ListField(child=_ToolCallSerializer(), required=False, allow_null=True)
        tool_call_id = serializers.CharField(required=False)

        def validate(self, data):
            role = data["role"]
            if role == "tool" and not data.get("tool_call_id"):
                raise serializers.ValidationError({"tool_call_id": "Required in a tool message."})
            if data.get("tool_calls") and role != "assistant":
                raise serializers.ValidationError({"tool_calls": "Only assistant messages call tools."})
            if data.get("content") is None and not (role == "assistant" and data.get("tool_calls")):
                raise serializers.ValidationError(
                    {"content": "Required (null only in an assistant message with tool_calls)."}
                )
            if isinstance(data.get("content"), list) and role != "user":
                raise serializers.ValidationError({"content": "Only user messages may hold images."})
            return data

    class StreamOptionsSerializer(serializers.Serializer):
        include_usage = _StrictBooleanField(required=False, default=False)

    model = serializers.CharField()
    messages = serializers.ListField(child=MessageSerializer(), min_length=1)
    stream = _StrictBooleanField(required=False, default=False, allow_null=True)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = _StrictIntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = _StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = _StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    stop = _StopField(required=False, allow_null=True)
    n = _StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=1)
    tools = serializers.ListField(child=_ToolSerializer(), required=False, allow_null=True, max_length=128)
    tool_choice = _ToolChoiceField(required=False, allow_null=True)
    parallel_tool_calls = _StrictBooleanField(required=False, allow_null=True, default=None)
    response_format = _ResponseFormatSerializer(required=False, allow_null=True)
    seed = _StrictIntegerField(required=False, allow_null=True)
    top_p = _StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    logprobs = _StrictBooleanField(required=False, allow_null=True, default=None)
    top_logprobs = _StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=20)

    def validate(self, data):
        choice = data.get("tool_choice")
        if isinstance(choice, dict):
            names = {tool["function"]["name"] for tool in data.get("tools") or () if tool["type"] == "function"}
            if choice["function"]["name"] not in names:
                raise serializers.ValidationError({"tool_choice": "Names a function that is not in tools."})
        elif choice == "required" and not data.get("tools"):
            raise serializers.ValidationError({"tool_choice": '"required" needs tools.'})
        if data.get("top_logprobs") is not None and not data.get("logprobs"):
            raise serializers.ValidationError({"top_logprobs": "Needs logprobs to be true."})
        return data


@dataclass
class _Call:
    """One ``/v1/chat/completions`` request, validated; admitted (``admission``) once its MCP tools are resolved."""

    admission: Admission | None  # None until admitted (after its MCP tools are resolved)
    user: User
    api_key: APIKey | None  # the key the request came with: its budgets apply too
    config: ModelConfig
    messages: list[dict[str, str]]
    params: GenerationParams
    stream: bool
    include_usage: bool
    headers: dict[str, str]  # X-RateLimit-* for the response
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    # {"type": "mcp"} tools: [(index in tools, server_label, allowed_tools or None)]; resolved into server_tools
    mcp: list[tuple[int, str, list[str] | None]] = field(default_factory=list)
    server_tools: dict[str, ServerTool] = field(default_factory=dict)  # by the function name the model sees


def _params(config: ModelConfig, data: dict) -> GenerationParams:
    overrides = {}
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    if max_tokens is not None:
        if max_tokens > config.context_window:
            param = "max_completion_tokens" if data.get("max_completion_tokens") else "max_tokens"
            raise OpenAIError(
                f"{param} is too large: {max_tokens}. The model's context window is {config.context_window} tokens.",
                param=param,
                code="invalid_value",
            )
        overrides["max_tokens"] = max_tokens
    if data.get("temperature") is not None:
        overrides["temperature"] = data["temperature"]
    params = generation_params(model=config, overrides=overrides)
    params.stop = data.get("stop") or []
    _refuse_unsupported(config, data)
    if data.get("tools"):
        functions = [{"type": "function", "function": t["function"]} for t in data["tools"] if t["type"] == "function"]
        params.tools = functions or None  # server tools join them once resolved (see _server_tools_resolve)
        params.tool_choice = data.get("tool_choice")
        params.parallel_tool_calls = data.get("parallel_tool_calls")
    response_format = data.get("response_format")
    if response_format and response_format["type"] != "text":
        params.response_format = response_format
    params.seed = data.get("seed")
    params.top_p = data.get("top_p")
    if data.get("logprobs"):
        params.logprobs = True
        params.top_logprobs = data.get("top_logprobs")
    return params


def _unsupported(config: ModelConfig, param: str, what: str) -> OpenAIError:
    return OpenAIError(
        f"{param}: the model '{config.slug}' does not support {what}.", param=param, code="unsupported_parameter"
    )


def _refuse_unsupported(config: ModelConfig, data: dict) -> None:
    """Raise a 400 ``unsupported_parameter`` naming the first parameter ``config``'s capabilities
    (``supports_tools``, ``supports_response_format``, ``supports_logprobs``) rule out."""
    if not config.supports_tools:
        if data.get("tools"):
            raise _unsupported(config, "tools", "tools")
        if data.get("tool_choice") not in (None, "none"):
            raise _unsupported(config, "tool_choice", "tools")
        for number, message in enumerate(data["messages"]):
            if message.get("tool_calls") or message["role"] == "tool":
                raise _unsupported(config, f"messages[{number}]", "tool calls or tool messages")
    response_format = data.get("response_format")
    if not config.supports_response_format and response_format and response_format["type"] != "text":
        raise _unsupported(config, "response_format", f"response_format {response_format['type']}")
    if not config.supports_logprobs:
        for param in ("logprobs", "top_logprobs"):
            if data.get(param):
                raise _unsupported(config, param, "logprobs")


def _message(message: dict) -> dict:
    """Return a validated request message in Parley's shape (see :mod:`inference.providers.base`)."""
    result = {"role": ROLES[message["role"]], "content": message.get("content") or ""}
    if message.get("tool_calls"):
        result["tool_calls"] = [
            {"id": call["id"], "type": "function", "function": dict(call["function"])} for call in message["tool_calls"]
        ]
    if result["role"] == "tool":
        result["tool_call_id"] = message["tool_call_id"]
    return result


def _images_clean(messages: list[dict], config: ModelConfig) -> None:
    """Replace each ``image_url`` part of ``messages`` (Parley's shape, in place) by its clean image.

    A data URL is decoded; an http(s) URL fetched when ``IMAGE_URL_FETCH`` allows it (public
    addresses only, size and time limits: :func:`inference.images.image_fetch`). Each is checked and
    cleaned (:func:`inference.images.image_clean`: type from its bytes, caps, EXIF stripped). First,
    a model that refuses images answers 400 ``model_not_vision_capable``, before anything is fetched.
    Errors name the part: ``messages[i].content[j]``.
    """
    images_vision_check(config=config, images=image_count(messages))
    for number, message in enumerate(messages):
        if not content_images(message["content"]):
            continue
        for index, part in enumerate(message["content"]):
            if part["type"] != "image_url":
                continue
            param = f"messages[{number}].content[{index}].image_url"
            try:
                image = image_from_url(part["image_url"]["url"])
            except (ImageInvalid, ImageTypeUnsupported, ImageTooLarge, ImageUrlRefused) as exc:
                raise OpenAIError(
                    f"{param}: {exc.detail}", status_code=exc.status_code, param=param, code=exc.code
                ) from exc
            message["content"][index] = image_part(data=image.data, content_type=image.content_type)


def _chat_admit(request) -> _Call:
    """Authenticate, rate-limit, parse, validate and admit one chat completion request: the blocking part.

    One call in a pool thread (database and Redis). Raise what :func:`openai_error` maps: 401, 429
    (``rate_limited``, ``too_many_generations``, ``quota_exceeded``, ``budget_exceeded``), 400, 404
    ``model_not_found``, 413. A request with ``{"type": "mcp"}`` tools is not admitted here: its
    servers are asked first (:func:`_server_tools_resolve`, async), then :func:`_admission_take`.
    """
    auth = APIKeyAuthentication()
    authenticated = auth.authenticate(request)
    if authenticated is None:
        raise exceptions.NotAuthenticated()
    user, api_key = authenticated
    headers = user_rate_check(user_id=user.pk, api_key=api_key)
    try:
        data = _validated(ChatCompletionInput, JSONParser().parse(io.BytesIO(request.body)))
        config = _model_get(data["model"], api_key=api_key)
        messages = [_message(m) for m in data["messages"]]
        _images_clean(messages, config)
        if config.system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": config.system_prompt})
        params = _params(config, data)
        call = _Call(
            admission=None,
            user=user,
            api_key=api_key,
            config=config,
            messages=messages,
            params=params,
            stream=bool(data.get("stream")),
            include_usage=bool((data.get("stream_options") or {}).get("include_usage")),
            headers=headers,
            mcp=[
                (index, tool["server_label"], tool.get("allowed_tools"))
                for index, tool in enumerate(data.get("tools") or ())
                if tool["type"] == "mcp"
            ],
        )
        if not call.mcp:  # else admitted once its MCP servers answered (see ChatCompletionGateway.post)
            _admission_take(call)
    except Exception as exc:
        exc.headers = headers
        raise
    return call


def _admission_take(call: _Call) -> None:
    """Admit ``call``: 429 ``too_many_generations`` / ``quota_exceeded`` / ``budget_exceeded`` before any work.

    Recorded (against the key's budgets too) once it ends. The budget reservation is the request's
    most: its prompt (messages and offered tools' schemas, characters) and ``max_tokens`` at the
    model's prices (:func:`inference.services.cost_estimate`).
    """
    chars = prompt_chars(call.messages) + sum(len(str(m.get("tool_calls") or "")) for m in call.messages)
    chars += len(str(call.params.tools or ""))
    try:
        call.admission = Admission.admit(
            user=call.user,
            generation_id=call.completion_id,
            reserve_tokens=call.params.max_tokens,
            source=UsageSource.GATEWAY,
            reserve_cost=cost_estimate(model=call.config, prompt_chars=chars, max_tokens=call.params.max_tokens),
            api_key=call.api_key,
        )
    except Exception as exc:
        exc.headers = call.headers
        raise


_aadmission_take = database_sync_to_async(_admission_take, thread_sensitive=False)


async def _server_tools_resolve(call: _Call) -> None:
    """Resolve ``call``'s ``{"type": "mcp"}`` tools (:mod:`inference.server_tools`) and offer them to the model.

    Raise a 400 ``invalid_request_error`` naming ``tools[i].server_label`` (or ``.allowed_tools``) for
    a server the user may not use, a 400 naming ``tools[i].function.name`` for a client function of
    the same name as a server tool, and a 424 ``mcp_server_unavailable`` when a server cannot be
    listed (the message names it). Servers are listed at the same time.
    """
    results = await asyncio.gather(
        *(
            server_tools_resolve(kind="mcp", user_id=call.user.pk, server_label=label, allowed_tools=allowed)
            for _, label, allowed in call.mcp
        ),
        return_exceptions=True,
    )
    for (index, _, _), result in zip(call.mcp, results, strict=True):
        if isinstance(result, ServerLabelInvalid):
            param = f"tools[{index}].{result.param_suffix}"
            raise OpenAIError(f"{param}: {result}", param=param, code="invalid_value")
        if isinstance(result, ServerToolsUnavailable):
            raise OpenAIError(
                str(result),
                status_code=424,
                type="external_connector_error",
                param=f"tools[{index}]",
                code="mcp_server_unavailable",
            )
        if isinstance(result, BaseException):
            raise result
        for tool in result:
            call.server_tools[tool.name] = tool
    functions = call.params.tools or []
    mcp_indexes = {index for index, _, _ in call.mcp}
    positions = [index for index in range(len(functions) + len(call.mcp)) if index not in mcp_indexes]
    for index, tool in zip(positions, functions, strict=True):
        if tool["function"]["name"] in call.server_tools:
            param = f"tools[{index}].function.name"
            raise OpenAIError(f"{param}: an MCP tool of this request has that name too.", param=param)
    offered = functions + [tool.openai() for tool in call.server_tools.values()]
    call.params.tools = offered or None
    if not offered:
        call.params.tool_choice = call.params.parallel_tool_calls = None


def _finish(call: _Call, generation: Generation, status: UsageStatus) -> None:
    """Free the request's slot and record it (see :meth:`accounts.metering.Admission.finish`)."""
    outcome = generation.outcome
    usage = outcome.usage or Usage(0, 0)
    call.admission.finish(
        model_slug=call.config.slug,
        provider=outcome.route.get("provider") or call.config.provider,
        deployment=outcome.route.get("deployment", ""),
        route=outcome.route.get("reason", ""),
        status=status,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cost=outcome.cost(call.config),
        ttft_ms=outcome.ttft_ms,
        latency_ms=round((time.perf_counter() - generation.started) * 1000),
        cached=outcome.cached,
    )


_afinish = database_sync_to_async(_finish, thread_sensitive=False)
# Bookkeeping that must outlive a cancelled response (the client left): strong references until done.
_background: set[asyncio.Task] = set()


def _finish_later(call: _Call, generation: Generation, status: UsageStatus) -> None:
    task = asyncio.get_running_loop().create_task(_afinish(call, generation, status))
    _background.add(task)
    task.add_done_callback(_background.discard)


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("length", "tool_calls") else "stop"


def _logprobs(entries: list[dict] | None) -> dict | None:
    """Return a choice's ``logprobs`` (``{"content": [...]}``) for ``entries``, or None."""
    return {"content": entries, "refusal": None} if entries else None


def _usage(usage: Usage | None) -> CompletionUsage:
    usage = usage or Usage()
    return CompletionUsage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


def _extra(call: _Call, generation) -> dict:
    """Return Parley's extra top-level fields of a completion (or its last chunk): ``mcp_calls`` when the
    request had MCP tools (the calls run, see :class:`inference.server_tools.ServerToolLoop`). OpenAI's
    clients keep unknown fields: ``completion.mcp_calls`` (``model_extra``)."""
    return {"mcp_calls": generation.calls} if call.mcp else {}


def _chunk(
    call: _Call,
    delta: ChoiceDelta,
    finish_reason: str | None = None,
    logprobs: list[dict] | None = None,
    **extra,
) -> bytes:
    choice = ChunkChoice.model_validate(
        {
            "index": 0,
            "delta": delta.model_dump(exclude_unset=True),
            "logprobs": _logprobs(logprobs),
            "finish_reason": finish_reason,
        }
    )
    chunk = ChatCompletionChunk(
        id=call.completion_id,
        object="chat.completion.chunk",
        created=call.created,
        model=call.config.slug,
        choices=[choice],
        **extra,
    )
    return sse_frame(chunk.model_dump_json(exclude_unset=True))


def _batch_events(call: _Call, batch: list[Chunk]):
    """Yield the ``chat.completion.chunk`` events of one batch: its text joined (with its logprobs), and
    each tool-call delta as it came (``delta.tool_calls``), in the order the model wrote them."""
    text, logprobs = [], []
    for chunk in batch:
        if chunk.tool_calls:
            if text:
                yield _chunk(call, ChoiceDelta(content="".join(text)), logprobs=logprobs)
                text, logprobs = [], []
            yield _chunk(call, ChoiceDelta.model_validate({"tool_calls": chunk.tool_calls}))
        if chunk.delta:
            text.append(chunk.delta)
        if chunk.logprobs and call.params.logprobs:
            logprobs.extend(chunk.logprobs)
    if text:
        yield _chunk(call, ChoiceDelta(content="".join(text)), logprobs=logprobs)


async def _chunk_events(call: _Call, generation: Generation, batches, first: list[Chunk] | None):
    """Yield OpenAI ``chat.completion.chunk`` server-sent events, then ``data: [DONE]``.

    The first chunk carries ``delta.role``, the last choice chunk the ``finish_reason``; with
    ``include_usage`` a final chunk with empty ``choices`` carries the usage. An error after the
    stream started is sent as an ``{"error": ...}`` event (OpenAI's clients raise it). A client that
    goes away stops the generation; the request is recorded in every case.
    """
    status = UsageStatus.CANCELLED
    try:
        yield _chunk(call, ChoiceDelta(role="assistant", content=""))
        batch = first
        while batch is not None:
            for event in _batch_events(call, batch):
                yield event
            batch = await anext(batches, None)
        yield _chunk(call, ChoiceDelta(), _finish_reason(generation.outcome.finish_reason), **_extra(call, generation))
        if call.include_usage:
            usage_chunk = ChatCompletionChunk(
                id=call.completion_id,
                object="chat.completion.chunk",
                created=call.created,
                model=call.config.slug,
                choices=[],
                usage=_usage(generation.outcome.usage),
            )
            yield sse_frame(usage_chunk.model_dump_json(exclude_unset=True))
        yield sse_frame("[DONE]")
        status = UsageStatus.COMPLETE
    except ParleyError as exc:
        status = UsageStatus.ERROR
        yield sse_frame(_from_parley(exc).body())
        yield sse_frame("[DONE]")
    finally:
        await batches.aclose()  # stops an abandoned generation
        _finish_later(call, generation, status)


@method_decorator(csrf_exempt, name="dispatch")
class ChatCompletionGateway(View):
    """``POST /v1/chat/completions``: one answer from an enabled model, whole or as server-sent events.

    Takes OpenAI's ``model``, ``messages`` (roles system/developer/user/assistant/tool, text content,
    and ``image_url`` parts in user messages for a vision model: base64 data URLs, or http(s) URLs
    when ``IMAGE_URL_FETCH`` is on; see :func:`_images_clean`;
    assistant ``tool_calls``, tool ``tool_call_id``), ``stream``, ``stream_options.include_usage``,
    ``max_tokens`` (or ``max_completion_tokens``), ``temperature`` (0 to 2), ``stop``, ``n`` (1 only),
    ``tools``, ``tool_choice``, ``parallel_tool_calls``, ``response_format`` (text, json_object,
    json_schema), ``seed``, ``top_p``, ``logprobs`` and ``top_logprobs``; other OpenAI parameters are
    ignored. A parameter the model's capabilities (``supports_tools``, ``supports_response_format``,
    ``supports_logprobs``) rule out is a 400 ``unsupported_parameter`` naming it. Tool calls come back
    as ``message.tool_calls`` (``finish_reason: "tool_calls"``), or streamed as ``delta.tool_calls``.
    ``tools`` may also name the operator's MCP servers, ``{"type": "mcp", "server_label": slug or name,
    "allowed_tools"?: [...]}``: Parley runs their tools for the client (:class:`ServerToolLoop`) and
    lists what it ran as ``mcp_calls`` (on the completion, or on the stream's last choice chunk); a
    server the user may not use is a 400 naming ``tools[i].server_label``, one that cannot be listed
    a 424 ``mcp_server_unavailable``.
    The model's system prompt goes first when the messages have no system message. The answer comes
    from the generation pipeline (:class:`inference.pipeline.Generation`), as chat turns' do: the
    ``llm`` cache (when the model's cache policy allows) with single flight, timeouts, usage.

    An async view: the request costs one hop to a pool thread to authenticate and admit it, then the
    provider streams on the event loop, then one hop records it.
    """

    http_method_names = ["post"]

    async def post(self, request):
        started = time.perf_counter()
        try:
            call = await _aadmit(request)
        except Exception as exc:
            return _error_response(exc, request)
        if call.admission is None:  # MCP tools: their servers are asked first (400, 424), then it is admitted
            try:
                await _server_tools_resolve(call)
                await _aadmission_take(call)
            except Exception as exc:
                return _error_response(exc, request, call.headers)
        if call.mcp:
            generation = ServerToolLoop(
                config=call.config,
                messages=call.messages,
                params=call.params,
                tools=call.server_tools,
                user_id=call.user.pk,
                started=started,
                max_rounds=settings.AGENTS_MAX_TOOL_CALLS,
            )
        else:
            generation = Generation(
                config=call.config,
                messages=call.messages,
                params=call.params,
                user_id=call.user.pk,
                started=started,
            )
        batches = generation.batches()
        if call.stream:
            # Wait for the first chunk here, so a model that is busy, missing or too slow is an HTTP
            # error (503, 504, ...) rather than an error event in a 200 stream.
            try:
                first = await anext(batches, None)
            except Exception as exc:
                await batches.aclose()
                await _afinish(call, generation, UsageStatus.ERROR)
                return _error_response(exc, request, call.headers)
            response = event_stream_response(_chunk_events(call, generation, batches, first))
            for name, value in call.headers.items():
                response[name] = value
            return response
        try:
            outcome = await generation.run()
        except Exception as exc:
            await _afinish(call, generation, UsageStatus.ERROR)
            return _error_response(exc, request, call.headers)
        message = {"role": "assistant", "content": outcome.content, "refusal": None}
        if outcome.tool_calls:
            message.update(content=outcome.content or None, tool_calls=outcome.tool_calls)
        choice = {
            "index": 0,
            "message": message,
            "logprobs": _logprobs(outcome.logprobs),
            "finish_reason": _finish_reason(outcome.finish_reason),
        }
        completion = ChatCompletion(
            id=call.completion_id,
            object="chat.completion",
            created=call.created,
            model=call.config.slug,
            choices=[Choice.model_validate(choice)],
            usage=_usage(outcome.usage),
            **_extra(call, generation),
        )
        return _RecordedResponse(
            lambda: _finish(call, generation, UsageStatus.COMPLETE),
            completion.model_dump_json(exclude_unset=True),
            content_type="application/json",
            headers=call.headers,
        )


_aadmit = database_sync_to_async(_chat_admit, thread_sensitive=False)


class _RecordedResponse(HttpResponse):
    """A response that records its request once it has been sent: the client does not wait for the bookkeeping.

    Servers call ``close()`` after the last byte (Django's ASGI handler in a thread, as WSGI servers
    and the test client do), so the record is written then, off the request's latency.
    """

    def __init__(self, record, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._record = record

    def close(self) -> None:
        record, self._record = self._record, None
        try:
            if record is not None:
                record()
        finally:
            # Last: it sends request_finished, which hands this thread's database connection back.
            super().close()


def _error_response(exc: Exception, request, headers: dict[str, str] | None = None) -> HttpResponse:
    """Return ``exc`` as an OpenAI-shaped JSON error; unexpected errors are logged and answered 500 in that shape."""
    error = openai_error(exc)
    if error is None:
        logger.error("Unexpected error in /v1/chat/completions", exc_info=exc)
        error = OpenAIError("The server had an error processing your request.", status_code=500, type="server_error")
    response = JsonResponse(error.body(), status=error.status_code)
    for name, value in {**(headers or {}), **getattr(exc, "headers", {})}.items():
        response[name] = value
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    if error.status_code == 401:
        response["WWW-Authenticate"] = APIKeyAuthentication().authenticate_header(request)
    return response


# --- Embeddings -------------------------------------------------------------------------------

LOCAL_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit of inputs per request
CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text: ~4 characters a token


class EmbeddingGateway(GatewayApi):
    """``POST /v1/embeddings``: one vector per input text, from the embedding model (``EMBEDDING_MODEL``).

    ``model`` may be left out, or name the served model: ``all-MiniLM-L6-v2`` (or ``local``) for the
    bundled one, else the ``EMBEDDING_MODEL`` name; anything else is 404 ``model_not_found``.
    ``encoding_format`` is ``float`` (lists of floats) or ``base64`` (little-endian float32, which
    OpenAI's Python client asks for by default). Token counts are approximate: characters / 4,
    rounded up per input, since no tokenizer is run for them. A request takes a generation slot and
    must fit in what is left of the user's daily token quota (429 ``too_many_generations`` /
    ``quota_exceeded``). Priced at ``EMBEDDING_PRICE_PER_MTOK`` USD per million tokens (default 0:
    free, never refused by a money budget); a priced request counts against the budgets of the user,
    their groups and the key (429 ``budget_exceeded`` of type ``insufficient_quota``).
    """

    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(required=False, allow_null=True)
        input = serializers.JSONField()
        encoding_format = serializers.ChoiceField(choices=["float", "base64"], required=False, default="float")

        def validate_input(self, value) -> list[str]:
            texts = [value] if isinstance(value, str) else value
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise serializers.ValidationError(
                    "Must be a string or a list of strings (token arrays are not supported)."
                )
            if not texts or len(texts) > MAX_EMBEDDING_INPUTS:
                raise serializers.ValidationError(f"Must hold 1 to {MAX_EMBEDDING_INPUTS} inputs.")
            if not all(texts):
                raise serializers.ValidationError("Inputs must not be empty strings.")
            return texts

    @extend_schema(exclude=True)
    def post(self, request):
        data = _validated(self.InputSerializer, request.data)
        served = LOCAL_EMBEDDING_MODEL if settings.EMBEDDING_MODEL == "local" else settings.EMBEDDING_MODEL
        if data.get("model") and data["model"] not in {served, settings.EMBEDDING_MODEL}:
            raise OpenAIError(
                f"The embedding model '{data['model']}' does not exist; this server embeds with '{served}'.",
                status_code=404,
                param="model",
                code="model_not_found",
            )
        texts = data["input"]
        tokens = sum(math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts)
        # Like a chat completion: a generation slot (GENERATION_CONCURRENCY), held under a lease while
        # the model runs, and the request's tokens, known in advance here, must fit in what is left
        # of today's quota (429 too_many_generations / quota_exceeded).
        cost = (tokens * settings.EMBEDDING_PRICE_PER_MTOK / MILLION).quantize(Decimal("0.000001"))
        admission = Admission.admit(
            user=request.user,
            generation_id=str(uuid.uuid4()),
            reserve_tokens=tokens,
            source=UsageSource.GATEWAY,
            must_fit=True,
            reserve_cost=cost,
            api_key=request.auth if isinstance(request.auth, APIKey) else None,
        )
        started = time.perf_counter()
        provider = "local" if settings.EMBEDDING_MODEL == "local" else "openai_compatible"
        finish = {"model_slug": served, "provider": provider, "completion_tokens": 0}
        try:
            with GenerationKeepalive(user_id=request.user.pk, generation_id=admission.generation_id):
                vectors = embed_texts(texts)
        except BaseException:
            latency_ms = round((time.perf_counter() - started) * 1000)
            admission.finish(**finish, status=UsageStatus.ERROR, prompt_tokens=0, latency_ms=latency_ms)
            raise
        latency_ms = round((time.perf_counter() - started) * 1000)
        admission.finish(**finish, status=UsageStatus.COMPLETE, prompt_tokens=tokens, latency_ms=latency_ms, cost=cost)
        base64_encoded = data["encoding_format"] == "base64"
        return Response(
            {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": _base64(vector) if base64_encoded else vector,
                    }
                    for i, vector in enumerate(vectors)
                ],
                "model": served,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _base64(vector: list[float]) -> str:
    """Return ``vector`` as base64 of little-endian float32s, OpenAI's ``encoding_format="base64"``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

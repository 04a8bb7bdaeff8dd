"""An example for every request and response body of the OpenAPI schema (issue #6: "every operation
documented with request and response examples").

Views document their main examples by hand (``extend_schema(examples=...)``); this drf-spectacular
postprocessing hook (``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``) fills in the rest, so that
Swagger UI, ReDoc and generated clients always show a body:

- a request body's form and multipart variants get the JSON variant's examples;
- an error response gets ``{"error": {"code", "detail"}}`` with the code its description names
  (the first `` `code` `` in it), else the usual code of its status;
- any other body gets a value built from its schema (formats, enums, defaults, bounds respected).
"""

from __future__ import annotations

import re
from typing import Any

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ERROR_REF = "#/components/schemas/Error"
JSON = "application/json"
# The code an error response of each status usually carries (core.errors, accounts.throttling).
STATUS_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "model_timeout",
}
STRING_FORMATS = {
    "uuid": "5d6f3c1e-8a2b-4c7d-9e0f-1a2b3c4d5e6f",
    "date-time": "2026-01-05T09:30:00Z",
    "date": "2026-01-05",
    "time": "09:30:00",
    "email": "alice@example.com",
    "uri": "https://example.com/",
    "binary": "(file contents)",
    "decimal": "0.000125",
    "ipv4": "192.0.2.1",
    "duration": "00:01:30",
}
MAX_DEPTH = 8


def _has_example(content: dict) -> bool:
    return "example" in content or "examples" in content


def sample(schema: dict, components: dict, depth: int = 0) -> Any:
    """Return a value that validates against ``schema`` (OpenAPI 3.0), resolving ``$ref`` in ``components``."""
    if depth > MAX_DEPTH or not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        return sample(components.get(schema["$ref"].rsplit("/", 1)[-1], {}), components, depth + 1)
    for key in ("example", "default"):
        if key in schema:
            return schema[key]
    if schema.get("enum"):
        return next((value for value in schema["enum"] if value is not None), None)
    if "allOf" in schema:
        merged: dict = {}
        for part in schema["allOf"]:
            value = sample(part, components, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
            elif len(schema["allOf"]) == 1:
                return value
        return merged
    for key in ("oneOf", "anyOf"):
        if schema.get(key):
            return sample(schema[key][0], components, depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        value = {name: sample(prop, components, depth + 1) for name, prop in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties")
        if not value and isinstance(extra, dict):
            value = {"key": sample(extra, components, depth + 1)}
        return value
    if kind == "array":
        return [sample(schema.get("items", {}), components, depth + 1)]
    if kind == "string":
        text = STRING_FORMATS.get(schema.get("format"), "string")
        if schema.get("maxLength") is not None:
            text = text[: schema["maxLength"]]
        return text.ljust(schema.get("minLength", 0), "x")
    if kind in ("integer", "number"):
        value = 1 if kind == "integer" else 0.5
        if schema.get("minimum") is not None:
            value = max(value, schema["minimum"])
        if schema.get("maximum") is not None:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


def _error_example(status: str, description: str) -> dict:
    named = re.search(r"`([a-z][a-z_]+)`", description or "")
    code = named.group(1) if named else STATUS_CODES.get(int(status) if status.isdigit() else 0, "error")
    # "A generation is already running (`generation_in_progress`)." -> "A generation is already running."
    detail = re.sub(r"\s*\([^)]*`[^)]*\)", "", description or "").strip() or "An error occurred."
    return {code: {"value": {"error": {"code": code, "detail": detail}}}}


def add_missing_examples(result: dict, generator, request, public) -> dict:
    """Postprocessing hook: give every request and response body of ``result`` an example."""
    components = result.get("components", {}).get("schemas", {})
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in HTTP_METHODS:
                continue
            body = operation.get("requestBody")
            if body:
                contents = body.get("content", {})
                json_examples = {k: v for k, v in contents.get(JSON, {}).items() if k in ("example", "examples")}
                for content in contents.values():
                    if _has_example(content):
                        continue
                    if json_examples:
                        content.update(json_examples)
                    else:
                        content["example"] = sample(content.get("schema", {}), components)
            for status, response in operation.get("responses", {}).items():
                for content in response.get("content", {}).values():
                    if _has_example(content):
                        continue
                    if content.get("schema") == {"$ref": ERROR_REF}:
                        content["examples"] = _error_example(status, response.get("description", ""))
                    else:
                        content["example"] = sample(content.get("schema", {}), components)
    return result

"""Providers: the ways Parley runs a model. See base.Provider for the interface."""

from .base import (
    Chunk,
    Completion,
    ContextLengthExceeded,
    GenerationParams,
    InferenceError,
    ModelBusy,
    ModelTimeout,
    ModelUnavailable,
    Provider,
    ToolCallAssembler,
    UnsupportedParameter,
    UpstreamRateLimited,
    Usage,
    tool_call_deltas,
)

__all__ = [
    "Chunk",
    "Completion",
    "ContextLengthExceeded",
    "GenerationParams",
    "InferenceError",
    "ModelBusy",
    "ModelTimeout",
    "ModelUnavailable",
    "Provider",
    "ToolCallAssembler",
    "UnsupportedParameter",
    "UpstreamRateLimited",
    "Usage",
    "tool_call_deltas",
]

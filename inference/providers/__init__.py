"""Providers: the ways Parley runs a model. See base.Provider for the interface."""

from .base import (
    Chunk,
    ContextLengthExceeded,
    GenerationParams,
    InferenceError,
    ModelUnavailable,
    Provider,
    Usage,
)

__all__ = [
    "Chunk",
    "ContextLengthExceeded",
    "GenerationParams",
    "InferenceError",
    "ModelUnavailable",
    "Provider",
    "Usage",
]

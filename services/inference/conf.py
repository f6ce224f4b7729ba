"""The inference service's settings: `InferenceSettings` in `arbiter.config.typed_settings` (each variable is
listed in README.md's "Configuration" and explained in this service's README.md). Tests change them with the
`override_arbiter_settings` fixture."""

from __future__ import annotations

from arbiter.config.typed_settings import InferenceSettings, arbiter_settings

__all__ = ["InferenceSettings", "inference_settings"]


def inference_settings() -> InferenceSettings:
    return arbiter_settings().inference

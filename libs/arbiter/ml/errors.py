"""Errors raised by `arbiter.ml`.

Every error carries a stable `code` (for the trainer's `training.failed` event and the API's error body)
and a message written for the person who uploaded the data: it says what is wrong and what to change.
"""

from __future__ import annotations


class MLError(Exception):
    """Base class: a problem the user can act on (bad data, unknown model, broken artifact)."""

    code = "ml_error"

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, object]:
        """The `{"code", "message", "details"}` shape of the API's error body."""
        return {"code": self.code, "message": self.message, "details": self.details}


class TrainingDataError(MLError):
    """The training or test rows cannot train the requested heads."""

    code = "invalid_training_data"


class BaseModelError(MLError):
    """The base encoder could not be resolved or loaded."""

    code = "base_model_unavailable"


class ArtifactError(MLError):
    """An artifact directory or blob is missing files, has an unknown format, or does not fit the request."""

    code = "invalid_artifact"


class TrainingCancelled(MLError):
    """The run was cancelled through the `should_cancel` callback."""

    code = "cancelled"

"""The engine's error types.

Every invalid generation parameter raises :class:`InvalidParameter`, which names the offending field so
that the UI can show the message next to the control and the API can answer 422 with the field path.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of errors raised by the generation engine."""


class InvalidParameter(EngineError, ValueError):
    """A generation parameter has an invalid value.

    Attributes:
        field: the parameter's name as users and the API know it (``"width"``, ``"sampler_name"`` ...).
        message: a readable explanation without the field name.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class JobCancelled(EngineError):
    """Raised inside a sampler callback when the job was interrupted or the current image skipped."""

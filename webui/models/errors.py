"""Errors raised by the model manager; each message names the file it is about."""

from __future__ import annotations


class ModelError(Exception):
    """Base class for model discovery, detection and loading errors."""


class ModelNotFound(ModelError):
    """No checkpoint or VAE matches the requested name, or the file vanished."""


class UnsafeCheckpoint(ModelError):
    """A pickle-based checkpoint asked to run code or build objects other than plain tensors."""


class CorruptCheckpoint(ModelError):
    """A checkpoint file is truncated, malformed, or its tensors do not fit the detected architecture."""


class UnknownArchitecture(ModelError):
    """The keys and shapes of a checkpoint match no supported model family."""

"""Wrappers around extension code that runs inside a job (samplers, denoiser wrappers).

An exception raised by the extension's own code is reported to the failure handler and turned into a clear
:class:`~webui.extensions.hooks.ExtensionError`. Exceptions that merely pass through it (raised by the
engine's model or progress callback it was handed: interrupts, skips, another extension's failure) and
invalid user parameters propagate unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from webui.extensions.hooks import ExtensionError, FailureHandler, passes_through


class _Relay:
    """Calls ``inner`` and remembers the exceptions it raised, so they are not blamed on the extension."""

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner
        self.raised: list[BaseException] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.inner(*args, **kwargs)
        except BaseException as exc:
            self.raised.append(exc)
            raise

    def __getattr__(self, name: str) -> Any:  # denoisers expose attributes (tracker, inner ...)
        return getattr(self.inner, name)

    def owns(self, exc: BaseException) -> bool:
        return any(exc is seen for seen in self.raised)


def _blame(
    exc: BaseException, relays: list[_Relay], owner: str, where: str, on_failure: FailureHandler
) -> None:
    if passes_through(exc) or any(relay.owns(exc) for relay in relays):
        raise exc
    on_failure(owner, where, exc)
    raise ExtensionError(owner, where, exc) from exc


def guard_sampler(
    fn: Callable[..., Any], owner: str, where: str, on_failure: FailureHandler
) -> Callable[..., Any]:
    """Wrap a k-diffusion-style sampling function; the signature (for option checks) is kept."""

    @functools.wraps(fn)
    def guarded(model: Callable[..., Any], x: Any, sigmas: Any, *args: Any, **kwargs: Any) -> Any:
        relays = [_Relay(model)]
        if kwargs.get("callback") is not None:
            relays.append(_Relay(kwargs["callback"]))
            kwargs["callback"] = relays[-1]
        elif len(args) >= 2 and args[1] is not None:  # (extra_args, callback, ...) given by position
            relays.append(_Relay(args[1]))
            args = (args[0], relays[-1], *args[2:])
        try:
            return fn(relays[0], x, sigmas, *args, **kwargs)
        except (Exception, SystemExit) as exc:
            _blame(exc, relays, owner, where, on_failure)
            raise  # unreachable: _blame always raises

    return guarded


class _GuardedDenoiser:
    """A wrapped denoiser whose failures are attributed to the wrapper's extension; other attributes
    (``tracker`` ...) are read from the model it wraps."""

    def __init__(
        self, wrapped: Callable[..., Any], relay: _Relay, owner: str, on_failure: FailureHandler
    ) -> None:
        self._wrapped, self._relay, self._owner, self._on_failure = wrapped, relay, owner, on_failure

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._wrapped(*args, **kwargs)
        except (Exception, SystemExit) as exc:
            _blame(exc, [self._relay], self._owner, "denoiser wrapper", self._on_failure)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relay.inner, name)


def wrap_denoiser(
    model: Callable[..., Any],
    factory: Callable[[Callable[..., Any]], Callable[..., Any]],
    owner: str,
    on_failure: FailureHandler,
) -> Callable[..., Any]:
    """Apply one denoiser wrapper ``factory(model) -> model`` with failures attributed to ``owner``."""
    relay = _Relay(model)
    try:
        wrapped = factory(relay)
    except (Exception, SystemExit) as exc:
        _blame(exc, [relay], owner, "denoiser wrapper", on_failure)
        raise
    if not callable(wrapped):
        error = TypeError(f"the denoiser wrapper returned {type(wrapped).__name__}, not a callable")
        _blame(error, [], owner, "denoiser wrapper", on_failure)
    return _GuardedDenoiser(wrapped, relay, owner, on_failure)


def call_guarded(
    fn: Callable[..., Any], owner: str, where: str, on_failure: FailureHandler, *args: Any, **kwargs: Any
) -> Any:
    """Call extension code (a UI builder, a route handler, an infotext parser) with failures attributed."""
    try:
        return fn(*args, **kwargs)
    except (Exception, SystemExit) as exc:
        _blame(exc, [], owner, where, on_failure)
        raise

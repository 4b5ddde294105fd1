"""The hook bus: named, ordered lists of callbacks, each recorded with the extension that added it.

The engine and the app fire hooks at fixed points; a hook that raises never takes the application down. Its
extension is reported to the failure handler (the host marks it failed and disables it for the session)
and, for hooks that run inside a job, the job fails with a clear :class:`ExtensionError`.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from webui.engine.errors import InvalidParameter, JobCancelled

log = logging.getLogger(__name__)

# hook name -> what its callbacks receive (keyword arguments)
HOOK_NAMES = (
    "before_process",  # params, extension_args, extra_generation_params; may return amended params
    "on_step",  # x, i, sigma, sigma_hat, denoised (k-diffusion's callback dict), job
    "after_decode",  # images, params; may return new images
    "before_image_saved",  # image, infotext, params, index; may return a new image
    "after_image_saved",  # image, path, infotext, params, index
    "model_loaded",  # model
    "app_started",  # context
)
JOB_HOOKS = frozenset(
    {"before_process", "on_step", "after_decode", "before_image_saved", "after_image_saved"}
)
FailureHandler = Callable[[str, str, BaseException], None]


class ExtensionError(RuntimeError):
    """Code of an extension raised; the message names the extension and where it failed.

    Attributes:
        extension_id: the extension's id.
        where: the hook, sampler or callback that failed (``"on_step"``, ``"sampler iPNDM"``).
    """

    def __init__(self, extension_id: str, where: str, cause: BaseException) -> None:
        self.extension_id = extension_id
        self.where = where
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        super().__init__(f"extension {extension_id} failed in {where}: {detail}")


@dataclass(frozen=True)
class HookEntry:
    """One subscribed callback."""

    name: str
    owner: str
    fn: Callable[..., Any]
    order: int = 0
    seq: int = 0

    @functools.cached_property
    def keywords(self) -> frozenset[str] | None:
        """The keyword arguments ``fn`` takes (None: any, it has ``**kwargs`` or no signature); read once,
        not on every call (``on_step`` runs per sampling step)."""
        try:
            params = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature get everything
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return frozenset(p.name for p in params if p.kind in kinds)

    def call(self, *args: Any, **payload: Any) -> Any:
        """Call ``fn`` with the payload keys it accepts (all of them if it takes ``**kwargs``), so hooks
        written for an older facade keep working when a hook's payload grows."""
        names = self.keywords
        if names is not None:
            payload = {k: v for k, v in payload.items() if k in names}
        return self.fn(*args, **payload)


def check_hook_name(name: str) -> str:
    """Return ``name`` if it is a known hook; otherwise raise InvalidParameter listing the valid ones."""
    if name not in HOOK_NAMES:
        raise InvalidParameter("hook", f"unknown hook {name!r}; valid: {', '.join(HOOK_NAMES)}")
    return name


def passes_through(exc: BaseException) -> bool:
    """Exceptions that are not the failing extension's fault: cancellation, invalid user parameters and
    errors already attributed to an extension."""
    return isinstance(exc, (JobCancelled, InvalidParameter, ExtensionError))


class HookBus:
    """Hook lists per name, ordered by ``order`` and then by subscription order."""

    def __init__(self, on_failure: FailureHandler | None = None) -> None:
        self._lock = threading.RLock()
        self._hooks: dict[str, list[HookEntry]] = {name: [] for name in HOOK_NAMES}
        self._counter = itertools.count()
        self._on_failure = on_failure

    def set_failure_handler(self, handler: FailureHandler | None) -> None:
        """Set the function told about failing hooks: ``handler(owner, hook_name, exception)``."""
        self._on_failure = handler

    def add(self, name: str, fn: Callable[..., Any], owner: str, order: int = 0) -> HookEntry:
        """Subscribe ``fn`` to the hook ``name`` on behalf of ``owner``."""
        check_hook_name(name)
        if not callable(fn):
            raise InvalidParameter("hook", f"the callback for {name!r} is not callable")
        entry = HookEntry(name, owner, fn, int(order), next(self._counter))
        with self._lock:
            entries = [*self._hooks[name], entry]
            self._hooks[name] = sorted(entries, key=lambda e: (e.order, e.seq))
        return entry

    def remove_owner(self, owner: str) -> int:
        """Remove every callback of ``owner``; return how many were removed."""
        removed = 0
        with self._lock:
            for name, entries in self._hooks.items():
                kept = [e for e in entries if e.owner != owner]
                removed += len(entries) - len(kept)
                self._hooks[name] = kept
        return removed

    def entries(self, name: str) -> tuple[HookEntry, ...]:
        """The callbacks subscribed to ``name``, in call order."""
        check_hook_name(name)
        with self._lock:
            return tuple(self._hooks[name])

    def owners(self) -> set[str]:
        """Owners with at least one callback."""
        with self._lock:
            return {e.owner for entries in self._hooks.values() for e in entries}

    def _failed(self, entry: HookEntry, exc: BaseException) -> None:
        log.error("extension %s failed in hook %s", entry.owner, entry.name, exc_info=exc)
        self.remove_owner(entry.owner)
        if self._on_failure is not None:
            self._on_failure(entry.owner, entry.name, exc)
        if entry.name in JOB_HOOKS:
            raise ExtensionError(entry.owner, entry.name, exc) from exc

    def fire(self, name: str, **payload: Any) -> list[Any]:
        """Call every callback of ``name`` with ``payload``; return their non-None results in order.

        A callback that raises is logged and its extension reported as failed; for job-time hooks
        (:data:`JOB_HOOKS`) an :class:`ExtensionError` is then raised, other hooks carry on.
        """
        results = []
        for entry in self.entries(name):
            try:
                result = entry.call(**payload)
            except (Exception, SystemExit) as exc:
                if passes_through(exc):
                    raise
                self._failed(entry, exc)
                continue
            if result is not None:
                results.append(result)
        return results

    def pipe(self, name: str, value: Any, **payload: Any) -> Any:
        """Pass ``value`` through the callbacks of ``name``: each gets it as its first argument and may
        return a replacement (None keeps it). Failures are handled as in :meth:`fire`.
        """
        for entry in self.entries(name):
            try:
                result = entry.call(value, **payload)
            except (Exception, SystemExit) as exc:
                if passes_through(exc):
                    raise
                self._failed(entry, exc)
                continue
            if result is not None:
                value = result
        return value

"""Type checks for settings sent to ``POST /sdapi/v1/options`` and in ``override_settings``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from webui.api.limits import DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_MB
from webui.config.options import OPTION_DEFAULTS, Options
from webui.engine.errors import InvalidParameter

# Settings the API reads that the settings table may not list yet, with their defaults.
API_OPTION_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "api_enable_requests": False,
        "api_max_request_mb": DEFAULT_MAX_REQUEST_MB,
        "api_max_pixels": DEFAULT_MAX_PIXELS,
    }
)


def known_settings(options: Options) -> dict[str, Any]:
    """Every setting name the API accepts, with its current value."""
    return {**API_OPTION_DEFAULTS, **options.as_dict()}


def _coerce(name: str, value: Any, reference: Any, field: str) -> Any:
    def wrong(expected: str) -> InvalidParameter:
        return InvalidParameter(field, f"setting {name!r} expects {expected}, got {value!r}")

    if reference is None or value is None:
        return value
    if isinstance(reference, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(reference, int):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("an integer")
        if isinstance(value, float) and not value.is_integer():
            raise wrong("an integer")
        return int(value)
    if isinstance(reference, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if isinstance(reference, str):
        if not isinstance(value, str):
            raise wrong("a string")
        return value
    if isinstance(reference, list | tuple):
        if not isinstance(value, list):
            raise wrong("a list")
        return value
    if isinstance(reference, dict) and not isinstance(value, dict):
        raise wrong("an object")
    return value


def check_settings(options: Options, changes: Mapping[str, Any], field_prefix: str = "") -> dict[str, Any]:
    """Validate setting changes by name and by the type of the setting's default (or current value).

    Returns the changes with numbers normalised (``5.0`` -> ``5`` for integer settings). Unknown names and
    wrong types raise :class:`InvalidParameter` for ``<field_prefix><name>``; unknown names list the
    known ones.
    """
    known = known_settings(options)
    checked: dict[str, Any] = {}
    for name, value in changes.items():
        field = f"{field_prefix}{name}"
        if name not in known:
            raise InvalidParameter(field, f"unknown setting {name!r}; valid: {', '.join(sorted(known))}")
        reference = OPTION_DEFAULTS.get(name, API_OPTION_DEFAULTS.get(name, known[name]))
        checked[name] = _coerce(name, value, reference, field)
    return checked

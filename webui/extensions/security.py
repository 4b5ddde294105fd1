"""The extension access gate, with A1111's rules.

Installing, updating, enabling and reloading extensions run code from the internet on the server. While the
server is reachable from other hosts (``--listen``, ``--share``, ``--ngrok``, ``--server-name``) these
actions are refused unless ``--enable-insecure-extension-access`` is given. ``--disable-all-extensions``
starts with no extension loaded; ``--disable-extra-extensions`` loads only the built-in ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LOAD_ALL, LOAD_BUILTIN, LOAD_NONE = "none", "extra", "all"  # values of A1111's "disable_all_extensions"


class ExtensionAccessDenied(PermissionError):
    """An extension action was refused by the access gate."""


@dataclass(frozen=True)
class AccessGate:
    """Which extension actions are allowed in this session.

    Attributes:
        reachable_from_other_hosts: the server listens beyond loopback or through a tunnel.
        insecure_access: ``--enable-insecure-extension-access`` was given.
        disabled: ``"none"`` (load every enabled extension), ``"extra"`` (only built-ins) or ``"all"``.
    """

    reachable_from_other_hosts: bool = False
    insecure_access: bool = False
    disabled: str = LOAD_ALL

    @classmethod
    def from_flags(cls, flags: Any, options: Any = None) -> AccessGate:
        """The gate for parsed :class:`~webui.config.flags.Flags` and, optionally, the settings.

        The setting ``disable_all_extensions`` (A1111's "Disable all extensions" radio) is honoured when
        no flag says otherwise.
        """
        disabled = LOAD_ALL
        if options is not None and options.get("disable_all_extensions", LOAD_ALL) in (
            LOAD_BUILTIN,
            LOAD_NONE,
        ):
            disabled = options.get("disable_all_extensions")
        if getattr(flags, "disable_extra_extensions", False):
            disabled = LOAD_BUILTIN
        if getattr(flags, "disable_all_extensions", False):
            disabled = LOAD_NONE
        return cls(
            reachable_from_other_hosts=bool(getattr(flags, "reachable_from_other_hosts", False)),
            insecure_access=bool(getattr(flags, "enable_insecure_extension_access", False)),
            disabled=disabled,
        )

    @property
    def changes_allowed(self) -> bool:
        """Whether installing, updating and enabling extensions is allowed."""
        return self.insecure_access or not self.reachable_from_other_hosts

    def check(self, action: str) -> None:
        """Raise :class:`ExtensionAccessDenied` if ``action`` ("install", "update" ...) is not allowed."""
        if not self.changes_allowed:
            raise ExtensionAccessDenied(
                f"extension {action} refused: the server is reachable from other hosts "
                "(--listen, --share, --ngrok or --server-name); restart with "
                "--enable-insecure-extension-access to allow changes to extensions"
            )

    def may_load(self, builtin: bool) -> bool:
        """Whether an extension may be loaded at all under ``--disable-(all|extra)-extensions``."""
        if self.disabled == LOAD_NONE:
            return False
        return builtin or self.disabled != LOAD_BUILTIN

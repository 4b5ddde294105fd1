"""Extra-network tags in prompts: ``<lora:name:0.8>``, ``<hypernet:name:1>``, ``<lyco:...>`` ...

A tag is ``<kind:arg1:arg2:...>``; arguments of the form ``key=value`` are named, the others positional.
Tags are removed from the text before it is encoded; the infotext keeps the prompt as written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from webui.engine.errors import InvalidParameter

_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkParams:
    """The arguments of one tag, e.g. ``["name", "0.8"]`` for ``<lora:name:0.8>``."""

    items: list[str] = field(default_factory=list)

    @property
    def positional(self) -> list[str]:
        """Arguments without ``=`` (or with more than one), in order."""
        return [item for item in self.items if item.count("=") != 1]

    @property
    def named(self) -> dict[str, str]:
        """Arguments written ``key=value``."""
        return dict(item.split("=", 1) for item in self.items if item.count("=") == 1)


def parse_extra_networks(text: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    """Remove the tags from ``text`` and group their arguments by network kind.

    >>> parse_extra_networks("a cat <lora:fluffy:0.8>")
    ('a cat ', {'lora': [ExtraNetworkParams(items=['fluffy', '0.8'])]})
    """
    found: dict[str, list[ExtraNetworkParams]] = {}

    def take(match: re.Match[str]) -> str:
        found.setdefault(match.group(1), []).append(ExtraNetworkParams(match.group(2).split(":")))
        return ""

    return _TAG.sub(take, text), found


def parse_extra_network_prompts(
    prompts: Sequence[str],
) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Strip tags from every prompt of a batch; the networks are those of the first prompt (as A1111)."""
    stripped: list[str] = []
    networks: dict[str, list[ExtraNetworkParams]] | None = None
    for prompt in prompts:
        text, found = parse_extra_networks(prompt)
        stripped.append(text)
        if networks is None:
            networks = found
    return stripped, networks or {}


@dataclass(frozen=True)
class LoraArgs:
    """A LoRA tag's arguments: ``<lora:name:te:unet:dyn>`` or ``te=``, ``unet=``, ``dyn=``."""

    name: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None


def lora_args(params: ExtraNetworkParams) -> LoraArgs:
    """Read a LoRA tag's name and multipliers; the UNet multiplier defaults to the text-encoder one."""
    positional, named = params.positional, params.named
    if not positional or not positional[0]:
        raise InvalidParameter("prompt", f"LoRA tag without a name: <lora:{':'.join(params.items)}>")
    try:
        te = float(named.get("te", positional[1] if len(positional) > 1 else 1.0))
        unet = float(named.get("unet", positional[2] if len(positional) > 2 else te))
        dyn_text = named.get("dyn", positional[3] if len(positional) > 3 else None)
        dyn = int(dyn_text) if dyn_text is not None else None
    except ValueError as error:
        raise InvalidParameter("prompt", f"bad number in <lora:{':'.join(params.items)}>: {error}") from None
    return LoraArgs(positional[0], te, unet, dyn)

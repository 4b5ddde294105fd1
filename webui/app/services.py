"""What every tab builder receives: the application context and the UI's own stores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from webui.app.ui_state import UiState
from webui.context import AppContext
from webui.engine.styles import StyleDatabase


@dataclass
class UiServices:
    """The context plus ``ui-config.json`` and ``styles.csv``; one per built UI."""

    ctx: AppContext
    state: UiState
    styles: StyleDatabase

    @classmethod
    def for_context(cls, ctx: AppContext) -> UiServices:
        """Open the UI stores of ``ctx``'s data folder."""
        return cls(ctx, UiState(ctx.paths.ui_config_file), StyleDatabase(ctx.paths.styles_file))

    def sampler_labels(self) -> list[str]:
        """Sampler names for the dropdowns, from the registry."""
        return list(self.ctx.samplers.labels())

    def schedule_labels(self) -> list[str]:
        """Schedule type names for the dropdowns, from the registry."""
        return list(self.ctx.schedules.labels())


@dataclass
class Form:
    """The controls of one tab by GenerationParams field, with their ui-config labels.

    Controls are created with :meth:`saved` as their initial value so last-used values come back.
    """

    tab: str
    ui: UiServices
    fields: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def saved(self, label: str, default: Any) -> Any:
        """The last-used value of the control labelled ``label`` (or ``default``)."""
        return self.ui.state.get(self.tab, label, default)

    def add(self, name: str, component: Any, label: str | None = None) -> Any:
        """Register ``component`` as the control of field ``name``; returns it."""
        self.fields[name] = component
        if label is not None:
            self.labels[name] = label
        return component

    def inputs(self) -> set[Any]:
        """Every control, for an event that reads the whole form as a dict."""
        return set(self.fields.values())

    def values(self, data: Mapping[Any, Any]) -> dict[str, Any]:
        """``{field: value}`` from the ``{component: value}`` dict Gradio passes."""
        return {name: data[comp] for name, comp in self.fields.items() if comp in data}

    def remember(self, values: Mapping[str, Any]) -> None:
        """Save the values of labelled controls to ui-config.json."""
        self.ui.state.remember(self.tab, {self.labels[k]: v for k, v in values.items() if k in self.labels})

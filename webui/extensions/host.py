"""The extension host: finds extension folders, loads them in order, records what each registers, and
enables, disables, reloads, installs, updates and removes them.

Nothing an extension does can stop the application: a folder with a bad manifest, an import error, an
exception in ``setup``, a wrong facade version or a duplicate id leaves that extension ``failed`` with the
error text and traceback, and the others load. Later failures (in hooks, samplers, denoiser wrappers,
routes) go through :meth:`ExtensionHost.mark_failed`, which removes the extension's registrations for the
rest of the session.
"""

from __future__ import annotations

import functools
import logging
import shutil
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.engine.errors import InvalidParameter
from webui.extensions import git
from webui.extensions.api import FACADE_VERSION, ExtensionAPI
from webui.extensions.contributions import (
    Contributions,
    DenoiserWrapper,
    FormTab,
    InfotextField,
    RouteSpec,
    SettingSpec,
    UISection,
    UITab,
)
from webui.extensions.guards import call_guarded, wrap_denoiser
from webui.extensions.hooks import HookBus
from webui.extensions.loading import forget_package, load_entry, package_name
from webui.extensions.manifest import ExtensionManifest, ManifestError, read_manifest, version_satisfies
from webui.extensions.security import AccessGate
from webui.extensions.services import HostServices

log = logging.getLogger(__name__)

LOADED, DISABLED, FAILED = "loaded", "disabled", "failed"
DISABLED_OPTION = "disabled_extensions"  # A1111's setting name: ids of extensions the user turned off


class ExtensionInstallError(RuntimeError):
    """An install, update or removal was refused (folder exists, URL already installed, bad manifest...)."""


@dataclass(frozen=True)
class ExtensionStatus:
    """One row of the Extensions tab and of ``/sdapi/v1/extensions``.

    ``status`` is ``"loaded"``, ``"disabled"`` or ``"failed"`` (then ``error`` and ``traceback`` say why);
    ``enabled`` is the user's choice, which a failure does not change.
    """

    id: str
    name: str
    version: str
    path: Path
    folder: str
    remote_url: str | None
    branch: str | None
    commit: str | None
    commit_date: str | None
    enabled: bool
    status: str
    error: str | None
    traceback: str | None
    builtin: bool
    description: str


@dataclass
class _Entry:
    key: str
    folder: Path
    builtin: bool
    manifest: ExtensionManifest | None
    status: str = DISABLED
    error: str | None = None
    traceback: str | None = None
    repo: git.RepoInfo = field(default_factory=lambda: git.RepoInfo(None, None, None, None))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ExtensionHost:
    """Loads extensions from ``extensions_dir`` (and read-only ``builtin_dirs``) into the app's registries.

    Args:
        extensions_dir: the user's extensions folder (installs go here).
        services: registries and settings the extensions add to.
        gate: the access gate (A1111's ``--enable-insecure-extension-access`` rules).
        builtin_dirs: folders of extensions shipped with the app (loaded first; never removed).
        data_root: parent of each extension's ``api.data_dir`` (default ``<extensions_dir>/../extension-data``).
        skip_install: do not pip-install declared requirements (``--skip-install``).
        runner: runs git/pip commands (tests inject one to observe pip without a network).
    """

    def __init__(
        self,
        extensions_dir: Path,
        services: HostServices,
        *,
        gate: AccessGate | None = None,
        builtin_dirs: Sequence[Path] = (),
        data_root: Path | None = None,
        skip_install: bool = False,
        runner: git.Runner = git.run_command,
        python: str = sys.executable,
    ) -> None:
        self.extensions_dir = Path(extensions_dir)
        self.services = services
        self.gate = gate or AccessGate()
        self.builtin_dirs = tuple(
            Path(d) for d in builtin_dirs if Path(d).resolve() != self.extensions_dir.resolve()
        )
        self.data_root = data_root or self.extensions_dir.parent / "extension-data"
        self.skip_install = skip_install
        self.hooks = HookBus(self.mark_failed)
        self.contributions = Contributions()
        self._runner = runner
        self._python = python
        self._lock = threading.RLock()
        self._install_lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._disabled_memory: set[str] = set()

    @classmethod
    def from_context(cls, ctx: Any) -> ExtensionHost:
        """A host for an :class:`~webui.context.AppContext`: its registries, settings and flags; the
        repository's ``extensions/`` folder is a built-in folder when ``--data-dir`` points elsewhere."""
        return cls(
            ctx.paths.extensions_dir,
            HostServices.from_context(ctx),
            gate=AccessGate.from_flags(ctx.flags, ctx.options),
            builtin_dirs=(ctx.paths.root / "extensions",),
            skip_install=bool(getattr(ctx.flags, "skip_install", False)),
        )

    # --- settings of which extensions are off -----------------------------------------------------------

    def _disabled_ids(self) -> set[str]:
        options = self.services.options
        if options is None:
            return set(self._disabled_memory)
        return set(options.get(DISABLED_OPTION, []) or [])

    def _set_disabled(self, ext_id: str, disabled: bool) -> None:
        ids = self._disabled_ids()
        ids = ids | {ext_id} if disabled else ids - {ext_id}
        if self.services.options is None:
            self._disabled_memory = ids
        else:
            self.services.options.update({DISABLED_OPTION: sorted(ids)})

    # --- discovery and ordering -------------------------------------------------------------------------

    def _folders(self) -> list[tuple[Path, bool]]:
        found = []
        for root, builtin in [*((d, True) for d in self.builtin_dirs), (self.extensions_dir, False)]:
            if not root.is_dir():
                continue
            for folder in sorted(root.iterdir()):
                if folder.is_dir() and not folder.name.startswith((".", "_")):
                    found.append((folder, builtin))
        return found

    def _make_entry(self, folder: Path, builtin: bool) -> _Entry:
        repo = git.repo_info(folder, self._runner)
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            key = self._free_key(folder.name)
            return _Entry(key, folder, builtin, None, FAILED, f"invalid manifest: {exc}", None, repo)
        if manifest.id in self._entries:
            first = self._entries[manifest.id].folder
            key = self._free_key(folder.name)
            error = f"duplicate id {manifest.id!r}: already provided by {first}"
            return _Entry(key, folder, builtin, manifest, FAILED, error, None, repo)
        return _Entry(manifest.id, folder, builtin, manifest, DISABLED, None, None, repo)

    def _free_key(self, name: str) -> str:
        key, n = name, 1
        while key in self._entries:
            n += 1
            key = f"{name}~{n}"
        return key

    def _load_order(self) -> list[_Entry]:
        """Valid entries ordered by their load_after / load_before hints (built-ins, then ids, break ties)."""
        entries = {
            k: e for k, e in self._entries.items() if e.manifest is not None and e.key == e.manifest.id
        }
        after: dict[str, set[str]] = {k: set() for k in entries}
        for key, entry in entries.items():
            assert entry.manifest is not None
            after[key] |= {other for other in entry.manifest.load_after if other in entries}
            for other in entry.manifest.load_before:
                if other in entries:
                    after[other].add(key)
        order: list[_Entry] = []
        remaining = dict(after)
        while remaining:
            ready = [k for k, deps in remaining.items() if not deps & remaining.keys()]
            if not ready:  # a cycle: warn and fall back to the plain order for the rest
                log.warning("extension load hints form a cycle among: %s", ", ".join(sorted(remaining)))
                ready = list(remaining)
            ready.sort(key=lambda k: (not entries[k].builtin, k))
            order.append(entries[ready[0]])
            del remaining[ready[0]]
        return order

    # --- loading and unloading --------------------------------------------------------------------------

    def load_all(self) -> list[ExtensionStatus]:
        """(Re)discover every extension folder and load the enabled ones; returns :meth:`list`."""
        with self._lock:
            self.unload_all()
            self._entries = {}
            for folder, builtin in self._folders():
                entry = self._make_entry(folder, builtin)
                self._entries[entry.key] = entry
            disabled = self._disabled_ids()
            for entry in self._load_order():
                if entry.key in disabled or not self.gate.may_load(entry.builtin):
                    entry.status = DISABLED
                else:
                    self._load(entry)
            return self.list()

    def _load(self, entry: _Entry) -> None:
        manifest = entry.manifest
        assert manifest is not None
        entry.error = entry.traceback = None
        if not version_satisfies(FACADE_VERSION, manifest.facade):
            entry.status = FAILED
            entry.error = f"needs facade version {manifest.facade}; this app provides {FACADE_VERSION}"
            return
        package = package_name(manifest.id)
        try:
            setup = load_entry(entry.folder, package, manifest.entry_module, manifest.entry_function)
            api = ExtensionAPI(
                manifest.id,
                manifest.name,
                services=self.services,
                hooks=self.hooks,
                contributions=self.contributions,
                on_failure=self.mark_failed,
                data_dir=self.data_root / manifest.id,
                extension_dir=entry.folder,
            )
            setup(api)
        except (Exception, SystemExit) as exc:
            self._remove_registrations(manifest.id)
            forget_package(package)
            entry.status, entry.error = FAILED, _describe(exc)
            entry.traceback = "".join(traceback.format_exception(exc))
            log.error("extension %s failed to load: %s", manifest.id, entry.error)
            return
        entry.status = LOADED
        log.info("extension %s %s loaded", manifest.id, manifest.version)

    def _remove_registrations(self, owner: str) -> None:
        self.services.samplers.unregister_owner(owner)
        self.services.schedules.unregister_owner(owner)
        self.services.upscalers.unregister_owner(owner)
        self.hooks.remove_owner(owner)
        self.contributions.remove_owner(owner)

    def _unload(self, entry: _Entry) -> None:
        if entry.manifest is not None and entry.key == entry.manifest.id:
            self._remove_registrations(entry.key)
            forget_package(package_name(entry.key))

    def unload_all(self) -> None:
        """Remove every extension's registrations and modules (statuses become ``disabled``)."""
        with self._lock:
            for entry in self._entries.values():
                if entry.status == LOADED:
                    self._unload(entry)
                    entry.status = DISABLED

    def mark_failed(self, ext_id: str, where: str, exc: BaseException) -> None:
        """Record that ``ext_id`` failed at run time in ``where`` and remove it for this session."""
        with self._lock:
            entry = self._entries.get(ext_id)
            if entry is None:
                return
            self._unload(entry)
            entry.status = FAILED
            entry.error = f"failed in {where}: {_describe(exc)}"
            entry.traceback = "".join(traceback.format_exception(exc))
        log.error("extension %s disabled for this session: %s", ext_id, entry.error)

    # --- queries ------------------------------------------------------------------------------------------

    def _status(self, entry: _Entry) -> ExtensionStatus:
        m = entry.manifest
        return ExtensionStatus(
            id=m.id if m else entry.key,
            name=m.name if m else entry.folder.name,
            version=m.version if m else "",
            path=entry.folder,
            folder=entry.folder.name,
            remote_url=entry.repo.remote_url,
            branch=entry.repo.branch,
            commit=entry.repo.commit,
            commit_date=entry.repo.commit_date,
            enabled=entry.key not in self._disabled_ids(),
            status=entry.status,
            error=entry.error,
            traceback=entry.traceback,
            builtin=entry.builtin,
            description=m.description if m else "",
        )

    def list(self) -> list[ExtensionStatus]:
        """Every extension folder found, in discovery order."""
        with self._lock:
            return [self._status(e) for e in self._entries.values()]

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name) or next(
            (e for e in self._entries.values() if e.folder.name == name), None
        )
        if entry is None:
            raise InvalidParameter(
                "extension", f"unknown extension {name!r}; valid: {', '.join(self._entries) or '(none)'}"
            )
        return entry

    def get(self, name: str) -> ExtensionStatus:
        """The status of the extension with id (or folder name) ``name``."""
        with self._lock:
            return self._status(self._entry(name))

    def installed_urls(self) -> set[str]:
        """Normalised remote URLs of the installed extensions (to mark index entries as installed)."""
        with self._lock:
            return {git.normalize_url(e.repo.remote_url) for e in self._entries.values() if e.repo.remote_url}

    # --- enable, disable, reload --------------------------------------------------------------------------

    def disable(self, name: str) -> ExtensionStatus:
        """Turn an extension off (remembered in ``config.json``) and remove its registrations."""
        with self._lock:
            entry = self._entry(name)
            if entry.status == LOADED:
                self._unload(entry)
            if entry.manifest is not None and entry.key == entry.manifest.id:  # broken folders stay failed
                entry.status, entry.error, entry.traceback = DISABLED, None, None
            self._set_disabled(entry.key, True)
            return self._status(entry)

    def enable(self, name: str) -> ExtensionStatus:
        """Turn an extension on and load it (refused by the access gate while exposed to other hosts)."""
        self.gate.check("enable")
        with self._lock:
            entry = self._entry(name)
            self._set_disabled(entry.key, False)
            loadable = entry.manifest is not None and entry.key == entry.manifest.id
            if entry.status != LOADED and loadable and self.gate.may_load(entry.builtin):
                self._load(entry)
            return self._status(entry)

    def reload(self, name: str) -> ExtensionStatus:
        """Unload, re-read the manifest and code, and load again (if enabled)."""
        self.gate.check("reload")
        with self._lock:
            entry = self._entry(name)
            self._unload(entry)
            del self._entries[entry.key]
            fresh = self._make_entry(entry.folder, entry.builtin)
            self._entries[fresh.key] = fresh
            if fresh.status != FAILED:
                if fresh.key in self._disabled_ids() or not self.gate.may_load(fresh.builtin):
                    fresh.status = DISABLED
                else:
                    self._load(fresh)
            return self._status(fresh)

    # --- git: install, update, remove ---------------------------------------------------------------------

    def install(self, url: str, branch: str | None = None, folder: str | None = None) -> ExtensionStatus:
        """Clone ``url`` into ``extensions/<folder>``, validate its manifest, install its requirements
        (unless ``skip_install``) and load it. Refuses an existing folder or an already installed URL."""
        self.gate.check("install")
        url = git.validate_url(url)
        name = git.check_folder_name(folder or git.folder_name_for(url))
        dest = self.extensions_dir / name
        staging = self.extensions_dir / f".installing-{name}"
        with self._install_lock:  # installs are serialised; the slow part runs without the main lock
            with self._lock:
                self._check_installable(dest, url, None)
            self.extensions_dir.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                git.remove_folder(staging, self.extensions_dir)
            try:
                git.clone(url, staging, branch, runner=self._runner)
                manifest = read_manifest(staging)
                with self._lock:
                    self._check_installable(dest, url, manifest.id)
                if not self.skip_install:
                    git.install_requirements(manifest.requirements, python=self._python, runner=self._runner)
                with self._lock:
                    staging.rename(dest)
                    entry = self._make_entry(dest, builtin=False)
                    self._entries[entry.key] = entry
                    if entry.status != FAILED and self.gate.may_load(False):
                        self._load(entry)
                    return self._status(entry)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)

    def _check_installable(self, dest: Path, url: str, ext_id: str | None) -> None:
        if dest.exists():
            raise ExtensionInstallError(f"folder {dest} already exists; choose another folder name")
        if git.normalize_url(url) in self.installed_urls():
            raise ExtensionInstallError(f"{url} is already installed")
        if ext_id is not None and ext_id in self._entries:
            raise ExtensionInstallError(f"an extension with id {ext_id!r} is already installed")

    def check_for_updates(self, name: str) -> bool:
        """``git fetch`` the extension and tell whether its upstream has new commits."""
        with self._lock:
            entry = self._entry(name)
        if entry.repo.remote_url is None:
            return False
        return git.has_updates(entry.folder, runner=self._runner)

    def update(self, name: str) -> ExtensionStatus:
        """``git pull --ff-only``, re-validate the manifest, install requirements and reload."""
        self.gate.check("update")
        with self._install_lock:
            with self._lock:
                entry = self._entry(name)
            if entry.repo.remote_url is None:
                raise ExtensionInstallError(f"{entry.folder.name} is not a git checkout")
            git.pull(entry.folder, runner=self._runner)
            manifest = read_manifest(entry.folder)
            if not self.skip_install:
                git.install_requirements(manifest.requirements, python=self._python, runner=self._runner)
            return self.reload(entry.key)

    def uninstall(self, name: str) -> None:
        """Unload the extension and delete its folder (built-in extensions can only be disabled)."""
        self.gate.check("uninstall")
        with self._lock:
            entry = self._entry(name)
            if entry.builtin:
                raise ExtensionInstallError(f"{entry.key} is built in; disable it instead")
            self._unload(entry)
            git.remove_folder(entry.folder, self.extensions_dir)
            del self._entries[entry.key]
            if entry.key in self._disabled_ids():
                self._set_disabled(entry.key, False)

    # --- what the engine, the UI and the API read --------------------------------------------------------

    def wrap_denoiser(self, model: Callable[..., Any], sampling: Any = None) -> Callable[..., Any]:
        """``model`` wrapped by every extension's denoiser wrapper (lowest order innermost); wrappers added
        ``with_context`` also receive ``sampling`` (a :class:`~webui.engine.sampling_context.SamplingContext`)."""
        wrappers = sorted(self.contributions.snapshot(DenoiserWrapper), key=lambda w: (w.order, w.seq))
        for wrapper in wrappers:
            factory = wrapper.factory
            if wrapper.with_context:
                factory = functools.partial(_with_sampling, wrapper.factory, sampling)
            model = wrap_denoiser(model, factory, wrapper.owner, self.mark_failed)
        return model

    def settings(self) -> tuple[SettingSpec, ...]:
        """Settings added by loaded extensions."""
        return self.contributions.snapshot(SettingSpec)

    def infotext_fields(self) -> tuple[InfotextField, ...]:
        """Infotext fields added by loaded extensions."""
        return self.contributions.snapshot(InfotextField)

    def parse_infotext(self, values: Mapping[str, str]) -> dict[str, Any]:
        """Map infotext entries of extensions (``{"My key": "1.5"}``) to their API fields, parsed."""
        result: dict[str, Any] = {}
        for spec in self.infotext_fields():
            if spec.key in values:
                raw = values[spec.key]
                parsed = (
                    raw
                    if spec.parse is None
                    else self.call_guarded(spec.owner, "infotext parse", spec.parse, raw)
                )
                result[spec.api_field] = parsed
        return result

    def routes(self) -> tuple[RouteSpec, ...]:
        """API routes of loaded extensions (served under ``/ext/<id>/...``)."""
        return self.contributions.snapshot(RouteSpec)

    def route(self, ext_id: str, path: str, method: str = "GET") -> RouteSpec | None:
        """The route of ``ext_id`` for ``path`` (without the ``/ext/<id>`` prefix) and ``method``."""
        wanted = "/" + path.strip("/")
        for route in self.routes():
            if (
                route.owner == ext_id
                and ("/" + route.path.strip("/")) == wanted
                and method.upper() in route.methods
            ):
                return route
        return None

    def ui_tabs(self) -> tuple[UITab, ...]:
        """Top-level tabs added by loaded extensions."""
        return self.contributions.snapshot(UITab)

    def form_tabs(self) -> tuple[FormTab, ...]:
        """Tabs laid out from control specs (``api.add_ui_form_tab``)."""
        return self.contributions.snapshot(FormTab)

    def ui_sections(self, tab: str) -> tuple[UISection, ...]:
        """Sections added to ``"txt2img"`` or ``"img2img"``."""
        return tuple(s for s in self.contributions.snapshot(UISection) if s.tab == tab)

    def extension_args(
        self, given: Mapping[str, Mapping[str, Any]] | None, trusted: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Validate a job's ``extension_args`` (``{ext_id: {control: value}}``): every extension with UI
        sections gets its defaults filled in; unknown ids or controls raise InvalidParameter. The entries of
        loaded extensions without UI sections, and of ``trusted`` (the extension that submits the job
        itself), are passed through for the extension to check."""
        sections = self.contributions.snapshot(UISection)
        owners = sorted({s.owner for s in sections} - {trusted})
        with self._lock:
            loaded = {e.manifest.id for e in self._entries.values() if e.status == LOADED and e.manifest}
        free = (loaded - set(owners)) | ({trusted} if trusted else set())
        unknown = sorted(set(given or {}) - set(owners) - free)
        if unknown:
            valid = ", ".join(sorted(set(owners) | loaded)) or "(none)"
            raise InvalidParameter("extension_args", f"unknown extension {unknown[0]!r}; valid: {valid}")
        result: dict[str, dict[str, Any]] = {}
        for owner in owners:
            controls = {c.name: c for s in sections if s.owner == owner for c in s.controls}
            values: dict[str, Any] = {}
            for section in sections:
                if section.owner == owner:
                    values.update(section.defaults())
            for name, value in ((given or {}).get(owner) or {}).items():
                if name not in controls:
                    raise InvalidParameter(
                        f"extension_args.{owner}", f"unknown control {name!r}; valid: {', '.join(controls)}"
                    )
                values[name] = controls[name].check(value, f"extension_args.{owner}.{name}")
            result[owner] = values
        for ext_id in sorted(free & set(given or {})):
            entry = (given or {})[ext_id]
            if not isinstance(entry, Mapping):
                raise InvalidParameter(f"extension_args.{ext_id}", "must be an object of names and values")
            result[ext_id] = dict(entry)
        return result

    def call_guarded(self, owner: str, where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call extension code (a tab builder, a route handler) so that its failure disables it cleanly
        and surfaces as an :class:`~webui.extensions.hooks.ExtensionError`."""
        return call_guarded(fn, owner, where, self.mark_failed, *args, **kwargs)

    def fire(self, hook: str, **payload: Any) -> list[Any]:
        """Shorthand for ``host.hooks.fire``."""
        return self.hooks.fire(hook, **payload)

    def ids(self, status: str | None = None) -> list[str]:
        """Ids of the extensions (with ``status`` if given)."""
        with self._lock:
            return [k for k, e in self._entries.items() if status is None or e.status == status]

    def loaded(self) -> Iterable[str]:
        """Ids of the loaded extensions."""
        return self.ids(LOADED)


def _with_sampling(
    factory: Callable[..., Any], sampling: Any, model: Callable[..., Any]
) -> Callable[..., Any]:
    return factory(model, sampling)

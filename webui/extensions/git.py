"""Git and pip operations for installed extensions: clone, inspect, check for updates, pull, install
requirements, remove.

Every command runs through :func:`run_command` with an explicit argv (never a shell), a timeout and
``GIT_TERMINAL_PROMPT=0`` so that nothing waits for a password. None of these functions imports or runs
code from the extension; pip installs only the requirement strings the manifest declares (checked by
:mod:`webui.extensions.manifest` to be plain package requirements).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 120.0
PIP_TIMEOUT_S = 900.0
Runner = Callable[[Sequence[str], "Path | None", float], subprocess.CompletedProcess]
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:[\w./~-]+$")
_ALLOWED_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")


class GitError(RuntimeError):
    """A git or pip command failed or timed out; the message holds its error output."""


def _command_name(argv: Sequence[str]) -> str:
    """``"git pull"`` for ``git -c x=y pull --ff-only``: the program and its first word that is no option."""
    words = [a for i, a in enumerate(argv) if a != "-c" and (i == 0 or argv[i - 1] != "-c")]
    rest = next((a for a in words[1:] if not a.startswith("-")), "")
    return f"{Path(words[0]).name} {rest}".strip()


def run_command(
    argv: Sequence[str], cwd: Path | None = None, timeout: float = GIT_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run ``argv`` (no shell) and return the finished process; failures raise :class:`GitError`."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "echo"}
    try:
        done = subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise GitError(
            f"{argv[0]} {argv[1] if len(argv) > 1 else ''} timed out after {timeout:.0f} s"
        ) from None
    except OSError as exc:
        raise GitError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout or "").strip()
        raise GitError(f"{_command_name(argv)} failed (exit {done.returncode}): {output}")
    return done


def validate_url(url: str) -> str:
    """Return the stripped ``url`` if it is a git URL we clone from; refuse options and odd transports.

    Accepted: ``https://``, ``http://``, ``ssh://``, ``git://``, ``file://``, ``user@host:path`` and
    absolute local paths. Refused: anything starting with ``-`` (it would be read as an option) and
    ``transport::address`` forms such as ``ext::`` (which run commands).
    """
    url = (url or "").strip()
    if not url:
        raise GitError("no URL given")
    if url.startswith("-") or "::" in url or any(c in url for c in "\n\r\0"):
        raise GitError(f"refusing URL {url!r}")
    if url.startswith(_ALLOWED_SCHEMES) or _SCP_LIKE.match(url) or Path(url).is_absolute():
        return url
    raise GitError(f"unsupported URL {url!r}: use https://, ssh://, git://, file:// or an absolute path")


def normalize_url(url: str) -> str:
    """A comparable form of a clone URL: no trailing slash or ``.git``, case-folded host part."""
    url = url.strip().rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url.lower() if "://" in url or _SCP_LIKE.match(url) else url


def folder_name_for(url: str) -> str:
    """The folder an extension from ``url`` is cloned into by default (last path part, without .git)."""
    name = normalize_url(url).replace(":", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^\w.-]", "_", name).lstrip(".")
    if not name:
        raise GitError(f"cannot derive a folder name from {url!r}; give one")
    return name


def check_folder_name(name: str) -> str:
    """Return ``name`` if it is a single plain folder name (no separators, not hidden)."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or name != name.strip():
        raise GitError(f"invalid folder name {name!r}")
    return name


def clone(
    url: str,
    dest: Path,
    branch: str | None = None,
    *,
    timeout: float = GIT_TIMEOUT_S,
    runner: Runner = run_command,
) -> None:
    """``git clone [--branch B] -- URL dest``; ``dest`` must not exist."""
    url = validate_url(url)
    if dest.exists():
        raise GitError(f"folder {dest} already exists")
    argv = ["git", "-c", "protocol.ext.allow=never", "clone"]
    if branch:
        if branch.startswith("-"):
            raise GitError(f"invalid branch {branch!r}")
        argv += ["--branch", branch]
    argv += ["--", url, str(dest)]
    runner(argv, None, timeout)


@dataclass(frozen=True)
class RepoInfo:
    """Where an installed extension came from and which commit it is at."""

    remote_url: str | None
    branch: str | None
    commit: str | None
    commit_date: str | None  # ISO 8601


def _git_out(folder: Path, args: Sequence[str], runner: Runner, timeout: float = 30.0) -> str | None:
    try:
        return runner(["git", *args], folder, timeout).stdout.strip() or None
    except GitError:
        return None


def repo_info(folder: Path, runner: Runner = run_command) -> RepoInfo:
    """Remote URL, branch, commit hash and date of a checkout (all None for a folder that is not one)."""
    if not (folder / ".git").exists():
        return RepoInfo(None, None, None, None)
    remote = _git_out(folder, ["config", "--get", "remote.origin.url"], runner)
    branch = _git_out(folder, ["rev-parse", "--abbrev-ref", "HEAD"], runner)
    log = _git_out(folder, ["log", "-1", "--format=%H%n%cI"], runner)
    commit, date = ([*log.splitlines(), None, None])[:2] if log else (None, None)
    return RepoInfo(remote, branch, commit, date)


def has_updates(folder: Path, *, timeout: float = GIT_TIMEOUT_S, runner: Runner = run_command) -> bool:
    """``git fetch`` and report whether the upstream branch has commits the checkout lacks."""
    runner(["git", "-c", "protocol.ext.allow=never", "fetch", "--quiet", "origin"], folder, timeout)
    behind = _git_out(folder, ["rev-list", "--count", "HEAD..@{u}"], runner)
    return behind is not None and int(behind) > 0


def pull(folder: Path, *, timeout: float = GIT_TIMEOUT_S, runner: Runner = run_command) -> None:
    """``git pull --ff-only`` (a checkout with local commits or changes that conflict is refused)."""
    runner(["git", "-c", "protocol.ext.allow=never", "pull", "--ff-only", "--quiet"], folder, timeout)


def install_requirements(
    requirements: Sequence[str],
    *,
    python: str = sys.executable,
    timeout: float = PIP_TIMEOUT_S,
    runner: Runner = run_command,
) -> None:
    """``python -m pip install <requirements>`` (nothing to do for an empty list)."""
    if not requirements:
        return
    if any(r.strip().startswith("-") for r in requirements):
        raise GitError("requirements must not be pip options")
    runner([python, "-m", "pip", "install", *requirements], None, timeout)


def remove_folder(folder: Path, root: Path) -> None:
    """Delete an extension folder, which must lie directly inside ``root`` (read-only git files too)."""
    folder, root = folder.resolve(), root.resolve()
    if folder.parent != root:
        raise GitError(f"{folder} is not inside {root}")

    def make_writable(func: Callable[..., object], path: str, _exc: object) -> None:
        os.chmod(path, stat.S_IWRITE)
        func(path)

    shutil.rmtree(folder, onerror=make_writable)

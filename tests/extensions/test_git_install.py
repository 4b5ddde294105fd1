"""Installing extensions from local bare git repositories: clone, update, disable, re-enable, remove."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.extensions.helpers import git, make_host, make_remote, manifest, push, write_extension
from webui.config.flags import parse_flags
from webui.extensions import git as gitops
from webui.extensions.host import DISABLED, FAILED, LOADED, ExtensionInstallError
from webui.extensions.manifest import ManifestError
from webui.extensions.security import AccessGate, ExtensionAccessDenied

SAMPLER_V1 = """
    from webui.extensions.api import ExtensionAPI, sigma_batch

    VERSION = 1


    def sample_jump(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return model(x, sigma_batch(x, sigmas[0])) * VERSION


    def setup(api: ExtensionAPI) -> None:
        api.register_sampler(label="Jump", aliases=("k_jump",), function=sample_jump, default_schedule="karras")
        api.on("before_process", lambda params, **_: params)
        api.add_setting("jump_scale", 1.0, "Jump scale")
"""


@pytest.fixture()
def remote(tmp_path):
    return make_remote(tmp_path, "sd-jump", {"main.py": SAMPLER_V1}, manifest("jump", version="1.0"))


def _traces(host) -> list[str]:
    traces = []
    if "Jump" in host.services.samplers or "k_jump" in host.services.samplers:
        traces.append("sampler")
    if host.hooks.owners():
        traces.append("hooks")
    if host.contributions.owned_by("jump"):
        traces.append("contributions")
    if any(name.startswith("webui_ext_jump") for name in sys.modules):
        traces.append("modules")
    return traces


def test_install_update_disable_enable_uninstall(tmp_path, remote):
    bare, work = remote
    root = tmp_path / "extensions"
    host = make_host(root, skip_install=True)
    host.load_all()

    status = host.install(str(bare))
    assert (status.id, status.folder, status.status, status.version) == ("jump", "sd-jump", LOADED, "1.0")
    assert status.remote_url == str(bare) and status.branch == "main"
    assert status.commit == git("rev-parse", "HEAD", cwd=work) and status.commit_date
    assert host.services.samplers.resolve("k_jump")[1].name == "karras"
    assert not host.check_for_updates("jump")

    # a new commit upstream: visible to check_for_updates, brought in by update (code reloaded)
    (work / "main.py").write_text((work / "main.py").read_text().replace("VERSION = 1", "VERSION = 222"))
    (work / "extension.toml").write_text((work / "extension.toml").read_text().replace('"1.0"', '"1.1"'))
    push(work, "second")
    assert host.check_for_updates("jump")
    updated = host.update("jump")
    assert (updated.status, updated.version, updated.commit) == (
        LOADED,
        "1.1",
        git("rev-parse", "HEAD", cwd=work),
    )
    assert sys.modules["webui_ext_jump.main"].VERSION == 222
    assert not host.check_for_updates("jump")

    host.disable("jump")
    assert _traces(host) == [] and host.get("jump").status == DISABLED
    assert host.enable("jump").status == LOADED
    assert _traces(host) == ["sampler", "hooks", "contributions", "modules"]

    host.uninstall("jump")
    assert _traces(host) == []
    assert not (root / "sd-jump").exists()
    assert host.list() == []
    assert host.services.options.get("disabled_extensions", []) == []


def test_install_with_branch_and_folder_name(tmp_path, remote):
    bare, work = remote
    git("checkout", "--quiet", "-b", "dev", cwd=work)
    (work / "extension.toml").write_text((work / "extension.toml").read_text().replace('"1.0"', '"2.0-dev"'))
    git("add", "-A", cwd=work)
    git("commit", "--quiet", "-m", "dev", cwd=work)
    git("push", "--quiet", "origin", "dev", cwd=work)
    host = make_host(tmp_path / "extensions", skip_install=True)
    status = host.install(f"file://{bare}", branch="dev", folder="jumper")
    assert (status.folder, status.branch, status.version) == ("jumper", "dev", "2.0-dev")


def test_install_refuses_existing_folder_and_installed_url(tmp_path, remote):
    bare, _ = remote
    root = tmp_path / "extensions"
    write_extension(root, "sd-jump", None, {"README.md": "someone else's folder"})
    host = make_host(root, skip_install=True)
    host.load_all()
    with pytest.raises(ExtensionInstallError, match="already exists"):
        host.install(str(bare))
    host.install(str(bare), folder="other-name")
    with pytest.raises(ExtensionInstallError, match="already installed"):
        host.install(str(bare) + "/", folder="third-name")
    assert sorted(p.name for p in root.iterdir()) == ["other-name", "sd-jump"]


def test_invalid_manifest_is_rejected_before_anything_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = f"open({str(marker)!r}, 'w').write('ran')\ndef setup(api):\n    pass\n"
    bare, _ = make_remote(tmp_path, "evil", {"main.py": evil}, {"id": "Not Valid", "facade": ">=1"})
    root = tmp_path / "extensions"
    host = make_host(root, skip_install=True)
    with pytest.raises(ManifestError, match="id"):
        host.install(str(bare))
    assert not marker.exists()
    assert [p.name for p in root.iterdir()] == []


def test_requirements_are_pip_installed_unless_skipped(tmp_path):
    bare, _ = make_remote(
        tmp_path,
        "needs",
        {"main.py": "def setup(api):\n    pass\n"},
        manifest("needs", requirements=["einops>=0.7"]),
    )
    calls = []

    def runner(argv, cwd, timeout):
        if argv[0] != "git":
            calls.append(list(argv))
            return subprocess.CompletedProcess(argv, 0, "", "")
        return gitops.run_command(argv, cwd, timeout)

    host = make_host(tmp_path / "extensions", runner=runner, python="/py/bin/python")
    assert host.install(str(bare)).status == LOADED
    assert calls == [["/py/bin/python", "-m", "pip", "install", "einops>=0.7"]]

    calls.clear()
    skipping = make_host(tmp_path / "ext2", runner=runner, skip_install=True)
    skipping.install(str(bare))
    assert calls == []


def test_failed_pip_install_leaves_no_folder(tmp_path):
    bare, _ = make_remote(
        tmp_path, "needs", {"main.py": ""}, manifest("needs", requirements=["nonexistent-pkg"])
    )

    def runner(argv, cwd, timeout):
        if argv[0] != "git":
            raise gitops.GitError("pip install failed (exit 1): no matching distribution")
        return gitops.run_command(argv, cwd, timeout)

    root = tmp_path / "extensions"
    host = make_host(root, runner=runner)
    with pytest.raises(gitops.GitError, match="no matching distribution"):
        host.install(str(bare))
    assert list(root.iterdir()) == []


def test_security_gate_refuses_install_update_enable_when_listening(tmp_path, remote):
    bare, work = remote
    root = tmp_path / "extensions"
    open_host = make_host(root, skip_install=True)
    open_host.install(str(bare))
    (work / "README.md").write_text("new")
    push(work, "readme")

    listening = make_host(root, skip_install=True, gate=AccessGate.from_flags(parse_flags(["--listen"])))
    assert [s.status for s in listening.load_all()] == [LOADED]  # start-up loading is not gated
    for action in (lambda: listening.install(str(bare), folder="x"), lambda: listening.update("jump"),
                   lambda: listening.enable("jump"), lambda: listening.uninstall("jump")):  # fmt: skip
        with pytest.raises(ExtensionAccessDenied, match="reachable from other hosts"):
            action()
    assert not (root / "x").exists()

    flags = parse_flags(["--share", "--enable-insecure-extension-access"])
    allowed = make_host(root, skip_install=True, gate=AccessGate.from_flags(flags))
    allowed.load_all()
    assert allowed.update("jump").commit == git("rev-parse", "HEAD", cwd=work)


def test_update_is_fast_forward_only(tmp_path, remote):
    bare, work = remote
    root = tmp_path / "extensions"
    host = make_host(root, skip_install=True)
    host.install(str(bare))
    (root / "sd-jump" / "README.md").write_text("local")
    git("add", "-A", cwd=root / "sd-jump")
    git("commit", "--quiet", "-m", "local", cwd=root / "sd-jump")
    (work / "README.md").write_text("upstream")
    push(work, "upstream")
    with pytest.raises(gitops.GitError, match="pull"):
        host.update("jump")
    assert host.get("jump").status == LOADED


def test_url_validation_and_folder_names():
    for bad in ("--upload-pack=touch /tmp/x", "ext::sh -c touch% /tmp/pwned", "relative/path", ""):
        with pytest.raises(gitops.GitError):
            gitops.validate_url(bad)
    for good in ("https://github.com/a/b.git", "git@github.com:a/b.git", "file:///srv/b", "/srv/repos/b.git"):
        assert gitops.validate_url(good) == good
    assert gitops.folder_name_for("https://github.com/someone/sd-webui-thing.git") == "sd-webui-thing"
    assert gitops.folder_name_for("git@github.com:a/b-c") == "b-c"
    assert gitops.normalize_url("https://GitHub.com/A/B.git/") == gitops.normalize_url(
        "https://github.com/a/b"
    )
    with pytest.raises(gitops.GitError):
        gitops.check_folder_name("../outside")


def test_broken_clone_reports_git_error(tmp_path):
    host = make_host(tmp_path / "extensions", skip_install=True)
    with pytest.raises(gitops.GitError, match="clone"):
        host.install(str(tmp_path / "no-such-repo.git"))
    assert host.list() == [] and list((tmp_path / "extensions").iterdir()) == []


def test_installed_extension_with_setup_error_is_reported(tmp_path):
    bare, _ = make_remote(
        tmp_path, "oops", {"main.py": "def setup(api):\n    raise OSError('no gpu')\n"}, manifest("oops")
    )
    host = make_host(tmp_path / "extensions", skip_install=True)
    status = host.install(str(bare))
    assert status.status == FAILED and status.error == "OSError: no gpu"

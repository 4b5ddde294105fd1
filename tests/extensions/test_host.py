"""The extension host: loading fixture extensions, recording and removing registrations, failures."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.extensions.helpers import make_host, manifest, write_extension
from webui.config.flags import parse_flags
from webui.config.options import Options
from webui.engine.errors import InvalidParameter, JobCancelled
from webui.extensions.contributions import RouteSpec, SettingSpec, UISection
from webui.extensions.hooks import ExtensionError
from webui.extensions.host import DISABLED, DISABLED_OPTION, FAILED, LOADED
from webui.extensions.security import AccessGate, ExtensionAccessDenied

FULL_MAIN = """
    from webui.extensions.api import ExtensionAPI, sigma_batch, to_d

    from .helpers import scale

    CALLS = []


    def sample_half_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, boost=1.0):
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigma_batch(x, sigmas[i]), **(extra_args or {}))
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i]) * boost
        return x


    def linear(n, sigma_min, sigma_max, *, model=None, device=None):
        import torch

        return torch.cat([torch.linspace(sigma_max, sigma_min, n), torch.zeros(1)])


    class Doubler:
        name = "Full Doubler"

        def upscale(self, img, scale):
            return img.resize((img.width * 2, img.height * 2))


    def setup(api: ExtensionAPI) -> None:
        api.register_sampler(label="Half Euler", aliases=("half_euler",), function=sample_half_euler)
        api.register_schedule(label="Linear Test", name="linear_test", function=linear)
        api.register_upscaler(Doubler())
        api.on("after_decode", lambda images, **_: CALLS.append(len(images)))
        api.add_ui_section("txt2img", "Full controls", [
            {"name": "strength", "kind": "slider", "label": "Strength", "default": 0.5, "minimum": 0, "maximum": 1},
            {"name": "mode", "kind": "dropdown", "choices": ["soft", "hard"]},
        ])
        api.add_api_route("/ping", lambda: {"pong": scale(2)})
        api.add_setting("full_strength", 0.25, "Default strength", "Full")
        api.add_ui_tab("Full tab", lambda: "built")
        api.add_infotext_field("Full strength", "full_strength", float)
        api.add_denoiser_wrapper(lambda model: (lambda x, sigma, **c: model(x, sigma, **c) * 2), order=5)
"""


def _full(root):
    return write_extension(
        root,
        "full",
        manifest("full"),
        {"main.py": FULL_MAIN, "helpers.py": "def scale(v):\n    return v * 21\n"},
    )


def _registered(host) -> dict:
    return {
        "samplers": "Half Euler" in host.services.samplers,
        "alias": "half_euler" in host.services.samplers,
        "schedules": "linear_test" in host.services.schedules,
        "upscalers": "Full Doubler" in host.services.upscalers,
        "hooks": len(host.hooks.entries("after_decode")),
        "contributions": len(host.contributions.owned_by("full")),
        "modules": any(name.startswith("webui_ext_full") for name in sys.modules),
    }


NOTHING = {
    "samplers": False,
    "alias": False,
    "schedules": False,
    "upscalers": False,
    "hooks": 0,
    "contributions": 0,
    "modules": False,
}


def test_full_extension_registers_everything_and_disable_removes_exactly_that(tmp_path):
    root = tmp_path / "extensions"
    _full(root)
    host = make_host(root)
    core_samplers = host.services.samplers.labels()
    statuses = host.load_all()
    assert [(s.id, s.status, s.error) for s in statuses] == [("full", LOADED, None)]
    assert _registered(host) == {**NOTHING, "samplers": True, "alias": True, "schedules": True,
                                 "upscalers": True, "hooks": 1, "contributions": 6, "modules": True}  # fmt: skip
    # the sampler is usable through the registry, resolved with its default schedule
    info, schedule = host.services.samplers.resolve("half_euler")
    assert info.label == "Half Euler" and schedule.name == "uniform"
    assert info.accepts("boost") and not info.accepts("eta")
    # route, setting, UI section, infotext
    route = host.route("full", "ping")
    assert isinstance(route, RouteSpec) and route.full_path == "/ext/full/ping"
    assert host.call_guarded("full", "route", route.fn) == {"pong": 42}
    assert [s.name for s in host.settings()] == ["full_strength"]
    (tab,) = host.ui_tabs()
    assert tab.title == "Full tab" and host.call_guarded("full", "ui tab", tab.build) == "built"
    assert host.parse_infotext({"Full strength": "0.75", "Steps": "20"}) == {"full_strength": 0.75}
    (section,) = host.ui_sections("txt2img")
    assert isinstance(section, UISection) and [c.name for c in section.controls] == ["strength", "mode"]
    assert host.extension_args(None) == {"full": {"strength": 0.5, "mode": "soft"}}
    assert host.extension_args({"full": {"mode": "hard"}}) == {"full": {"strength": 0.5, "mode": "hard"}}
    # denoiser wrapper
    wrapped = host.wrap_denoiser(lambda x, sigma, **_: x + 1)
    assert float(wrapped(torch.ones(1), torch.ones(1))[0]) == 4.0

    host.disable("full")
    assert _registered(host) == NOTHING
    assert host.services.samplers.labels() == core_samplers
    assert host.get("full").status == DISABLED and host.get("full").enabled is False
    assert host.services.options.get(DISABLED_OPTION) == ["full"]

    host.enable("full")
    assert host.get("full").status == LOADED and _registered(host)["samplers"]
    host.unload_all()
    assert _registered(host) == NOTHING


def test_extension_args_and_controls_are_validated(tmp_path):
    root = tmp_path / "extensions"
    _full(root)
    host = make_host(root)
    host.load_all()
    with pytest.raises(InvalidParameter, match="valid: full"):
        host.extension_args({"nope": {}})
    with pytest.raises(InvalidParameter, match="valid: strength, mode"):
        host.extension_args({"full": {"strenght": 1}})
    with pytest.raises(InvalidParameter, match=r"within 0\.\.1"):
        host.extension_args({"full": {"strength": 3}})
    with pytest.raises(InvalidParameter, match="valid: soft, hard"):
        host.extension_args({"full": {"mode": "medium"}})


@pytest.mark.parametrize(
    ("folder", "files", "ext_manifest", "expected"),
    [
        ("import-error", {"main.py": "import not_a_module_anywhere\n"}, manifest("import-error"), "ModuleNotFoundError"),
        ("setup-error", {"main.py": "def setup(api):\n    raise RuntimeError('boom in setup')\n"},
         manifest("setup-error"), "RuntimeError: boom in setup"),
        ("old-facade", {"main.py": "def setup(api):\n    pass\n"}, manifest("old-facade", facade=">=2"),
         "needs facade version >=2; this app provides 1.1"),
        ("no-setup", {"main.py": "X = 1\n"}, manifest("no-setup"), "has no function setup()"),
        ("bad-manifest", {"main.py": ""}, {"id": "Bad Id!"}, "invalid manifest"),
        ("no-manifest", {"main.py": ""}, None, "no extension.toml or extension.json"),
    ],
)  # fmt: skip
def test_broken_extensions_fail_alone_with_their_error(tmp_path, folder, files, ext_manifest, expected):
    root = tmp_path / "extensions"
    _full(root)
    write_extension(root, folder, ext_manifest, files)
    host = make_host(root)
    statuses = {s.folder: s for s in host.load_all()}
    assert statuses["full"].status == LOADED
    broken = statuses[folder]
    assert broken.status == FAILED
    assert expected in broken.error
    assert not any(name.startswith("webui_ext_" + folder.replace("-", "_")) for name in sys.modules)


def test_setup_error_leaves_no_partial_registrations(tmp_path):
    root = tmp_path / "extensions"
    main = """
        from webui.extensions.api import ExtensionAPI

        def setup(api: ExtensionAPI) -> None:
            api.register_sampler(label="Partial", aliases=(), function=lambda model, x, sigmas, **k: x)
            api.add_setting("partial_option", 1, "Partial")
            api.on("app_started", lambda **_: None)
            raise ValueError("half-way")
    """
    write_extension(root, "partial", manifest("partial"), {"main.py": main})
    host = make_host(root)
    (status,) = host.load_all()
    assert status.status == FAILED and status.error == "ValueError: half-way"
    assert "raise ValueError" in status.traceback
    assert "Partial" not in host.services.samplers and host.settings() == () and not host.hooks.owners()


def test_duplicate_id_loads_the_first_folder_only(tmp_path):
    root = tmp_path / "extensions"
    write_extension(root, "a-first", manifest("same"), {"main.py": "def setup(api):\n    pass\n"})
    write_extension(
        root, "b-second", manifest("same"), {"main.py": "def setup(api):\n    pass\n"}, as_json=True
    )
    host = make_host(root)
    statuses = {s.folder: s for s in host.load_all()}
    assert statuses["a-first"].status == LOADED
    assert statuses["b-second"].status == FAILED
    assert "duplicate id 'same'" in statuses["b-second"].error and "a-first" in statuses["b-second"].error


def test_name_clash_with_a_core_sampler_fails_that_extension(tmp_path):
    root = tmp_path / "extensions"
    main = "def setup(api):\n    api.register_sampler(label='Euler', aliases=(), function=lambda m, x, s, **k: x)\n"
    write_extension(root, "clash", manifest("clash"), {"main.py": main})
    host = make_host(root)
    (status,) = host.load_all()
    assert status.status == FAILED and "already registered: euler" in status.error
    assert host.services.samplers.get("Euler").function.__name__ == "sample_euler"


def test_same_module_names_in_two_extensions_do_not_clash_and_sys_path_is_untouched(tmp_path):
    root = tmp_path / "extensions"
    for ext_id, value in (("one", 1), ("two", 2)):
        main = (
            f"from .util import VALUE\n\ndef setup(api):\n    api.add_setting('value_{ext_id}', VALUE, 'v')\n"
        )
        write_extension(root, ext_id, manifest(ext_id), {"main.py": main, "util.py": f"VALUE = {value}\n"})
    path_before = list(sys.path)
    host = make_host(root)
    host.load_all()
    assert sys.path == path_before
    assert {s.name: s.default for s in host.settings()} == {"value_one": 1, "value_two": 2}
    assert "util" not in sys.modules


def test_load_order_follows_hints(tmp_path):
    root = tmp_path / "extensions"
    main = "def setup(api):\n    api.on('app_started', lambda order, **_: order.append(api.id))\n"
    write_extension(root, "a", manifest("a", load_after=["c"]), {"main.py": main})
    write_extension(root, "b", manifest("b"), {"main.py": main})
    write_extension(root, "c", manifest("c", load_before=["b"], load_after=["missing"]), {"main.py": main})
    host = make_host(root)
    host.load_all()
    order: list[str] = []
    host.fire("app_started", order=order)
    assert order == ["c", "a", "b"]


def test_reload_picks_up_changed_code(tmp_path):
    root = tmp_path / "extensions"
    folder = write_extension(
        root,
        "live",
        manifest("live"),
        {"main.py": "def setup(api):\n    api.add_setting('live_v', 1, 'v')\n"},
    )
    host = make_host(root)
    host.load_all()
    assert [s.default for s in host.settings()] == [1]
    (folder / "main.py").write_text("def setup(api):\n    api.add_setting('live_v', 22222, 'v')\n")
    status = host.reload("live")
    assert status.status == LOADED and [s.default for s in host.settings()] == [22222]


def test_hook_that_raises_disables_its_extension_and_fails_the_job_clearly(tmp_path):
    root = tmp_path / "extensions"
    bad = "def setup(api):\n    api.on('on_step', lambda **_: 1 / 0)\n    api.add_setting('bad_s', 1, 's')\n"
    good = "SEEN = []\ndef setup(api):\n    api.on('on_step', lambda i, **_: SEEN.append(i))\n"
    write_extension(root, "bad", manifest("bad"), {"main.py": bad})
    write_extension(root, "good", manifest("good"), {"main.py": good})
    host = make_host(root)
    host.load_all()
    with pytest.raises(ExtensionError, match="extension bad failed in on_step: ZeroDivisionError"):
        host.fire("on_step", i=0)
    status = host.get("bad")
    assert status.status == FAILED and "on_step" in status.error and status.enabled
    assert host.settings() == ()
    host.fire("on_step", i=1)  # the failed job stopped at "bad"; the next one runs without it
    assert sys.modules["webui_ext_good.main"].SEEN == [1]


def test_app_hook_failure_is_logged_and_the_others_still_run(tmp_path):
    root = tmp_path / "extensions"
    write_extension(
        root,
        "a-bad",
        manifest("a-bad"),
        {"main.py": "def setup(api):\n    api.on('app_started', lambda **_: [][1])\n"},
    )
    write_extension(
        root,
        "b-good",
        manifest("b-good"),
        {"main.py": "def setup(api):\n    api.on('app_started', lambda **_: 'ok')\n"},
    )
    host = make_host(root)
    host.load_all()
    assert host.fire("app_started") == ["ok"]
    assert host.get("a-bad").status == FAILED and "IndexError" in host.get("a-bad").error


def test_hook_payload_pipe_lets_extensions_amend_values(tmp_path):
    root = tmp_path / "extensions"
    main = "def setup(api):\n    api.on('after_decode', lambda images, **_: images + ['added'])\n"
    write_extension(root, "amend", manifest("amend"), {"main.py": main})
    host = make_host(root)
    host.load_all()
    assert host.hooks.pipe("after_decode", ["img"], params=None) == ["img", "added"]


def test_sampler_failure_is_blamed_but_cancellation_and_model_errors_pass_through(tmp_path):
    root = tmp_path / "extensions"
    main = """
        def broken(model, x, sigmas, extra_args=None, callback=None, disable=None):
            model(x, sigmas[:1])
            if callback is not None:
                callback({"i": 0})
            raise KeyError("sampler bug")

        def setup(api):
            api.register_sampler(label="Broken", aliases=(), function=broken)
    """
    write_extension(root, "brk", manifest("brk"), {"main.py": main})
    host = make_host(root)
    host.load_all()
    sampler = host.services.samplers.get("Broken").function
    x, sigmas = torch.zeros(1, 2), torch.tensor([1.0, 0.0])

    def cancel(_d):
        raise JobCancelled("interrupted")

    with pytest.raises(JobCancelled):
        sampler(lambda x, s: x, x, sigmas, callback=cancel)

    def model_error(x, s):
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        sampler(model_error, x, sigmas)
    assert host.get("brk").status == LOADED
    with pytest.raises(ExtensionError, match="extension brk failed in sampler Broken: KeyError"):
        sampler(lambda x, s: x, x, sigmas)
    assert host.get("brk").status == FAILED and "Broken" not in host.services.samplers


def test_denoiser_wrappers_stack_by_order_and_a_failing_one_is_disabled(tmp_path):
    root = tmp_path / "extensions"
    add = "def setup(api):\n    api.add_denoiser_wrapper(lambda m: (lambda x, s, **c: m(x, s, **c) + 10), order=1)\n"
    mul = "def setup(api):\n    api.add_denoiser_wrapper(lambda m: (lambda x, s, **c: m(x, s, **c) * 3), order=0)\n"
    bad = "def setup(api):\n    api.add_denoiser_wrapper(lambda m: (lambda x, s, **c: None + 1), order=9)\n"
    write_extension(root, "add", manifest("add"), {"main.py": add})
    write_extension(root, "mul", manifest("mul"), {"main.py": mul})
    write_extension(root, "zbad", manifest("zbad"), {"main.py": bad})
    host = make_host(root)
    host.load_all()

    class Inner:
        tracker = "kept"

        def __call__(self, x, sigma, **_):
            return x

    wrapped = host.wrap_denoiser(Inner())
    assert wrapped.tracker == "kept"
    with pytest.raises(ExtensionError, match="extension zbad failed in denoiser wrapper: TypeError"):
        wrapped(torch.ones(1), torch.ones(1))
    assert host.get("zbad").status == FAILED
    # mul (order 0) is innermost: (1 * 3) + 10
    assert float(host.wrap_denoiser(Inner())(torch.ones(1), torch.ones(1))[0]) == 13.0


def test_disable_all_extensions_flag_and_extra_flag(tmp_path):
    root = tmp_path / "extensions"
    builtin_root = tmp_path / "builtin"
    _full(root)
    write_extension(builtin_root, "shipped", manifest("shipped"), {"main.py": "def setup(api):\n    pass\n"})
    none = make_host(
        root,
        gate=AccessGate.from_flags(parse_flags(["--disable-all-extensions"])),
        builtin_dirs=(builtin_root,),
    )
    assert {s.id: s.status for s in none.load_all()} == {"shipped": DISABLED, "full": DISABLED}
    assert "Half Euler" not in none.services.samplers
    extra = make_host(
        root,
        gate=AccessGate.from_flags(parse_flags(["--disable-extra-extensions"])),
        builtin_dirs=(builtin_root,),
    )
    assert {s.id: (s.status, s.builtin) for s in extra.load_all()} == {
        "shipped": (LOADED, True),
        "full": (DISABLED, False),
    }


def test_disabled_list_is_read_from_settings(tmp_path):
    root = tmp_path / "extensions"
    _full(root)
    options = Options(tmp_path / "config.json", {DISABLED_OPTION: ["full"]})
    host = make_host(root, options=options)
    (status,) = host.load_all()
    assert status.status == DISABLED and not status.enabled


def test_enable_is_refused_while_reachable_from_other_hosts(tmp_path):
    root = tmp_path / "extensions"
    _full(root)
    options = Options(None, {DISABLED_OPTION: ["full"]})
    gate = AccessGate.from_flags(parse_flags(["--listen"]))
    host = make_host(root, gate=gate, options=options)
    host.load_all()
    with pytest.raises(ExtensionAccessDenied, match="--enable-insecure-extension-access"):
        host.enable("full")
    with pytest.raises(ExtensionAccessDenied):
        host.reload("full")
    assert host.get("full").status == DISABLED
    host.disable("full")  # turning things off is always allowed
    insecure = make_host(
        root,
        gate=AccessGate.from_flags(parse_flags(["--listen", "--enable-insecure-extension-access"])),
        options=options,
    )
    insecure.load_all()
    assert insecure.enable("full").status == LOADED


def test_facade_validates_registrations(tmp_path):
    root = tmp_path / "extensions"
    cases = {
        "hook": "api.on('before_everything', print)",
        "tab": "api.add_ui_section('extras', 'T', [])",
        "kind": "api.add_ui_section('txt2img', 'T', [{'name': 'a', 'kind': 'knob'}])",
        "field": "api.register_sampler(label='X', function=print, colour='red')",
        "schedule": "api.register_sampler(label='X', function=print, default_schedule='wobbly')",
        "setting": "api.add_setting('samples_save', True, 'clash')",
        "route": "api.add_api_route('../escape', print)",
    }
    for name, line in cases.items():
        write_extension(
            root, f"v-{name}", manifest(f"v-{name}"), {"main.py": f"def setup(api):\n    {line}\n"}
        )
    host = make_host(root)
    errors = {s.id: s.error for s in host.load_all()}
    assert all(errors[f"v-{name}"].startswith("InvalidParameter") for name in cases), errors
    assert "valid: before_process, on_step" in errors["v-hook"]
    assert "valid: txt2img, img2img" in errors["v-tab"]
    assert "valid: checkbox, slider" in errors["v-kind"]
    assert "unknown field 'colour'" in errors["v-field"] and "label" in errors["v-field"]
    assert "unknown default schedule 'wobbly'" in errors["v-schedule"]
    assert "already exists" in errors["v-setting"]
    assert "route path" in errors["v-route"]


def test_settings_values_and_data_dir(tmp_path):
    root = tmp_path / "extensions"
    main = """
        RESULT = {}

        def setup(api):
            api.add_setting("mine_level", 3, "Level", choices=None, minimum=0, maximum=9)
            RESULT["default"] = api.setting("mine_level")
            (api.data_dir / "state.txt").write_text("x")
    """
    write_extension(root, "mine", manifest("mine"), {"main.py": main})
    options = Options(None, {"mine_level": 7})
    host = make_host(root, options=options, data_root=tmp_path / "data")
    host.load_all()
    assert sys.modules["webui_ext_mine.main"].RESULT == {"default": 7}
    assert (tmp_path / "data" / "mine" / "state.txt").read_text() == "x"
    (spec,) = host.settings()
    assert isinstance(spec, SettingSpec) and (spec.section, spec.maximum) == ("Mine", 9)


def test_load_model_file_reads_safetensors_through_the_safe_reader(tmp_path):
    from safetensors.torch import save_file

    root = tmp_path / "extensions"
    models = tmp_path / "models" / "aux"
    models.mkdir(parents=True)
    save_file({"w": torch.arange(3.0)}, str(models / "tiny.safetensors"))
    main = "OUT = {}\ndef setup(api):\n    OUT.update(api.load_model_file('aux/tiny.safetensors'))\n"
    write_extension(root, "reader", manifest("reader"), {"main.py": main})
    host = make_host(root)
    host.load_all()
    assert sys.modules["webui_ext_reader.main"].OUT["w"].tolist() == [0.0, 1.0, 2.0]

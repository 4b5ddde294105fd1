"""Command-line flags with A1111's names, defaults and meanings; the device policy they select."""

from __future__ import annotations

import pytest
import torch

from webui.config.flags import flags_as_dict, parse_auth, parse_flags, resolve_path
from webui.models.devices import choose_policy


def test_a1111_flags_parse() -> None:
    flags = parse_flags(
        [
            "--listen", "--port", "9000", "--api", "--nowebui", "--api-auth", "a:b", "--ckpt", "x",
            "--precision", "full", "--use-cpu", "all", "--device-id", "1", "--xformers", "--no-half-vae",
            "--medvram", "--ckpt-dir", "/ckpts", "--vae-path", "v.pt", "--gradio-auth", "u:p,v:q",
            "--enable-insecure-extension-access", "--disable-extra-extensions", "--theme", "dark",
        ]
    )  # fmt: skip
    assert flags.listen and flags.api and flags.nowebui and flags.xformers and flags.medvram
    assert (flags.port, flags.api_auth, flags.ckpt, flags.precision) == (9000, "a:b", "x", "full")
    assert (flags.use_cpu, flags.device_id, flags.ckpt_dir, flags.vae_path) == (
        ("all",),
        "1",
        "/ckpts",
        "v.pt",
    )
    assert flags.no_half_vae and not flags.no_half and not flags.lowvram
    assert flags.enable_insecure_extension_access and flags.disable_extra_extensions and flags.theme == "dark"
    assert flags.server_port == 9000 and flags.host == "0.0.0.0"
    as_dict = flags_as_dict(flags)
    assert as_dict["use_cpu"] == ["all"] and as_dict["api_auth"] == "a:b" and as_dict["port"] == 9000


def test_defaults() -> None:
    flags = parse_flags([])
    assert (flags.port, flags.server_port, flags.host) == (None, 7860, "127.0.0.1")
    assert (flags.precision, flags.use_cpu, flags.api, flags.listen) == ("autocast", (), False, False)
    assert flags.reachable_from_other_hosts is False
    assert parse_flags(["--nowebui"]).server_port == 7861
    assert parse_flags(["--nowebui", "--port", "8000"]).server_port == 8000


@pytest.mark.parametrize(
    ("argv", "host", "reachable"),
    [
        (["--listen"], "0.0.0.0", True),
        (["--server-name", "my.host"], "my.host", True),
        (["--server-name", "127.0.0.1"], "127.0.0.1", False),
        (["--server-name", "localhost"], "localhost", False),
        (["--share"], "127.0.0.1", True),
        (["--ngrok", "token"], "127.0.0.1", True),
    ],
)
def test_host_and_reachable_flag(argv: list[str], host: str, reachable: bool) -> None:
    flags = parse_flags(argv)
    assert (flags.host, flags.reachable_from_other_hosts) == (host, reachable)


@pytest.mark.parametrize("argv", [["--precision", "quarter"], ["--port", "http"], ["--no-such-flag"]])
def test_invalid_flags_are_rejected(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_flags(argv)
    assert "error" in capsys.readouterr().err


def test_parse_auth() -> None:
    assert parse_auth(None) == {} and parse_auth("") == {}
    assert parse_auth("a:b") == {"a": "b"}
    assert parse_auth("a:b, c:d:e ,") == {"a": "b", "c": "d:e"}  # passwords may hold colons
    assert parse_auth("a:") == {"a": ""}
    for bad in ("justuser", ":pass", "a:b,nocolon"):
        with pytest.raises(ValueError, match="expected user:password"):
            parse_auth(bad)


def test_resolve_path(tmp_path) -> None:
    assert resolve_path(None, tmp_path) is None and resolve_path("", tmp_path) is None
    assert resolve_path("models", tmp_path) == tmp_path / "models"
    assert resolve_path("/abs/models", tmp_path).as_posix() == "/abs/models"


@pytest.mark.parametrize("argv", [["--use-cpu", "all"], ["--use-cpu", "sd", "--precision", "half"]])
def test_cpu_policy_is_fp32(argv: list[str]) -> None:
    policy = choose_policy(parse_flags(argv))
    assert policy.device == torch.device("cpu")
    assert (policy.dtype, policy.vae_dtype, policy.attention) == (torch.float32, torch.float32, "sdpa")
    assert policy.is_cuda is False


def test_cpu_fallback_without_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    import webui.models.devices as devices

    monkeypatch.setattr(devices, "cuda_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    policy = choose_policy(parse_flags(["--xformers", "--lowvram"]))
    assert (policy.device.type, policy.dtype, policy.attention, policy.offload) == (
        "cpu",
        torch.float32,
        "sdpa",
        "lowvram",
    )


def test_cuda_policy_precisions(monkeypatch: pytest.MonkeyPatch) -> None:
    import webui.models.devices as devices

    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    assert choose_policy(parse_flags([])).dtype == torch.float16
    assert choose_policy(parse_flags(["--device-id", "1"])).device == torch.device("cuda:1")
    half_vae = choose_policy(parse_flags(["--no-half-vae"]))
    assert (half_vae.dtype, half_vae.vae_dtype) == (torch.float16, torch.float32)
    assert choose_policy(parse_flags(["--precision", "full"])).dtype == torch.float32
    assert choose_policy(parse_flags(["--no-half"])).vae_dtype == torch.float32
    assert choose_policy(parse_flags(["--precision", "bf16"])).dtype == torch.bfloat16
    assert choose_policy(parse_flags(["--medvram"])).offload == "medvram"

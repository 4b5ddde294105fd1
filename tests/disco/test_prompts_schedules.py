"""Disco prompt syntax (``text:weight``, frame keys) and the safe ``[v]*n`` schedule parser."""

from __future__ import annotations

import builtins

import pytest

from webui.extensions.api import InvalidParameter

# --- prompts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "text", "weight"),
    [
        ("a castle:2", "a castle", 2.0),
        ("a cat:-0.5", "a cat", -0.5),
        ("style: ukiyo-e", "style: ukiyo-e", 1.0),
        ("a lighthouse", "a lighthouse", 1.0),
        ("  spaced out  :  1.5  ", "spaced out", 1.5),
        ("a:b:3", "a:b", 3.0),
        ("time 10:30 pm", "time 10:30 pm", 1.0),
        ("dawn:.25", "dawn", 0.25),
        ("fog:1e-1", "fog", 0.1),
        ("a sign reading: 5 cats", "a sign reading: 5 cats", 1.0),
        ("trailing colon:", "trailing colon:", 1.0),
        ("nan is text:nan", "nan is text:nan", 1.0),
    ],
)
def test_parse_prompt_splits_the_last_numeric_weight(disco, line, text, weight):
    prompt = disco("prompts").parse_prompt(line)
    assert (prompt.text, prompt.weight) == (text, weight)


@pytest.mark.parametrize("line", [":2", "   ", "", "x:1e999"])
def test_parse_prompt_rejects_empty_text_and_infinite_weight(disco, line):
    with pytest.raises(InvalidParameter) as info:
        disco("prompts").parse_prompt(line)
    assert info.value.field == "text_prompts"


def test_parse_prompts_keeps_order_and_negative_weights(disco):
    prompts = disco("prompts").parse_prompts(["a castle:2", "style: ukiyo-e", "blur:-0.5"])
    assert [(p.text, p.weight) for p in prompts] == [
        ("a castle", 2.0),
        ("style: ukiyo-e", 1.0),
        ("blur", -0.5),
    ]


@pytest.mark.parametrize("lines", [["a:1", "b:-1"], ["a:0"], [], ["a:0.5", "b:-0.4999"]])
def test_parse_prompts_rejects_weights_summing_to_zero_or_no_prompts(disco, lines):
    with pytest.raises(InvalidParameter) as info:
        disco("prompts").parse_prompts(lines)
    assert info.value.field == "text_prompts"
    assert "sum" in info.value.message or "no prompts" in info.value.message


def test_parse_prompts_rejects_a_bare_string(disco):
    with pytest.raises(InvalidParameter):
        disco("prompts").parse_prompts("a castle:2")


def test_prompts_for_frame_uses_the_latest_key_not_after_the_frame(disco):
    prompts = disco("prompts")
    table = {0: ["castle"], 100: ["forest", "fog:2"]}
    assert prompts.prompts_for_frame(table, 0) == ["castle"]
    assert prompts.prompts_for_frame(table, 99) == ["castle"]
    assert prompts.prompts_for_frame(table, 100) == ["forest", "fog:2"]
    assert prompts.prompts_for_frame(table, 5000) == ["forest", "fog:2"]
    with pytest.raises(InvalidParameter, match="frame 5"):
        prompts.prompts_for_frame({10: ["late"]}, 5)
    with pytest.raises(InvalidParameter):
        prompts.prompts_for_frame({}, 0)


def test_parse_frame_prompts_reads_frame_keys_only_at_line_start(disco):
    text = "0: a castle:2\n100: a forest\nyellow color scheme\n\n  100 : fog:-0.5\nstyle: ukiyo-e"
    assert disco("prompts").parse_frame_prompts(text) == {
        0: ["a castle:2", "yellow color scheme", "style: ukiyo-e"],
        100: ["a forest", "fog:-0.5"],
    }


def test_parse_frame_prompts_without_keys_is_frame_zero(disco):
    assert disco("prompts").parse_frame_prompts("a castle:2\nstyle: ukiyo-e") == {
        0: ["a castle:2", "style: ukiyo-e"]
    }


@pytest.mark.parametrize("text", ["", "\n  \n", "7:", "3: :2"])
def test_parse_frame_prompts_rejects_missing_prompts(disco, text):
    with pytest.raises(InvalidParameter) as info:
        disco("prompts").parse_frame_prompts(text)
    assert info.value.field == "text_prompts"


# --- schedules --------------------------------------------------------------------------------------


def test_parse_schedule_expands_disco_syntax(disco):
    values = disco("schedules").parse_schedule("[12]*400+[4]*600")
    assert len(values) == 1000
    assert set(values[:400]) == {12} and set(values[400:]) == {4}
    assert all(type(v) is int for v in values)


def test_parse_schedule_tolerates_whitespace_and_bare_numbers(disco):
    schedules = disco("schedules")
    assert schedules.parse_schedule(" [ 12 ] * 400 +\n[4]*600 ") == schedules.parse_schedule(
        "[12]*400+[4]*600"
    )
    assert schedules.parse_schedule("7") == (7,) * 1000
    assert schedules.parse_schedule(" 0.5 ", kind=float) == (0.5,) * 1000
    assert schedules.parse_schedule("[1]*3+[2]*2", length=5) == (1, 1, 1, 2, 2)


def test_parse_schedule_kinds(disco):
    schedules = disco("schedules")
    gray = schedules.parse_schedule("[0.2]*400+[0]*600", kind=float)
    assert gray[0] == 0.2 and gray[399] == 0.2 and gray[400] == 0.0 and all(type(v) is float for v in gray)
    flags = schedules.parse_schedule("[True]*250+[False]*750", kind=bool)
    assert flags.count(True) == 250 and flags[250] is False
    assert schedules.parse_schedule("[1e-2]*1000", kind=float)[0] == 0.01


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("__import__('os').system('echo hi')", int),
        ("[12]*400+[4]*500", int),  # 900 entries
        ("[12]*400+[4]*700", int),  # 1100 entries
        ("[12]*-400+[4]*1400", int),
        ("[[12]]*1000", int),
        ("[12]*400+abs(4)", int),
        ("12*1000", int),
        ("[12]*400+[4]*600;", int),
        ("[12,4]*500", int),
        ("[12.5]*1000", int),
        ("[x]*1000", int),
        ("", int),
        ("[1e999]*1000", float),
        ("[12]*0+[12]*1000", int),
        ("[12]*1000.0", int),
        ("[maybe]*1000", bool),
        ("[12]*400-[4]*600", int),
    ],
)
def test_parse_schedule_rejects_anything_but_the_syntax(disco, text, kind):
    with pytest.raises(InvalidParameter) as info:
        disco("schedules").parse_schedule(text, kind=kind, field="cut_overview")
    assert info.value.field == "cut_overview"
    assert "schedule" in info.value.message or "count" in info.value.message or "finite" in info.value.message


def test_parse_schedule_never_evaluates_code(disco, monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert disco("schedules").parse_schedule("[3]*1000")[999] == 3


def test_schedule_value_maps_steps_to_disco_indices(disco):
    schedules = disco("schedules")
    overview = schedules.parse_schedule("[12]*400+[4]*600")
    assert schedules.schedule_index(0, 250) == 0
    assert schedules.schedule_index(99, 250) == 396
    assert schedules.schedule_index(100, 250) == 400
    assert schedules.schedule_index(249, 250) == 996
    assert schedules.schedule_index(10, 10) == 999  # the end of the run stays inside the list
    assert schedules.schedule_value(overview, 99, 250) == 12
    assert schedules.schedule_value(overview, 100, 250) == 4
    assert schedules.schedule_value(overview, 3, 10) == 12 and schedules.schedule_value(overview, 4, 10) == 4
    with pytest.raises(InvalidParameter):
        schedules.schedule_value(overview, 11, 10)
    with pytest.raises(InvalidParameter):
        schedules.schedule_value("[12]*1000", 0, 10)


def test_presets_are_immutable_and_valid(disco):
    schedules = disco("schedules")
    presets = schedules.SCHEDULE_PRESETS
    assert {"default", "fast", "detailed", "coherent"} <= set(presets)
    assert dict(presets["default"]) == {
        "cut_overview": "[12]*400+[4]*600",
        "cut_innercut": "[4]*400+[12]*600",
        "cut_ic_pow": "[1]*1000",
        "cut_icgray_p": "[0.2]*400+[0]*600",
    }
    with pytest.raises(TypeError):
        presets["mine"] = presets["default"]
    with pytest.raises(TypeError):
        presets["default"]["cut_overview"] = "[1]*1000"
    for name, preset in presets.items():
        overview = schedules.parse_schedule(preset["cut_overview"])
        inner = schedules.parse_schedule(preset["cut_innercut"])
        assert min(a + b for a, b in zip(overview, inner, strict=True)) >= 1, name
        assert min(schedules.parse_schedule(preset["cut_ic_pow"], kind=float)) > 0, name
        gray = schedules.parse_schedule(preset["cut_icgray_p"], kind=float)
        assert all(0 <= p <= 1 for p in gray), name

    def total_cuts(preset) -> int:
        overview = schedules.parse_schedule(preset["cut_overview"])
        inner = schedules.parse_schedule(preset["cut_innercut"])
        return sum(overview) + sum(inner)

    assert total_cuts(presets["fast"]) < total_cuts(presets["default"]) < total_cuts(presets["detailed"])
    with pytest.raises(InvalidParameter):
        schedules.cut_preset("nope")

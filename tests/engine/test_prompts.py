"""Prompt syntax: emphasis, scheduling, AND, extra networks, chunking, emphasis modes.

Expected values are worked out by hand from A1111's rules (factors 1.1 per bracket, multiplied from the
innermost bracket outwards; schedules as ``[end_at_step, text]``).
"""

from __future__ import annotations

import pytest
import torch

from webui.engine.errors import InvalidParameter
from webui.engine.prompts import (
    CLIP_L_SPEC,
    EMPHASIS_MODES,
    OPEN_CLIP_SPEC,
    EmbeddingMatch,
    ExtraNetworkParams,
    apply_emphasis,
    count_prompt_tokens,
    count_tokens,
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    lora_args,
    parse_extra_networks,
    parse_prompt_attention,
    prompt_at_step,
    split_and_prompts,
    target_token_count,
    tokenize_prompt,
)

BOS, EOS, COMMA = 49406, 49407, 267

# ---------------------------------------------------------------- emphasis brackets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [["normal text", 1.0]]),
        ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
        ("((x))", [["x", 1.1 * 1.1]]),
        ("[x]", [["x", 1 / 1.1]]),
        ("(x:1.3)", [["x", 1.3]]),
        ("(unbalanced", [["unbalanced", 1.1]]),
        ("unbalanced)", [["unbalanced)", 1.0]]),
        ("\\(literal\\]", [["(literal]", 1.0]]),
        ("a \\\\ b", [["a \\ b", 1.0]]),
        ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
        ("a:1.2) b", [["a:1.2) b", 1.0]]),
        ("", [["", 1.0]]),
        ("a BREAK b", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
        ("BREAKING news", [["BREAKING news", 1.0]]),
        (
            "a (very beautiful:1.3) (house) [garden]",
            [
                ["a ", 1.0],
                ["very beautiful", 1.3],
                [" ", 1.0],
                ["house", 1.1],
                [" ", 1.0],
                ["garden", 1 / 1.1],
            ],
        ),
    ],
)
def test_parse_prompt_attention(text: str, expected: list[list[object]]) -> None:
    assert parse_prompt_attention(text) == expected


def test_nested_and_unclosed_brackets_multiply_innermost_first() -> None:
    # "(((house:1.3))": house gets 1.3, then 1.1 from the second "("; the first "(" never closes and
    # adds 1.1 to everything after it at the end.
    parsed = parse_prompt_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
    assert parsed == [
        ["a ", 1.0],
        ["house", 1.3 * 1.1 * 1.1],
        [" ", 1.1],
        ["on", 1 / 1.1 * 1.1],
        [" a ", 1.1],
        ["hill", 0.5 * 1.1],
        [", sun, ", 1.1],
        ["sky", 1.1 * 1.1 * 1.1 * 1.1],
        [".", 1.1],
    ]


def test_break_inside_brackets_stays_a_break() -> None:
    parsed = parse_prompt_attention("(a BREAK b)")
    assert parsed == [["a", 1.1], ["BREAK", -1.0], ["b", 1.1]]


# ---------------------------------------------------------------- scheduling


def schedule(prompt: str, steps: int = 10, hires: int | None = None, old: bool = False) -> list[list[object]]:
    return get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [[10, "test"]]),
        ("a [b:3]", [[3, "a "], [10, "a b"]]),
        ("a [b: 3]", [[3, "a "], [10, "a b"]]),
        ("a [b:c:3]", [[3, "a b"], [10, "a c"]]),
        ("a [b::3] d", [[3, "a b d"], [10, "a  d"]]),
        ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
        ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
        ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
        ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
        ("a [unbalanced", [[10, "a [unbalanced"]]),
        ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
        ("a [b:0.25] c", [[2, "a  c"], [10, "a b c"]]),
        ("a [b:c:1.0]", [[10, "a b"]]),
        ("a [b:c:0]", [[10, "a c"]]),
        ("a [b:c:30]", [[10, "a b"]]),
        ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
        ("(a [b:c:3] d)", [[3, "(a b d)"], [10, "(a c d)"]]),
        ("\\[a:b:3\\]", [[10, "\\[a:b:3\\]"]]),
        ("a | b [c:3]", [[10, "a | b [c:3]"]]),
    ],
)
def test_prompt_editing(prompt: str, expected: list[list[object]]) -> None:
    assert schedule(prompt) == expected


def test_alternation_cycles_every_step() -> None:
    assert schedule("[a|(b:1.1)]", 4) == [[1, "a"], [2, "(b:1.1)"], [3, "a"], [4, "(b:1.1)"]]
    assert [text for _, text in schedule("[fe|||]male", 5)] == ["female", "male", "male", "male", "female"]
    assert schedule("[cat|dog] [x:y:2]", 3) == [[1, "cat x"], [2, "dog x"], [3, "cat y"]]


def test_old_scheduling_treats_values_below_one_as_fractions() -> None:
    assert schedule("[a:b:1.0]", old=True) == [[1, "a"], [10, "b"]]
    assert schedule("[a:b:0.5]", old=True) == [[5, "a"], [10, "b"]]
    assert schedule("[a:b:1.0]", old=False) == [[10, "a"]]


def test_hires_steps_count_on_from_the_first_pass() -> None:
    assert schedule("a [b:.5] c", 10, hires=10) == [[10, "a b c"]]
    assert schedule("a [b:1.5] c", 10, hires=10) == [[5, "a  c"], [10, "a b c"]]
    assert schedule("a [b:15] c", 10, hires=10) == [[5, "a  c"], [10, "a b c"]]
    assert schedule("a [b:c:15]", 10, hires=20) == [[5, "a b"], [20, "a c"]]


def test_schedules_for_a_batch_keep_order_and_duplicates() -> None:
    result = get_learned_conditioning_prompt_schedules(["x", "[a:b:5]", "x"], 10)
    assert result == [[[10, "x"]], [[5, "a"], [10, "b"]], [[10, "x"]]]
    assert result[0] is not result[2]


def test_prompt_at_step() -> None:
    assert prompt_at_step("a [b:c:3]", 3, 10) == "a b"
    assert prompt_at_step("a [b:c:3]", 4, 10) == "a c"


# ---------------------------------------------------------------- AND


def test_split_and_prompts() -> None:
    assert split_and_prompts("a cat AND a dog:0.5") == [("a cat", 1.0), (" a dog", 0.5)]
    assert split_and_prompts("x AND y : 2 ") == [("x", 1.0), (" y", 2.0)]
    assert split_and_prompts("ANDROID (face:1.2)") == [("ANDROID (face:1.2)", 1.0)]
    assert split_and_prompts("a and b") == [("a and b", 1.0)]
    assert split_and_prompts("a:-1.5") == [("a", -1.5)]


def test_get_multicond_prompt_list_shares_sub_prompts() -> None:
    res, flat, indexes = get_multicond_prompt_list(["a AND b:0.5", "b AND c"])
    assert flat == ["a", " b", "b", " c"]
    assert res == [[(0, 1.0), (1, 0.5)], [(2, 1.0), (3, 1.0)]]
    assert indexes == {"a": 0, " b": 1, "b": 2, " c": 3}
    res, flat, _ = get_multicond_prompt_list(["x", "x"])
    assert (res, flat) == ([[(0, 1.0)], [(0, 1.0)]], ["x"])


# ---------------------------------------------------------------- extra networks


def test_parse_extra_networks() -> None:
    text, networks = parse_extra_networks("a <lora:cat:0.8> b <hypernet:h:1><lora:dog:0.5:unet=0.2>")
    assert text == "a  b "
    assert networks["lora"] == [
        ExtraNetworkParams(["cat", "0.8"]),
        ExtraNetworkParams(["dog", "0.5", "unet=0.2"]),
    ]
    assert networks["hypernet"][0].positional == ["h", "1"]
    assert networks["lora"][1].named == {"unet": "0.2"}
    assert parse_extra_networks("no tags <here>") == ("no tags <here>", {})


def test_lora_args() -> None:
    _, networks = parse_extra_networks("<lora:a><lora:b:0.5><lora:c:0.5:0.25:8><lora:d:te=0.3:unet=0.7>")
    args = [lora_args(params) for params in networks["lora"]]
    assert [(a.name, a.te_multiplier, a.unet_multiplier, a.dyn_dim) for a in args] == [
        ("a", 1.0, 1.0, None),
        ("b", 0.5, 0.5, None),
        ("c", 0.5, 0.25, 8),
        ("d", 0.3, 0.7, None),
    ]
    with pytest.raises(InvalidParameter) as error:
        lora_args(ExtraNetworkParams(["x", "strong"]))
    assert error.value.field == "prompt"


# ---------------------------------------------------------------- chunking


def fake_tokenize(texts: list[str]) -> list[list[int]]:
    """Word-level stand-in for CLIP: ``wN`` -> 1000 + N, ``,`` -> 267, ``(`` -> 7, ``)`` -> 8, other -> 9."""
    result = []
    for text in texts:
        ids = []
        for word in text.replace(",", " , ").replace("(", " ( ").replace(")", " ) ").split():
            special = {",": COMMA, "(": 7, ")": 8}.get(word)
            if special is None:
                special = 1000 + int(word[1:]) if word[:1] == "w" and word[1:].isdigit() else 9
            ids.append(special)
        result.append(ids)
    return result


def words(count: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + count))


def test_empty_prompt_gives_one_padded_chunk() -> None:
    chunks, count = tokenize_prompt("", fake_tokenize)
    assert len(chunks) == 1
    assert chunks[0].tokens == (BOS, EOS) + (EOS,) * 75
    assert chunks[0].multipliers == (1.0,) * 77
    assert count == 0
    assert count_tokens("", fake_tokenize) == (0, 75)


def test_chunk_layout_and_multipliers() -> None:
    chunks, count = tokenize_prompt("w1 (w2) [w3]", fake_tokenize)
    (chunk,) = chunks
    assert chunk.tokens[:5] == (BOS, 1001, 1002, 1003, EOS)
    assert len(chunk.tokens) == 77 and len(chunk.multipliers) == 77
    assert chunk.multipliers[:5] == (1.0, 1.0, 1.1, 1 / 1.1, 1.0)
    assert count == 3


def test_open_clip_pads_with_zero_after_the_end_token() -> None:
    (chunk,), _ = tokenize_prompt("w1", fake_tokenize, OPEN_CLIP_SPEC)
    assert chunk.tokens[:3] == (BOS, 1001, EOS)
    assert chunk.tokens[3:] == (0,) * 74


def test_75_tokens_fit_76_do_not() -> None:
    chunks, count = tokenize_prompt(words(75), fake_tokenize)
    assert len(chunks) == 1 and count == 75
    assert chunks[0].tokens[-1] == EOS and chunks[0].tokens[75] == 1074
    chunks, count = tokenize_prompt(words(76), fake_tokenize)
    assert len(chunks) == 2 and count == 76
    assert chunks[1].tokens[:3] == (BOS, 1075, EOS)
    assert count_tokens(words(76), fake_tokenize) == (76, 150)
    assert [target_token_count(n) for n in (0, 1, 75, 76, 150, 151)] == [75, 75, 75, 150, 150, 225]


def test_comma_backtracking_moves_the_tail_to_the_next_chunk() -> None:
    # 70 words, a comma, 10 words: when the chunk is full it holds 70 words, the comma and 4 words; the
    # comma is 5 tokens from the end (<= 20), so those 4 words move on.
    text = words(70) + ", " + words(10, start=70)
    chunks, count = tokenize_prompt(text, fake_tokenize)
    assert len(chunks) == 2
    assert chunks[0].tokens[70:73] == (1069, COMMA, EOS)
    assert chunks[0].tokens[73:] == (EOS,) * 4
    assert chunks[1].tokens[1:12] == (*range(1070, 1080), EOS)
    assert count == 75 + 10


def test_no_backtracking_when_the_comma_is_too_far() -> None:
    text = words(10) + ", " + words(70, start=10)
    chunks, _ = tokenize_prompt(text, fake_tokenize)
    assert chunks[0].tokens[75] == 1073  # 10 words, comma, 64 words: full chunk kept
    assert chunks[1].tokens[1:7] == (1074, 1075, 1076, 1077, 1078, 1079)


def test_break_starts_a_new_chunk() -> None:
    chunks, count = tokenize_prompt("w1 BREAK w2", fake_tokenize)
    assert [chunk.tokens[:3] for chunk in chunks] == [(BOS, 1001, EOS), (BOS, 1002, EOS)]
    assert count == 76
    chunks, _ = tokenize_prompt("BREAK w1", fake_tokenize)
    assert [chunk.tokens[1] for chunk in chunks] == [EOS, 1001]
    assert len(tokenize_prompt("w1 BREAK", fake_tokenize)[0]) == 1


def test_emphasis_none_takes_brackets_literally() -> None:
    (chunk,), _ = tokenize_prompt("(w1)", fake_tokenize, emphasis="None")
    assert chunk.tokens[:5] == (BOS, 7, 1001, 8, EOS)
    assert chunk.multipliers[:4] == (1.0, 1.0, 1.0, 1.0)


def test_embedding_placeholders_become_fixes() -> None:
    def find(tokens: list[int], position: int) -> EmbeddingMatch | None:
        return EmbeddingMatch("emb", vectors=3, length_in_tokens=1) if tokens[position] == 1009 else None

    (chunk,), count = tokenize_prompt("w1 (w9) w2", fake_tokenize, find_embedding=find)
    assert chunk.tokens[:7] == (BOS, 1001, 0, 0, 0, 1002, EOS)
    assert chunk.multipliers[2:5] == (1.1, 1.1, 1.1)
    assert [(fix.offset, fix.embedding.name) for fix in chunk.fixes] == [(2, "emb")]
    assert count == 5


def test_count_prompt_tokens_takes_the_longest_part() -> None:
    text = "w1 <lora:x:1> AND [w1 w2 w3:w4:5]"
    assert count_prompt_tokens(text, 10, fake_tokenize) == (3, 75)
    assert count_prompt_tokens("w1 AND w2", 10, fake_tokenize, is_positive=False) == (3, 75)


def test_spec_defaults_are_clip_l() -> None:
    assert (CLIP_L_SPEC.bos_id, CLIP_L_SPEC.eos_id, CLIP_L_SPEC.pad_id, CLIP_L_SPEC.comma_id) == (
        49406,
        49407,
        49407,
        267,
    )


# ---------------------------------------------------------------- emphasis modes


def test_apply_emphasis_modes() -> None:
    generator = torch.Generator().manual_seed(0)
    z = torch.rand(2, 4, 3, generator=generator) + 0.5
    multipliers = torch.tensor([[1.0, 1.1, 1.0, 0.5], [1.0, 1.0, 2.0, 1.0]])

    no_norm = apply_emphasis(z, multipliers, "No norm")
    torch.testing.assert_close(no_norm[0, 1], z[0, 1] * 1.1)
    torch.testing.assert_close(no_norm[1, 2], z[1, 2] * 2.0)

    original = apply_emphasis(z, multipliers, "Original")
    torch.testing.assert_close(original.mean(), z.mean())
    torch.testing.assert_close(original / no_norm, torch.full_like(z, (z.mean() / no_norm.mean()).item()))

    assert torch.equal(apply_emphasis(z, multipliers, "Ignore"), z)
    assert torch.equal(apply_emphasis(z, multipliers, "None"), z)


def test_unknown_emphasis_mode_lists_valid_ones() -> None:
    with pytest.raises(InvalidParameter) as error:
        apply_emphasis(torch.ones(1, 1, 1), torch.ones(1, 1), "Strong")
    assert error.value.field == "emphasis"
    for mode in EMPHASIS_MODES:
        assert repr(mode) in error.value.message
    with pytest.raises(InvalidParameter):
        tokenize_prompt("x", fake_tokenize, emphasis="original")

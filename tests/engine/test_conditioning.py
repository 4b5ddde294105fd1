"""TextConditioner on the tiny SD1 / SDXL models: emphasis, prompt editing, BREAK, clip skip, cache."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from webui.context import AppContext
from webui.engine.conditioning import TextConditioner
from webui.engine.errors import InvalidParameter


@pytest.fixture()
def sd1(app_context: AppContext):
    """The loaded tiny SD1 model."""
    return app_context.models.load("tiny-sd1")


@contextmanager
def counting_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Count forward calls of ``module`` (the batch size of each) with a removable hook."""
    calls: list[int] = []
    handle = module.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        yield calls
    finally:
        handle.remove()


def _clip_hidden(model, text: str, layer: int, final_norm: bool) -> torch.Tensor:
    """The CLIP output of ``text`` (one chunk) at ``hidden_states[layer]``, computed independently."""
    tokenizer, encoder = model.tokenizers[0], model.text_encoders[0]
    ids = tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        out = encoder(input_ids=ids, output_hidden_states=True)
        z = out.hidden_states[layer]
        if final_norm:
            z = getattr(encoder, "text_model", encoder).final_layer_norm(z)
    return z[0]


def test_plain_prompt_is_the_clip_last_layer(sd1):
    cond = TextConditioner(sd1).encode("a photo of a cat")

    assert cond.context.shape == (77, 64)
    assert cond.pooled is None
    torch.testing.assert_close(cond.context, _clip_hidden(sd1, "a photo of a cat", -1, True))


def test_clip_skip_two_is_the_normalised_penultimate_layer(sd1):
    skip1 = TextConditioner(sd1, clip_skip=1).encode("a photo of a cat").context
    skip2 = TextConditioner(sd1, clip_skip=2).encode("a photo of a cat").context

    assert not torch.allclose(skip1, skip2)
    torch.testing.assert_close(skip2, _clip_hidden(sd1, "a photo of a cat", -2, True))


def test_weight_one_equals_the_plain_word(sd1):
    conditioner = TextConditioner(sd1)

    assert torch.equal(conditioner.encode("a (cat:1) sits").context, conditioner.encode("a cat sits").context)


def test_emphasis_changes_the_context(sd1):
    conditioner = TextConditioner(sd1)

    plain = conditioner.encode("a cat sits").context
    emphasised = conditioner.encode("a (cat:1.5) sits").context

    assert not torch.allclose(plain, emphasised)


def test_no_norm_emphasis_scales_only_the_weighted_token(sd1):
    conditioner = TextConditioner(sd1, emphasis="No norm")
    plain = conditioner.encode("a cat sits").context
    emphasised = conditioner.encode("a (cat:1.5) sits").context

    # BOS, "a", "cat", "sits", EOS ...: only position 2 is multiplied
    torch.testing.assert_close(emphasised[2], plain[2] * 1.5)
    keep = [i for i in range(77) if i != 2]
    torch.testing.assert_close(emphasised[keep], plain[keep])


def test_original_emphasis_restores_the_mean(sd1):
    conditioner = TextConditioner(sd1, emphasis="Original")
    plain = TextConditioner(sd1, emphasis="Ignore").encode("a (cat:1.5) sits").context
    emphasised = conditioner.encode("a (cat:1.5) sits").context

    multipliers = torch.ones(77, 1)
    multipliers[2] = 1.5
    scaled = plain * multipliers
    torch.testing.assert_close(emphasised, scaled * (plain.mean() / scaled.mean()))
    torch.testing.assert_close(emphasised.mean(), plain.mean())


def test_unknown_emphasis_is_rejected(sd1):
    with pytest.raises(InvalidParameter) as info:
        TextConditioner(sd1, emphasis="Loud")
    assert info.value.field == "emphasis"
    assert "Original" in str(info.value)


def test_break_makes_two_chunks(sd1):
    conditioner = TextConditioner(sd1)

    cond = conditioner.encode("a cat BREAK a dog")

    assert cond.context.shape == (154, 64)
    torch.testing.assert_close(cond.context[:77], conditioner.encode("a cat").context)
    torch.testing.assert_close(cond.context[77:], conditioner.encode("a dog").context)


def test_long_prompt_gets_a_second_chunk(sd1):
    conditioner = TextConditioner(sd1)
    text = " ".join(["cat"] * 80)

    assert conditioner.encode(text).context.shape == (154, 64)
    assert conditioner.count_tokens(text) == 80


def test_prompt_editing_switches_after_half_the_steps(sd1):
    conditioner = TextConditioner(sd1)
    a, b = conditioner.encode("a").context, conditioner.encode("b").context

    scheduled = conditioner.scheduled("[a:b:0.5]", 10)

    assert [end for end, _ in scheduled.steps] == [5, 10]
    # A1111 counts the sampler steps from 0 and keeps "a" up to and including step 5
    for step in range(6):
        assert torch.equal(scheduled.at(step).context, a), step
    for step in range(6, 10):
        assert torch.equal(scheduled.at(step).context, b), step


def test_and_prompts_become_weighted_parts(sd1):
    conditioner = TextConditioner(sd1)

    [image] = conditioner.image_conds(["a cat :1.5 AND a dog :0.5"], 10)

    assert [w for _, w in image.parts] == [1.5, 0.5]
    torch.testing.assert_close(image.parts[0][0].at(0).context, conditioner.encode("a cat").context)
    torch.testing.assert_close(image.parts[1][0].at(0).context, conditioner.encode("a dog").context)


def test_cache_avoids_re_encoding(sd1):
    conditioner = TextConditioner(sd1)

    with counting_calls(sd1.text_encoders[0]) as calls:
        conditioner.encode("a red circle")
        conditioner.encode("a red circle")
        conditioner.image_conds(["a red circle"] * 4, 20)
        conditioner.negative_conds(["a red circle", "blue"], 20)

    assert len(calls) == 2  # "a red circle" once, "blue" once


def test_sdxl_pooled_and_context_width(app_context: AppContext):
    model = app_context.models.load("tiny-sdxl")
    widths = [encoder.config.hidden_size for encoder in model.text_encoders]

    cond = TextConditioner(model).encode("a photo of a cat")

    assert widths == [64, 128]
    assert cond.context.shape == (77, sum(widths))
    assert cond.pooled is not None and cond.pooled.shape == (model.text_encoders[1].config.projection_dim,)
    assert torch.isfinite(cond.context).all() and torch.isfinite(cond.pooled).all()


def test_sdxl_refiner_has_only_the_big_encoder(app_context: AppContext):
    model = app_context.models.load("tiny-sdxl-refiner")

    cond = TextConditioner(model).encode("a cat BREAK a dog")

    assert cond.context.shape == (154, 128)
    assert cond.pooled is not None and cond.pooled.shape == (128,)


def test_original_emphasis_is_normalised_per_chunk(sd1):
    conditioner = TextConditioner(sd1)

    cond = conditioner.encode("a (cat:1.5) BREAK a dog")

    # A1111 encodes chunk by chunk: emphasis in the first chunk leaves the second one untouched
    torch.testing.assert_close(cond.context[77:], conditioner.encode("a dog").context)
    torch.testing.assert_close(cond.context[:77], conditioner.encode("a (cat:1.5)").context)


@pytest.mark.parametrize("name", ["tiny-sd2-v", "tiny-sdxl"])
def test_clip_skip_applies_to_sd1_only(app_context: AppContext, name: str):
    model = app_context.models.load(name)

    skip1 = TextConditioner(model, clip_skip=1).encode("a photo of a cat").context
    skip2 = TextConditioner(model, clip_skip=2).encode("a photo of a cat").context

    assert torch.equal(skip1, skip2)

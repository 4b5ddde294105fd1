"""Seeds and noise: reproducibility, batches, variation seeds, resize-seed-from, ENSD."""

from __future__ import annotations

import pytest
import torch

from webui.engine.errors import InvalidParameter
from webui.engine.seeds import SEED_RANGE, ImageNoise, image_seeds, resolve_seed, slerp

SHAPE = (4, 8, 12)


def first_draw(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """What a CPU generator seeded with ``seed`` produces first, computed without ImageNoise."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_resolve_seed_keeps_fixed_and_randomises_minus_one_and_none() -> None:
    assert resolve_seed(1234) == 1234
    assert resolve_seed(0) == 0
    drawn = {resolve_seed(-1) for _ in range(20)} | {resolve_seed(None) for _ in range(20)}
    assert all(0 <= s < SEED_RANGE for s in drawn)
    assert len(drawn) > 30  # 40 draws from 2**32 values repeat with negligible probability
    with pytest.raises(InvalidParameter) as info:
        resolve_seed("12")  # type: ignore[arg-type]
    assert info.value.field == "seed"


def test_image_seeds_count_up_and_freeze_seed_for_variations() -> None:
    assert image_seeds(100, 7, 3) == ([100, 101, 102], [7, 8, 9])
    assert image_seeds(100, 7, 3, subseed_strength=0.5) == ([100, 100, 100], [7, 8, 9])


def test_cpu_source_first_value_matches_independent_generator() -> None:
    noise = ImageNoise(SHAPE, [0], source="CPU").first()
    expected = first_draw(0, SHAPE)
    assert noise.shape == (1, *SHAPE)
    assert noise[0, 0, 0, 0].item() == expected[0, 0, 0].item()
    assert torch.equal(noise[0], expected)


def test_same_seed_same_noise_and_different_seed_different_noise() -> None:
    a = ImageNoise(SHAPE, [42]).first()
    b = ImageNoise(SHAPE, [42]).first()
    c = ImageNoise(SHAPE, [43]).first()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_batch_image_i_equals_single_run_with_seed_plus_i() -> None:
    seeds, _ = image_seeds(500, 0, 3)
    batch = ImageNoise(SHAPE, seeds).first()
    for i in range(3):
        single = ImageNoise(SHAPE, [500 + i]).first()
        assert torch.equal(batch[i], single[0])


def test_next_continues_each_image_generator() -> None:
    rng = ImageNoise(SHAPE, [5, 6], source="CPU")
    first = rng.first()
    second = rng.next()
    for i, seed in enumerate((5, 6)):
        generator = torch.Generator().manual_seed(seed)
        assert torch.equal(first[i], torch.randn(SHAPE, generator=generator))
        assert torch.equal(second[i], torch.randn(SHAPE, generator=generator))
    assert torch.equal(rng.noise_sampler(1.0, 0.5)[0], rng_third(5))


def rng_third(seed: int) -> torch.Tensor:
    """The third draw of a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(2):
        torch.randn(SHAPE, generator=generator)
    return torch.randn(SHAPE, generator=generator)


def test_next_before_first_returns_the_initial_noise() -> None:
    assert torch.equal(ImageNoise(SHAPE, [9]).next(), ImageNoise(SHAPE, [9]).first())


def test_eta_noise_seed_delta_reseeds_sampler_noise_only() -> None:
    plain = ImageNoise(SHAPE, [10])
    ensd = ImageNoise(SHAPE, [10], eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), ensd.first())
    assert torch.equal(ensd.next()[0], first_draw(10 + 31337, SHAPE))
    assert not torch.allclose(plain.next(), first_draw(10 + 31337, SHAPE)[None])


def a1111_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The variation-seed formula written out from A1111's description, element by element in numpy-like
    loops over (channel, column) so it is independent of the vectorised implementation."""
    out = torch.empty_like(low)
    cosines = []
    for c in range(low.shape[0]):
        for x in range(low.shape[2]):
            u, v = low[c, :, x], high[c, :, x]
            cosines.append(float(torch.dot(u / u.norm(), v / v.norm())))
    if sum(cosines) / len(cosines) > 0.9995:
        return low * val + high * (1 - val)
    k = 0
    for c in range(low.shape[0]):
        for x in range(low.shape[2]):
            omega = torch.acos(torch.tensor(cosines[k], dtype=torch.float64))
            k += 1
            wl = torch.sin((1 - val) * omega) / torch.sin(omega)
            wh = torch.sin(val * omega) / torch.sin(omega)
            out[c, :, x] = (wl * low[c, :, x].double() + wh * high[c, :, x].double()).float()
    return out


def test_variation_strength_zero_and_one_and_between() -> None:
    seed_noise, sub_noise = first_draw(1, SHAPE), first_draw(2, SHAPE)
    zero = ImageNoise(SHAPE, [1], [2], subseed_strength=0.0).first()[0]
    one = ImageNoise(SHAPE, [1], [2], subseed_strength=1.0).first()[0]
    mid = ImageNoise(SHAPE, [1], [2], subseed_strength=0.3).first()[0]
    assert torch.equal(zero, seed_noise)
    assert torch.allclose(one, sub_noise, atol=1e-5)
    assert torch.allclose(mid, a1111_slerp(0.3, seed_noise, sub_noise), atol=1e-5)
    # a spherical blend of two unit-variance noises keeps roughly unit variance; a linear one would not
    assert 0.8 < mid.std().item() < 1.2


def test_slerp_falls_back_to_a1111_linear_mix_for_parallel_inputs() -> None:
    low = first_draw(3, SHAPE)
    high = low * 1.0001
    assert torch.allclose(slerp(0.25, low, high), 0.25 * low + 0.75 * high)


def test_resize_seed_from_keeps_centre_identical() -> None:
    original = first_draw(77, (4, 8, 8))  # the noise of a 64x64 picture
    larger = ImageNoise((4, 12, 16), [77], seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.equal(larger[:, 2:10, 4:12], original)
    smaller = ImageNoise((4, 4, 6), [77], seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.equal(smaller, original[:, 2:6, 1:7])


def test_resize_seed_from_with_variation_blends_at_the_old_size() -> None:
    blended = slerp(0.5, first_draw(4, (4, 8, 8)), first_draw(8, (4, 8, 8)))
    larger = ImageNoise((4, 10, 10), [4], [8], 0.5, seed_resize_from_h=64, seed_resize_from_w=64).first()[0]
    assert torch.allclose(larger[:, 1:9, 1:9], blended)


def test_dtype_and_invalid_source() -> None:
    assert ImageNoise(SHAPE, [1], dtype=torch.float16).first().dtype == torch.float16
    with pytest.raises(InvalidParameter) as info:
        ImageNoise(SHAPE, [1], source="NV")
    assert "GPU" in info.value.message and "CPU" in info.value.message


@pytest.mark.gpu
def test_cpu_source_gives_the_same_noise_on_cuda() -> None:
    on_gpu = ImageNoise(SHAPE, [123], source="CPU", device="cuda").first()
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu()[0], first_draw(123, SHAPE))
    gpu_source = ImageNoise(SHAPE, [123], source="GPU", device="cuda")
    assert gpu_source.generator_device.type == "cuda"
    expected = torch.randn(SHAPE, generator=torch.Generator("cuda").manual_seed(123), device="cuda")
    assert torch.equal(gpu_source.first()[0], expected)

"""Loss values (spherical distance, TV, range, saturation) and Disco-style cutouts."""

from __future__ import annotations

import math

import pytest
import torch

from webui.extensions.api import InvalidParameter

# --- losses -----------------------------------------------------------------------------------------


def test_spherical_distance_known_values(disco):
    loss = disco("losses").spherical_dist_loss
    x = torch.tensor([1.0, 0.0, 0.0])
    assert float(loss(x, 3 * x)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(x, torch.tensor([0.0, 2.0, 0.0]))) == pytest.approx(math.pi**2 / 8, rel=1e-5)
    assert float(loss(x, -x)) == pytest.approx(math.pi**2 / 2, rel=1e-5)


def test_spherical_distance_is_half_the_squared_angle(disco):
    loss = disco("losses").spherical_dist_loss
    angles = torch.tensor([0.1, 0.7, 1.3, 2.0, 3.0], dtype=torch.float64)
    a = torch.stack([torch.ones_like(angles), torch.zeros_like(angles)], -1)
    b = torch.stack([angles.cos(), angles.sin()], -1) * 5
    torch.testing.assert_close(loss(a, b), angles**2 / 2)


def test_spherical_distance_broadcasts_pairs(disco):
    loss = disco("losses").spherical_dist_loss
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(3, 8, generator=generator), torch.randn(4, 8, generator=generator)
    table = loss(images.unsqueeze(1), texts.unsqueeze(0))
    assert table.shape == (3, 4)
    assert float(table[2, 1]) == pytest.approx(float(loss(images[2], texts[1])), rel=1e-6)


def test_spherical_distance_gradient_is_finite_at_zero_distance(disco):
    x = torch.tensor([[0.3, -0.2, 0.9]], requires_grad=True)
    disco("losses").spherical_dist_loss(x, x.detach().clone()).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_tv_loss_per_image(disco):
    tv_loss = disco("losses").tv_loss
    edge = torch.tensor([[[[-1.0, 1.0], [-1.0, 1.0]]]])  # one vertical edge of height 2
    flat = torch.full((1, 1, 2, 2), 0.3)
    values = tv_loss(torch.cat([edge, flat]))
    assert values.shape == (2,)
    # replicate padding: two horizontal differences of 2, no vertical ones, mean over 4 pixels
    assert values.tolist() == pytest.approx([2 * 2**2 / 4, 0.0])


def test_range_and_saturation_losses_count_pixels_outside(disco):
    losses = disco("losses")
    images = torch.zeros(2, 1, 2, 2)
    images[0, 0, 0, 0] = 3.0  # 2 above the range
    images[1, 0, 1, 1] = -1.5  # 0.5 below
    images[1, 0, 0, 0] = 1.0  # on the edge: no loss
    assert losses.range_loss(images).tolist() == pytest.approx([4 / 4, 0.25 / 4])
    assert losses.sat_loss(images).tolist() == pytest.approx([2 / 4, 0.5 / 4])
    inside = torch.rand(3, 3, 8, 8) * 2 - 1
    assert losses.range_loss(inside).abs().max() == 0 and losses.sat_loss(inside).abs().max() == 0


# --- cutouts ----------------------------------------------------------------------------------------


def _images(batch=2, height=40, width=56, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def test_cutout_counts_shapes_and_range(disco):
    cutouts = disco("cutouts").Cutouts(24, overview=4, inner_cut=3)
    images = _images() * 1.2 - 0.1  # slightly outside [0, 1]: the output is still clamped
    out = cutouts(images, torch.Generator().manual_seed(1))
    assert out.shape == (7 * 2, 3, 24, 24)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert cutouts.count == 7


def test_cutouts_are_deterministic_under_a_generator(disco):
    cutouts = disco("cutouts").Cutouts(24, overview=2, inner_cut=6, ic_size_pow=1.5, ic_gray_p=0.3)
    images = _images()
    first = cutouts(images, torch.Generator().manual_seed(7))
    torch.manual_seed(999)  # the global RNG plays no part
    again = cutouts(images, torch.Generator().manual_seed(7))
    other = cutouts(images, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert float((first - other).abs().max()) > 0.05


def test_overview_cuts_without_augmentation(disco):
    module = disco("cutouts")
    images = _images(batch=2)
    out = module.Cutouts(24, overview=5, inner_cut=0, skip_augs=True)(images, torch.Generator())
    whole = module.resize(module.pad_to_square(images), 24)
    rows = out.view(5, 2, 3, 24, 24)  # row k * B + b is cut k of image b
    torch.testing.assert_close(rows[0], whole)
    assert torch.allclose(rows[1][:, 0], rows[1][:, 1]) and torch.allclose(rows[1][:, 1], rows[1][:, 2])
    torch.testing.assert_close(rows[2], whole.flip(-1))
    torch.testing.assert_close(rows[3], module.to_gray(whole.flip(-1)))
    torch.testing.assert_close(rows[4], rows[0])
    # the padding is black and symmetric: 8 rows above and below a 40x56 image
    padded = module.pad_to_square(images)
    assert padded.shape[-2:] == (56, 56) and padded[..., :8, :].abs().max() == 0
    assert padded[..., 48:, :].abs().max() == 0 and padded[..., 8:48, :].abs().min() >= 0


def test_inner_cut_gray_fraction(disco):
    module = disco("cutouts")
    out = module.Cutouts(16, overview=0, inner_cut=5, ic_gray_p=0.4, skip_augs=True)(
        _images(batch=1), torch.Generator().manual_seed(3)
    )
    is_gray = [bool(torch.allclose(cut[0], cut[1]) and torch.allclose(cut[1], cut[2])) for cut in out]
    assert is_gray == [True, True, False, False, False]


def test_inner_cut_size_follows_ic_size_pow(disco):
    """A horizontal ramp makes a crop's width visible as the value range inside it."""
    module = disco("cutouts")
    ramp = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).contiguous()

    def mean_span(power: float) -> float:
        cuts = module.Cutouts(16, overview=0, inner_cut=32, ic_size_pow=power, ic_gray_p=0.0, skip_augs=True)
        out = cuts(ramp, torch.Generator().manual_seed(0))
        return float((out[..., -1] - out[..., 0]).mean())

    small, uniform, large = mean_span(20.0), mean_span(1.0), mean_span(0.05)
    # The smallest crop is 16 of 64 pixels wide (span ~0.24), the largest the whole width (span 1).
    assert small < 0.35 and 0.45 < uniform < 0.75 and large > 0.85


def test_augmentations_change_cuts_but_stay_close(disco):
    module = disco("cutouts")
    images = _images(batch=1)
    plain = module.Cutouts(24, 1, 0, skip_augs=True)(images, torch.Generator().manual_seed(0))
    augmented = module.Cutouts(24, 1, 0)(images, torch.Generator().manual_seed(0))
    difference = float((plain - augmented).abs().mean())
    assert 0.005 < difference < 0.3


def test_cutouts_are_differentiable(disco):
    images = _images(batch=1).requires_grad_(True)
    out = disco("cutouts").Cutouts(16, 4, 4)(images, torch.Generator().manual_seed(0))
    out.sum().backward()
    assert torch.isfinite(images.grad).all() and float(images.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((24, 0, 0), "cut_overview"),
        ((0, 4, 4), "cut_size"),
        ((24, -1, 4), "cut_overview"),
        ((24, 4, 4, 0.0), "cut_ic_pow"),
        ((24, 4, 4, 1.0, 1.5), "cut_icgray_p"),
    ],
)
def test_cutouts_reject_bad_arguments(disco, args, field):
    with pytest.raises(InvalidParameter) as info:
        disco("cutouts").Cutouts(*args)
    assert info.value.field == field

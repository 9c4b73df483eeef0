"""PAIBB: the separable fast path against the pixel-level definition, and known answers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.analysis import paibb
from attnkit.analysis.paibb import (
    bilinear_matrix,
    crop_to_unpadded,
    paibb_images,
    paibb_pixel_reference,
    size_bucket_of_boxes,
)


def upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[h, w] -> [H, W]`` as the thesis did."""
    return F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]


def random_boxes(n: int, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Float xyxy boxes ``[n, 4]``, some reaching past the image border."""
    big_h, big_w = size
    scale = torch.tensor([big_w, big_h, big_w, big_h], dtype=torch.float64)
    a = torch.rand(n, 4, generator=gen, dtype=torch.float64) * 1.2 * scale - 0.1 * scale
    x0, x1 = torch.minimum(a[:, 0], a[:, 2]), torch.maximum(a[:, 0], a[:, 2])
    y0, y1 = torch.minimum(a[:, 1], a[:, 3]), torch.maximum(a[:, 1], a[:, 3])
    return torch.stack([x0, y0, x1, y1], 1)


@pytest.mark.parametrize(("out", "inp"), [(37, 5), (5, 5), (800, 25), (1066, 34), (7, 19)])
def test_bilinear_matrix_is_torchs_interpolation(out, inp):
    m = torch.rand(inp, 3, dtype=torch.float64)
    rm = bilinear_matrix(out, inp)
    expected = F.interpolate(m.T[None], size=out, mode="linear", align_corners=False)[0].T
    torch.testing.assert_close(rm @ m, expected)
    assert rm.sum(1).tolist() == pytest.approx([1.0] * out)
    maps = torch.rand(2, 4, 6)
    up = bilinear_matrix(31, 4) @ maps.double() @ bilinear_matrix(45, 6).T  # [2, 31, 45]
    torch.testing.assert_close(
        up.float(), F.interpolate(maps[:, None], (31, 45), mode="bilinear")[:, 0]
    )


@pytest.mark.parametrize(
    ("image", "grid"),
    [((120, 90), (8, 6)), ((64, 150), (4, 11)), ((33, 33), (5, 5)), ((9, 7), (12, 10))],
)
def test_fast_path_matches_pixel_reference(image, grid):
    gen = torch.Generator().manual_seed(sum(image) + sum(grid))
    big_h, big_w = image
    maps = torch.rand(24, 3, *grid, generator=gen) ** 4  # [P, heads, h, w]
    boxes = random_boxes(24, image, gen)
    boxes[0] = torch.tensor([0.0, 0.0, big_w, big_h])  # the whole image
    boxes[1] = torch.tensor([0.0, 0.0, 3.0, 2.0])  # top-left corner
    boxes[2] = torch.tensor([big_w - 2.5, big_h - 1.2, big_w, big_h])  # bottom-right corner
    boxes[3] = torch.tensor([2.1, 3.1, 2.4, 3.4])  # inside one pixel, no centre: 0
    boxes[4] = torch.tensor([2.4, 3.4, 2.6, 3.6])  # encloses one pixel centre
    boxes[5] = torch.tensor([-50.0, -50.0, -10.0, -10.0])  # outside the image: 0
    fast = paibb(maps, image, boxes)
    ref = paibb_pixel_reference(maps, image, boxes, chunk=5)
    assert fast.shape == ref.shape == (24, 3)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)
    assert fast[0].tolist() == pytest.approx([1.0] * 3)
    assert fast[3].tolist() == [0.0] * 3 and fast[5].tolist() == [0.0] * 3
    one = torch.stack([upsample(m, image)[3, 2] / upsample(m, image).sum() for m in maps[4]])
    torch.testing.assert_close(fast[4], one, atol=1e-6, rtol=0)


def test_integer_boxes_are_the_slice():
    gen = torch.Generator().manual_seed(3)
    image = (50, 70)
    maps = torch.rand(6, 5, 7, generator=gen)
    boxes = torch.tensor(
        [
            [0, 0, 70, 50],
            [10, 5, 30, 45],
            [69, 49, 70, 50],
            [3, 3, 4, 4],
            [0, 20, 70, 21],
            [5, 5, 5, 9],
        ]
    )
    fast = paibb(maps, image, boxes.float())
    for m, (x0, y0, x1, y1), v in zip(maps, boxes.tolist(), fast):
        up = upsample(m, image).double()
        assert v.item() == pytest.approx((up[y0:y1, x0:x1].sum() / up.sum()).item(), abs=1e-6)
    assert fast[5].item() == 0.0  # empty box


def test_all_mass_inside_gives_one():
    # A 4 x 4 grid on a 40 x 40 image: cell 1 feeds pixels whose source coordinate
    # (i + 0.5) / 10 - 0.5 lies in (0, 2), i.e. rows and columns 5 .. 24.
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 1.0
    assert paibb(m, (40, 40), torch.tensor([[5.0, 5.0, 25.0, 25.0]])).item() == pytest.approx(1.0)
    assert paibb(m, (40, 40), torch.tensor([[6.0, 5.0, 25.0, 25.0]])).item() < 1.0
    assert paibb(m, (40, 40), torch.tensor([[5.0, 5.0, 24.0, 25.0]])).item() < 1.0


def test_uniform_map_gives_the_boxs_pixel_fraction():
    image = (50, 70)
    maps = torch.full((3, 6, 9), 0.02)
    boxes = torch.tensor(
        [[10.2, 10.2, 20.7, 20.7], [0.0, 0.0, 35.0, 50.0], [-3.0, 48.6, 80.0, 60.0]]
    )
    # Centres inside: 11 x 11 pixels; half the image; the last row of 70 pixels.
    expected = [121 / 3500, 0.5, 70 / 3500]
    assert paibb(maps, image, boxes).tolist() == pytest.approx(expected)


def test_pitfall5_rounding_follows_the_pixel_centre_rule():
    gen = torch.Generator().manual_seed(5)
    maps = torch.rand(4, 2, 7, 9, generator=gen)  # [P, heads, h, w]
    image = (60, 80)
    fractional = torch.tensor([[10.2, 10.2, 20.7, 20.7]] * 4)
    equivalent = torch.tensor([[10.0, 10.0, 21.0, 21.0]] * 4)  # same pixel centres
    torch.testing.assert_close(paibb(maps, image, fractional), paibb(maps, image, equivalent))
    floored = torch.tensor([[10.0, 10.0, 20.0, 20.0]] * 4)  # naive rounding loses a row and column
    assert not torch.allclose(paibb(maps, image, fractional), paibb(maps, image, floored))


def test_pitfall4_padded_maps_must_be_cropped():
    gen = torch.Generator().manual_seed(4)
    hv, wv, h, w = 5, 7, 8, 10  # the image's grid inside a batch padded to the largest image
    image = (160, 224)
    own = torch.softmax(torch.randn(3, hv * wv, generator=gen), -1).reshape(3, hv, wv)
    padded = torch.zeros(3, h, w)
    padded[:, :hv, :wv] = own
    pad_mask = torch.ones(h, w, dtype=torch.bool)
    pad_mask[:hv, :wv] = False
    boxes = torch.tensor(
        [[20.0, 30.0, 120.0, 150.0], [0.0, 0.0, 60.0, 40.0], [100.5, 3.2, 224.0, 90.9]]
    )
    cropped = crop_to_unpadded(padded.reshape(3, h * w), (h, w), pad_mask.flatten())
    assert cropped.shape == (3, hv, wv)
    torch.testing.assert_close(paibb(cropped, image, boxes), paibb(own, image, boxes))
    assert not torch.allclose(paibb(padded, image, boxes), paibb(own, image, boxes), atol=1e-3)
    bad = pad_mask.clone()
    bad[0, 0] = True
    with pytest.raises(ValueError):
        crop_to_unpadded(padded.reshape(3, h * w), (h, w), bad)


def test_zero_mass_is_nan_and_images_of_different_sizes():
    assert math.isnan(paibb(torch.zeros(1, 3, 3), (30, 30), torch.tensor([[0, 0, 9, 9.0]])).item())
    gen = torch.Generator().manual_seed(6)
    maps = [torch.rand(2, 4, 5, generator=gen), torch.rand(3, 6, 3, generator=gen)]
    sizes = [(40, 50), (90, 45)]
    boxes = [random_boxes(2, sizes[0], gen), random_boxes(3, sizes[1], gen)]
    together = paibb_images(maps, sizes, boxes)
    apart = torch.cat([paibb(m, s, b) for m, s, b in zip(maps, sizes, boxes)])
    assert together.shape == (5,)
    torch.testing.assert_close(together, apart)
    with pytest.raises(ValueError):
        paibb(torch.rand(2, 4, 5), (40, 50), torch.rand(3, 4))


def test_size_buckets():
    boxes = torch.tensor(
        [[0, 0, 31, 32], [0, 0, 32, 32], [10, 10, 105.9, 106], [0, 0, 96, 96], [5, 5, 2, 2]]
    )
    assert size_bucket_of_boxes(boxes) == ["small", "medium", "medium", "large", "small"]
    assert size_bucket_of_boxes([1023.9, 1024, 9216.0]) == ["small", "medium", "large"]
    with pytest.raises(ValueError):
        size_bucket_of_boxes(torch.zeros(2, 3, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_paibb_on_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(7)
    maps = torch.rand(10, 2, 25, 34, generator=gen)
    boxes = random_boxes(10, (800, 1066), gen)
    fast = paibb(maps.cuda(), (800, 1066), boxes.cuda())
    assert fast.is_cuda
    torch.testing.assert_close(fast.cpu(), paibb(maps, (800, 1066), boxes))
    ref = paibb_pixel_reference(maps.cuda(), (800, 1066), boxes.cuda())
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=0)


def test_head_averaged_paibb_from_per_head_masses():
    """The analysis derives head-averaged PAIBB from per-head masses (both are linear in the map)."""
    from attnkit.analysis.paibb import box_and_total_mass, mass_ratio

    g = torch.Generator().manual_seed(5)
    maps = torch.rand(6, 4, 7, 9, generator=g)  # [P, H, h, w]
    xy = torch.rand(6, 2, generator=g) * torch.tensor([150.0, 100.0])
    boxes = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 60 + 2], 1)
    inside, total = box_and_total_mass(maps, (130, 170), boxes)
    from_masses = mass_ratio(inside.mean(1), total.mean(1), maps)
    direct = paibb(maps.mean(1), (130, 170), boxes)
    torch.testing.assert_close(from_masses, direct, atol=1e-6, rtol=0)
    torch.testing.assert_close(mass_ratio(inside, total, maps), paibb(maps, (130, 170), boxes))

"""MaxViT regions against hand-computed token sets (square, non-square, padded), the reachable
region against a token-by-token union, the ERF support of a known conv net, recorded rows put
back on the image for windows and dilated layouts, and the panels of the three figures."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from attnkit.attention.layout import KeyLayout
from attnkit.viz import receptive_fields as rf
from attnkit.viz.style import use_thesis_style

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _style():
    with matplotlib.rc_context():
        use_thesis_style(screen=False)
        yield
    plt.close("all")


def _mask(hw, rows, cols) -> torch.Tensor:
    out = torch.zeros(hw, dtype=torch.bool)
    out[np.ix_(list(rows), list(cols))] = True
    return out


def _image_axes(fig) -> int:
    return sum(1 for ax in fig.axes if ax.images)


def test_block_region_square_nonsquare_and_padded():
    got = rf.block_attention_region((16, 16), 4, (5, 9))
    assert torch.equal(got, _mask((16, 16), range(4, 8), range(8, 12)))
    got = rf.block_attention_region((6, 8), (2, 4), (3, 5))
    assert torch.equal(got, _mask((6, 8), [2, 3], range(4, 8)))
    # 10x10 padded to 12x12: the last window is cut to the two real rows / columns
    got = rf.block_attention_region((10, 10), 4, (9, 9))
    assert torch.equal(got, _mask((10, 10), [8, 9], [8, 9]))
    got = rf.block_attention_region((10, 7), (4, 3), (9, 6))
    assert torch.equal(got, _mask((10, 7), [8, 9], [6]))
    with pytest.raises(ValueError, match="outside"):
        rf.block_attention_region((10, 10), 4, (10, 0))


def test_grid_region_square_nonsquare_and_padded():
    got = rf.grid_attention_region((16, 16), 4, (5, 9))  # stride 4: residues (1, 1)
    assert torch.equal(got, _mask((16, 16), [1, 5, 9, 13], [1, 5, 9, 13]))
    assert int(got.sum()) == 16
    got = rf.grid_attention_region((6, 8), (3, 2), (3, 5))  # stride (2, 4)
    assert torch.equal(got, _mask((6, 8), [1, 3, 5], [1, 5]))
    # 10 padded to 12 with a grid of 4: stride 3; row 10 is padding and dropped
    got = rf.grid_attention_region((10, 10), 4, (1, 2))
    assert torch.equal(got, _mask((10, 10), [1, 4, 7], [2, 5, 8]))
    got = rf.grid_attention_region((10, 10), 4, (9, 9))
    assert torch.equal(got, _mask((10, 10), [0, 3, 6, 9], [0, 3, 6, 9]))
    # the region is the key set of the dilated layout's partition of the query
    layout = KeyLayout("dilated", (12, 8), part=(4, 2))
    grid = layout.on_grid(torch.ones(8), part=1 * 4 + 2)  # residues (1, 2) at stride (3, 4)
    assert torch.equal(rf.grid_attention_region((12, 8), (4, 2), (4, 6)), grid.bool())


def test_reachable_region_hand_cases():
    for query in [(0, 0), (6, 13), (13, 7)]:
        assert bool(rf.maxvit_reachable_region((14, 14), 7, 7, query, 1).all())
    assert bool(rf.maxvit_reachable_region((16, 16), 4, 4, (5, 9), 1).all())
    one = rf.maxvit_reachable_region((16, 16), 2, 2, (0, 0), 1)  # grid stride 8
    assert torch.equal(one, _mask((16, 16), [0, 1, 8, 9], [0, 1, 8, 9]))
    two = rf.maxvit_reachable_region((16, 16), 2, 2, (0, 0), 2)
    rows = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 14, 15]
    assert torch.equal(two, _mask((16, 16), rows, rows))
    zero = rf.maxvit_reachable_region((5, 6), 2, 2, (3, 4), 0)
    assert torch.equal(zero, _mask((5, 6), [3], [4]))
    # backward (grid, block, conv) differs: 4 residue tokens, their 4 windows, then the conv
    back = rf.maxvit_reachable_region((8, 8), 2, 2, (0, 0), 1, backward=True)
    assert torch.equal(back, _mask((8, 8), range(7), range(7)))
    fwd = rf.maxvit_reachable_region((8, 8), 2, 2, (0, 0), 1)
    assert torch.equal(fwd, _mask((8, 8), [0, 1, 4, 5], [0, 1, 4, 5]))


def _token_union(hw, window, grid, query, steps, backward=False):
    """The reachable set grown one token at a time from the single-token regions."""
    h, w = hw
    ops = [
        lambda r, c: _mask(
            hw, range(max(r - 1, 0), min(r + 2, h)), range(max(c - 1, 0), min(c + 2, w))
        ),
        lambda r, c: rf.block_attention_region(hw, window, (r, c)),
        lambda r, c: rf.grid_attention_region(hw, grid, (r, c)),
    ]
    region = _mask(hw, [query[0]], [query[1]])
    for _ in range(steps):
        for op in reversed(ops) if backward else ops:
            grown = torch.zeros(hw, dtype=torch.bool)
            for r, c in region.nonzero().tolist():
                grown |= op(r, c)
            region = grown
    return region


@pytest.mark.parametrize(
    ("hw", "window", "grid", "query"),
    [
        ((11, 13), (2, 3), (3, 2), (7, 1)),
        ((9, 20), 3, (2, 4), (0, 19)),
        ((17, 6), (5, 2), 3, (16, 5)),
    ],
)
def test_reachable_region_matches_token_union(hw, window, grid, query):
    for steps in (1, 2):
        for backward in (False, True):
            want = _token_union(hw, window, grid, query, steps, backward)
            got = rf.maxvit_reachable_region(hw, window, grid, query, steps, backward)
            assert torch.equal(got, want), (steps, backward)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.Tanh(),
            nn.Conv2d(4, 3, 3, padding=1),
        )
        self.head = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return self.head(self.body(x))


def test_erf_support_of_two_convs_and_no_side_effects():
    torch.manual_seed(0)
    model = _Net().train()
    images = torch.rand(1, 2, 11, 12)
    erf = rf.effective_receptive_field(model, images, "body", (5, 6))
    assert erf.shape == (11, 12)
    assert torch.equal(erf > 0, _mask((11, 12), range(3, 8), range(4, 9)))  # 5x5 support
    assert float(erf.max()) == pytest.approx(1.0)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.body[1].eval()  # a frozen norm inside a training model keeps its own mode
    assert torch.equal(rf.effective_receptive_field(model, images, "body", (5, 6)), erf)
    assert model.training and not model.body[1].training and model.body[0].training
    # in train mode batch norm mixes every position: the support is the whole image
    batch_stats = rf.effective_receptive_field(
        model.train(), images, "body", (5, 6), eval_mode=False
    )
    assert bool((batch_stats > 0).all())
    assert not images.requires_grad
    corner = rf.effective_receptive_field(model.eval(), images, "body.0", (0, 0))
    assert torch.equal(corner > 0, _mask((11, 12), [0, 1], [0, 1]))  # one conv, cut at the border
    assert not model.training


def test_erf_channels_last_and_signed():
    class Permuted(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
            self.out = nn.Identity()

        def forward(self, x):
            return self.out(self.conv(x).permute(0, 2, 3, 1))  # [B, h, w, C]

    model = Permuted()
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.weight[0, 0, 0, 0], model.conv.weight[1, 0, 1, 1] = -2.0, 1.0
    images = torch.rand(2, 1, 6, 6)
    with torch.no_grad():  # the ERF needs no grad mode from the caller
        erf = rf.effective_receptive_field(model, images, "out", (3, 2), channels_last=True)
        signed = rf.effective_receptive_field(
            model, images, "out", (3, 2), reduce="signed", channels_last=True
        )
    want = torch.zeros(6, 6)
    want[2, 1], want[3, 2] = 1.0, 0.5  # |-2| at offset (-1, -1), 1 at the query, / max
    assert torch.allclose(erf, want)
    assert float(signed[2, 1]) == pytest.approx(-1.0) and float(signed[3, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no sub-module"):
        rf.effective_receptive_field(model, images, "missing", (0, 0))


def test_upsample_to_image_integer_and_fractional():
    token = torch.arange(6.0).reshape(2, 3)
    up = rf.upsample_to_image(token, (4, 6))
    assert torch.equal(up, token.repeat_interleave(2, 0).repeat_interleave(2, 1))
    padded = torch.zeros(3, 4)
    padded[:2, :3] = token
    assert torch.equal(rf.upsample_to_image(padded, (4, 6), token_hw=(2, 3)), up)
    # 3 tokens on 7 pixels: pixel i -> token floor((i + 0.5) * 3 / 7)
    row = rf.upsample_to_image(torch.tensor([[0.0, 1.0, 2.0]]), (1, 7))
    assert row[0].tolist() == [0, 0, 1, 1, 1, 2, 2]
    mask = rf.upsample_to_image(torch.tensor([[True, False]]), (2, 4))
    assert mask.dtype == torch.bool and mask.sum() == 4


def test_query_maps_from_record_windows():
    # 2 images, grid 4x6 of 2x3 windows (4 per image), 2 heads; the real grid is 3x5
    layout = KeyLayout("windows", (4, 6), part=(2, 3))
    weights = torch.zeros(2 * 4, 2, 6, 6)
    # image 1, query (2, 4): window (1, 1) -> n = 4 + 3; inside it (0, 1) -> q = 1
    weights[7, 0, 1, 0] = 1.0  # head 0 -> key (2, 3)
    weights[7, 1, 1, 5] = 0.5  # head 1 -> key (3, 5): padding, cropped away
    maps = rf.query_maps_from_record(weights, layout, 1, (2, 4), 2, (6, 10), token_hw=(3, 5))
    assert maps.shape == (2, 6, 10)
    assert torch.equal(maps[0].nonzero(), torch.tensor([[4, 6], [4, 7], [5, 6], [5, 7]]))
    assert float(maps[1].sum()) == 0.0
    full = rf.query_maps_from_record(weights, layout, 1, (2, 4), 2, (8, 12))
    assert float(full[1, 6:8, 10:12].min()) == 0.5 and float(full[1].sum()) == 2.0
    with pytest.raises(ValueError, match="outside"):  # a padded query has no real map
        rf.query_maps_from_record(weights, layout, 1, (3, 4), 2, (6, 10), token_hw=(3, 5))
    with pytest.raises(ValueError, match="weights"):
        rf.query_maps_from_record(weights[:5], layout, 0, (0, 0), 2, (8, 12))


def test_query_maps_from_record_dilated_and_shifted():
    # grid 6x4 split in (3, 2) partitions: stride (2, 2), 4 partitions per image
    layout = KeyLayout("dilated", (6, 4), part=(3, 2))
    weights = torch.zeros(4, 1, 6, 6)
    # query (5, 2): residues (1, 0) -> partition 2; position (2, 1) -> q = 5
    weights[2, 0, 5, 1] = 1.0  # key index 1 of partition 2 = token (1, 2)
    maps = rf.query_maps_from_record(weights, layout, 0, (5, 2), 1, (12, 8))
    assert torch.equal(maps[0].nonzero(), torch.tensor([[2, 4], [2, 5], [3, 4], [3, 5]]))
    # shifted windows: the grid rolled by -1 row
    shifted = KeyLayout("windows", (4, 4), part=(2, 2), shift=(1, 0))
    weights = torch.zeros(4, 1, 4, 4)
    # query (0, 0) sits at rolled row 3 -> window (1, 0) = n 2, in-window (1, 0) -> q = 2
    weights[2, 0, 2, 3] = 1.0  # key (1, 1) of that window = rolled (3, 1) = token (0, 1)
    maps = rf.query_maps_from_record(weights, shifted, 0, (0, 0), 1, (4, 4))
    assert maps[0].nonzero().tolist() == [[0, 1]]


def test_plot_attention_regions_panels():
    image = torch.rand(3, 40, 56)
    erf = torch.zeros(40, 56)
    erf[10:20, 20:30] = torch.rand(10, 10) + 0.1
    fig = rf.plot_attention_regions(image, (10, 14), (2, 7), (5, 2), (3, 4), steps=(1, 2), erf=erf)
    assert _image_axes(fig) == 1 + 2 + 2 + 1
    assert [ax.get_title().split("\n")[0] for ax in fig.axes[:6]] == [
        "query (3, 4)",
        "block attention",
        "grid attention",
        "after 1 block",
        "after 2 blocks",
        "effective RF",
    ]
    assert fig.axes[1].get_title().endswith("14 / 140 tokens")  # a 2x7 window
    overlay = fig.axes[1].images[-1].get_array()  # [H, W, 4]: alpha only on the window
    assert np.count_nonzero(overlay[..., 3]) == 8 * 28
    fig = rf.plot_attention_regions(
        np.random.default_rng(0).random((20, 20, 3)), (5, 5), 2, 2, (0, 0), steps=(1,)
    )
    assert _image_axes(fig) == 4


def test_plot_query_head_maps_and_sparse_vs_softmax():
    image = np.random.default_rng(1).random((24, 32, 3))
    maps = torch.rand(5, 24, 32)
    maps[1, :12] = 0.0
    fig = rf.plot_query_head_maps(image, maps, query_pixel=(6.0, 9.0), ncols=3)
    assert _image_axes(fig) == 5
    heat = fig.axes[1].images[-1].get_array()
    assert np.ma.getmaskarray(heat)[:12].all() and not np.ma.getmaskarray(heat)[12:].any()
    sparse = torch.zeros(3, 24, 32)
    sparse[:, 5:8, 5:9] = 0.25
    fig = rf.plot_sparse_vs_softmax(
        image,
        {"softmax": torch.softmax(torch.rand(3, 768), -1).view(3, 24, 32), "sparsemax": sparse},
    )
    assert _image_axes(fig) == 6
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("zeros 0%") == 3 and texts.count("zeros 98%") == 3
    assert fig.axes[3].get_ylabel() == "sparsemax"

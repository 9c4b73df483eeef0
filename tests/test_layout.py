"""Key layouts: every key of a windowed / dilated row finds its token on the image grid.

The reference is timm's own partition functions (Swin's window_partition, MaxViT's window and
grid partitions) applied to a grid whose tokens hold their own index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from timm.models import maxxvit, swin_transformer

from attnkit.analysis.analyze import AttentionAnalysis
from attnkit.attention import KeyLayout
from attnkit.attention.hooks import AttentionModule


def _index_grid(gh: int, gw: int) -> torch.Tensor:
    return torch.arange(gh * gw, dtype=torch.float32).reshape(1, gh, gw, 1)  # [1, gh, gw, 1]


def _tokens_of(layout: KeyLayout) -> torch.Tensor:
    """Token index (row * gw + col) of every key, per window: ``[parts, K']``."""
    pos = layout.positions()
    return pos[..., 0] * layout.grid[1] + pos[..., 1]


@pytest.mark.parametrize("grid, part", [((8, 12), (4, 3)), ((6, 6), (2, 2))])
def test_windows_match_swin_and_maxvit_window_partition(grid, part):
    x = _index_grid(*grid)
    swin = swin_transformer.window_partition(x, part).reshape(-1, part[0] * part[1])
    maxvit = maxxvit.window_partition(x, list(part)).reshape(-1, part[0] * part[1])
    ours = _tokens_of(KeyLayout("windows", grid, part)).float()
    assert torch.equal(ours, swin) and torch.equal(ours, maxvit)


def test_shifted_windows_match_swin_after_its_cyclic_shift():
    grid, part, shift = (8, 8), (4, 4), (2, 2)
    x = torch.roll(_index_grid(*grid), shifts=(-shift[0], -shift[1]), dims=(1, 2))  # SW-MSA
    swin = swin_transformer.window_partition(x, part).reshape(-1, 16)
    assert torch.equal(_tokens_of(KeyLayout("windows", grid, part, shift=shift)).float(), swin)


def test_dilated_partitions_match_maxvit_grid_partition():
    grid, part = (8, 12), (4, 4)  # a 4x4 grid of tokens taken at stride (2, 3)
    x = _index_grid(*grid)
    maxvit = maxxvit.grid_partition(x, list(part)).reshape(-1, 16)
    assert torch.equal(_tokens_of(KeyLayout("dilated", grid, part)).float(), maxvit)


def test_a_row_goes_back_on_the_grid_where_its_keys_are():
    layout = KeyLayout("dilated", (4, 6), (2, 2), prefix_tokens=1)
    row = torch.zeros(1 + 4)
    row[1 + 3] = 1.0  # key (1, 1) of partition 5 = offset (1, 2), stride (2, 3)
    on_grid = layout.on_grid(row, part=5)
    assert on_grid.sum() == 1 and on_grid[1 * 2 + 1, 1 * 3 + 2] == 1
    with pytest.raises(ValueError, match="has 5 keys"):
        layout.on_grid(torch.zeros(4))
    with pytest.raises(ValueError, match="part dividing the grid"):
        KeyLayout("windows", (5, 6), (2, 2))


class UniformWindowAttention(AttentionModule):
    """Emits uniform attention inside 2x2 windows of a 4x4 token grid."""

    layout = KeyLayout("windows", (4, 4), (2, 2))

    def forward(self, images):
        batch = images.shape[0]
        if self.observed():
            weights = torch.full((batch * 4, 1, 4, 4), 0.25)  # [B * windows, H, N, N]
            self.emit(weights, layout=self.layout)
        return images.mean((1, 2, 3))


@dataclass
class _Batch:
    images: torch.Tensor

    @property
    def inputs(self):
        return {"images": self.images}

    def __len__(self):
        return self.images.shape[0]


def test_analysis_scores_windowed_attention_in_pixels_and_numbers_the_windows():
    rows = []
    analysis = AttentionAnalysis(UniformWindowAttention(), row_sink=rows.append)
    analysis.update(_Batch(torch.zeros(2, 3, 8, 8)))  # 2 px per token
    summary = analysis.summary()
    # Each query sees its own cell (0), two neighbours (2 px) and the diagonal (2 sqrt 2 px).
    expected = (0 + 2 + 2 + 2 * math.sqrt(2)) / 4
    assert summary["distance"][""]["mean"] == pytest.approx(expected)
    assert summary["gini"][""]["mean"] == pytest.approx(0.0, abs=1e-6)  # uniform
    (columns,) = rows
    assert sorted(set(columns["window"].tolist())) == [0, 1, 2, 3]
    assert sorted(set(columns["image_id"].tolist())) == [0, 1]
    assert len(columns["window"]) == 2 * 4 * 1 * 4  # images x windows x heads x queries

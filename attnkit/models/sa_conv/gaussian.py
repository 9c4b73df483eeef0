"""Quadratic (Gaussian) positional attention of Cordonnier et al. (2020), section 3.

Each head h attends around a learned centre ``Delta_h`` (an offset from the query pixel, in
token-grid units, ``(row, col)``) with a learned spread. The score of query q for key k at offset
``delta = pos(k) - pos(q)`` is

* anisotropic: ``-1/2 (delta - Delta_h)^T Sigma_h^-1 (delta - Delta_h)`` with
  ``Sigma_h^-1 = S_h S_h^T`` (positive semi-definite for any learned ``S_h``);
* isotropic: ``-alpha_h ||delta - Delta_h||^2`` with ``alpha_h = exp(log_alpha_h) > 0``, the
  paper's parametrisation (the anisotropic form with ``Sigma_h^-1 = 2 alpha_h I``).

Scores differ from the paper's ``v^T r_delta`` form only by a per-query constant, which no
normalizer sees. Optionally a content term ``q^T k / sqrt(d)`` is added. Values are the input
projected per head; the heads are concatenated and projected back. With ``K^2`` heads centred on
the ``K x K`` shifts and a large ``alpha`` (softmax) or any ``alpha >= 1`` (sparsemax: exactly
one-hot) the layer is a ``K x K`` convolution (the paper's Lemma 1; see
:func:`conv_equivalent_attention`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from attnkit.models.sa_conv.positional_attention import PositionalSelfAttention

__all__ = ["GaussianPositionalScores", "GaussianSelfAttention", "conv_equivalent_attention"]


def grid_offsets(h: int, w: int, device=None) -> torch.Tensor:
    """``delta[q, k] = pos(k) - pos(q)`` for the row-major ``h x w`` grid: ``[N, N, 2]``
    as ``(row, col)``."""
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    pos = torch.stack([rows.flatten(), cols.flatten()], dim=-1).float()  # [N, 2]
    return pos[None, :, :] - pos[:, None, :]  # [N, N, 2]


class GaussianPositionalScores(nn.Module):
    """The positional scores ``[H, N, N]`` of every head over an ``h x w`` grid.

    Initialisation as the paper: centres ``N(0, init_centre_std^2)`` per coordinate, spreads
    near the identity (``S = I + N(0, 0.01^2)``, ``log_alpha = N(0, 0.01^2)``).
    """

    def __init__(
        self,
        num_heads: int,
        kind: Literal["isotropic", "anisotropic"] = "isotropic",
        init_centre_std: float = 2.0,
    ) -> None:
        super().__init__()
        if kind not in ("isotropic", "anisotropic"):
            raise ValueError(f"kind must be 'isotropic' or 'anisotropic', got {kind!r}")
        self.kind = kind
        self.num_heads = num_heads
        self.centre = nn.Parameter(torch.randn(num_heads, 2) * init_centre_std)  # [H, 2]
        if kind == "isotropic":
            self.log_alpha = nn.Parameter(torch.randn(num_heads) * 0.01)  # [H]
        else:
            spread = torch.eye(2).repeat(num_heads, 1, 1) + 0.01 * torch.randn(num_heads, 2, 2)
            self.spread = nn.Parameter(spread)  # S_h: [H, 2, 2]

    def precision(self) -> torch.Tensor:
        """``Sigma_h^-1`` of every head: ``[H, 2, 2]``."""
        if self.kind == "isotropic":
            return 2 * self.log_alpha.exp()[:, None, None] * torch.eye(2, device=self.centre.device)
        return self.spread @ self.spread.transpose(-1, -2)

    def logged_values(self) -> dict[str, list]:
        """What the trainer logs at each logged step: every head's centre ``[row, col]`` and
        precision ``Sigma^-1`` (2x2), to follow the heads over training."""
        centre = self.centre.detach().float().cpu()
        precision = self.precision().detach().float().cpu()
        return {
            "centre": [[round(float(v), 5) for v in c] for c in centre],
            "precision": [[[round(float(v), 5) for v in r] for r in p] for p in precision],
        }

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        delta = grid_offsets(*grid, device=self.centre.device)  # [N, N, 2]
        diff = delta[None] - self.centre[:, None, None, :]  # [H, N, N, 2]
        if self.kind == "isotropic":
            alpha = self.log_alpha.exp()[:, None, None]  # [H, 1, 1]
            return -alpha * diff.pow(2).sum(-1)  # [H, N, N]
        projected = torch.einsum("hqkc,hcd->hqkd", diff, self.spread)  # S^T (delta - Delta)
        return -0.5 * projected.pow(2).sum(-1)  # [H, N, N]


class GaussianSelfAttention(PositionalSelfAttention):
    """Multi-head Gaussian positional self-attention over the tokens ``[B, N, C]`` of a grid.

    Args:
        dim: token width C (input and output).
        num_heads: heads H (the paper: 9).
        value_dim: per-head value width; None (default) lets every head read the input itself,
            as the paper's code (then ``proj`` maps ``H * C -> C``).
        kind: ``isotropic`` or ``anisotropic`` spread.
        content: add the content score ``q^T k / sqrt(content_dim)``.
        content_dim: per-head query/key width (the value width by default).
        normalizer: a normalizer name (``softmax``, ``sparsemax``, ...) or module.
        init_centre_std: std of the initial centres (the paper: 2).
        attn_drop: dropout on the attention weights while training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 9,
        value_dim: int | None = None,
        kind: Literal["isotropic", "anisotropic"] = "isotropic",
        content: bool = False,
        content_dim: int | None = None,
        normalizer: str | nn.Module = "softmax",
        init_centre_std: float = 2.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__(
            dim,
            num_heads,
            GaussianPositionalScores(num_heads, kind, init_centre_std),
            value_dim=value_dim,
            content=content,
            content_dim=content_dim,
            normalizer=normalizer,
            attn_drop=attn_drop,
        )


def conv_equivalent_attention(
    conv: nn.Conv2d, normalizer: str = "softmax", alpha: float = 50.0
) -> GaussianSelfAttention:
    """The Gaussian attention layer that computes ``conv`` (stride 1, ``K x K``, same padding)
    at every pixel whose ``K x K`` footprint lies inside the image (Lemma 1 of the paper).

    One head per kernel position ``(ky, kx)``, centred on the shift ``(ky - K//2, kx - K//2)``
    with ``alpha`` sharp enough that its attention is (softmax: numerically, sparsemax with
    ``alpha >= 1``: exactly) one-hot; identity values; the output projection holds the kernel.
    """
    c_out, c_in, kh, kw = conv.weight.shape
    if c_out != c_in or conv.stride != (1, 1) or conv.groups != 1:
        raise ValueError("Lemma 1 is built here for a square (C -> C), stride-1, ungrouped conv")
    heads = kh * kw
    layer = GaussianSelfAttention(c_in, heads, normalizer=normalizer)  # heads read the input
    shifts = [(ky - kh // 2, kx - kw // 2) for ky in range(kh) for kx in range(kw)]
    with torch.no_grad():
        layer.positional.centre.copy_(torch.tensor(shifts, dtype=torch.float32))
        layer.positional.log_alpha.fill_(float(torch.log(torch.tensor(alpha))))
        for head, (ky, kx) in enumerate((ky, kx) for ky in range(kh) for kx in range(kw)):
            layer.proj.weight[:, head * c_in : (head + 1) * c_in] = conv.weight[:, :, ky, kx]
        layer.proj.bias.copy_(conv.bias if conv.bias is not None else torch.zeros(c_out))
    return layer

"""Cordonnier et al.'s image transformer: space-to-depth tokens, post-norm layers, mean pooling.

The layout follows the paper's code (a BERT encoder on pixels):

* ``SpaceToDepth``: ``[B, C, H, W] -> [B, (H/f) (W/f), C f^2]`` tokens (f = 2: 16x16 tokens of 12
  channels for CIFAR), then ``embed``: a linear lift to ``hidden_dim`` (plus learned absolute
  position embeddings for the content-only, ViT-style baseline);
* ``depth`` post-norm layers: ``x = LN(x + dense(attention(x)))`` then
  ``x = LN(x + fc2(GELU(fc1(x))))``, with dropout after ``dense`` and ``fc2``;
* mean of the tokens (``pool: max``: their maximum), a linear classifier.

``share_layers`` (the hierarchical variants) ties the parameters of every layer to the first
layer's, so the model learns one block applied ``depth`` times; the input-independent positional
scores are then computed once per forward. The layers stay separate modules, so the attention
recorder and the figures still see ``depth`` sites (``layer 1`` ...).

Initialisation as BERT (the paper's code): Linear and Embedding weights ``N(0, 0.02)``, zero
biases; the Gaussian centres and spreads keep their own initialisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention import SelfAttention, make_normalizer
from attnkit.models.sa_conv.config import SAConvConfig
from attnkit.models.sa_conv.gaussian import GaussianSelfAttention
from attnkit.models.sa_conv.learned2d import Learned2DSelfAttention
from attnkit.models.sa_conv.sharing import share_blocks

__all__ = ["SAConvLayer", "SAConvTransformer", "SpaceToDepth", "build_attention"]


class SpaceToDepth(nn.Module):
    """``[B, C, H, W] -> [B, (H/f) * (W/f), C * f * f]`` row-major tokens (``pixel_unshuffle``)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(images, self.factor)  # [B, C f^2, H/f, W/f]
        return x.flatten(2).transpose(1, 2)  # [B, N, C f^2]


class _ContentAttention(SelfAttention):
    """attnkit's multi-head self-attention called like the positional ones (the ViT baseline)."""

    def forward(self, x, key_grid, need_weights=False, positional_scores=None):
        return super().forward(x, key_grid=key_grid, need_weights=need_weights)

    def positional_bias(self, grid):
        return None


def build_attention(model_cfg: SAConvConfig) -> nn.Module:
    """The attention module of one layer, with a fresh normalizer."""
    att = model_cfg.attention
    dim, heads = model_cfg.hidden_dim, att.num_heads
    normalizer = make_normalizer(
        att.normalizer, heads, alpha_init=att.alpha_init, tvmax_lambda=att.tvmax_lambda
    )
    common = dict(value_dim=att.value_dim, content_dim=att.content_dim, normalizer=normalizer)
    if att.kind == "gaussian":
        return GaussianSelfAttention(
            dim,
            heads,
            kind=att.spread,
            content=att.content,
            init_centre_std=att.init_centre_std,
            attn_drop=att.dropout,
            **common,
        )
    if att.kind == "learned2d":
        grid = tuple(model_cfg.max_grid or model_cfg.token_grid())
        return Learned2DSelfAttention(
            dim,
            heads,
            max_grid=grid,
            content=att.content,
            pos_dim=att.pos_dim,
            attn_drop=att.dropout,
            **common,
        )
    return _ContentAttention(
        dim, heads, normalizer, attn_drop=att.dropout, head_dim=att.content_dim
    )


class SAConvLayer(nn.Module):
    """One post-norm layer: attention, output dense, residual + LayerNorm; FFN, residual + LN."""

    def __init__(
        self,
        attention: nn.Module,
        dim: int,
        ffn_dim: int,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.dense = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        grid: tuple[int, int],
        positional_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        a, _ = self.attention(x, grid, positional_scores=positional_scores)  # [B, N, C]
        x = self.norm1(x + self.drop(self.dense(a)))  # [B, N, C]
        return self.norm2(x + self.drop(self.fc2(F.gelu(self.fc1(x)))))  # [B, N, C]


class SAConvTransformer(nn.Module):
    """``forward(images [B, C, H, W]) -> logits [B, num_classes]`` (see the module docstring)."""

    def __init__(self, cfg: SAConvConfig, make_attention: Callable[[], nn.Module] | None = None):
        super().__init__()
        make_attention = make_attention or (lambda: build_attention(cfg))
        self.img_size = tuple(cfg.img_size)
        self.grid = cfg.token_grid()
        self.share_layers = cfg.share_layers
        self.pool = cfg.pool
        self.to_tokens = SpaceToDepth(cfg.downsample)
        self.embed = nn.Linear(cfg.in_chans * cfg.downsample**2, cfg.hidden_dim)
        num_tokens = self.grid[0] * self.grid[1]
        self.pos_embed = (
            nn.Parameter(torch.zeros(1, num_tokens, cfg.hidden_dim))
            if cfg.position_embedding
            else None
        )
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            SAConvLayer(
                make_attention(), cfg.hidden_dim, cfg.ffn_dim, cfg.dropout, cfg.layer_norm_eps
            )
            for _ in range(cfg.depth)
        )
        self.head = nn.Linear(cfg.hidden_dim, cfg.num_classes)
        self.reset_parameters()
        if self.share_layers:
            share_blocks(self.layers)

    def reset_parameters(self) -> None:
        """BERT's initialisation (std 0.02) of every Linear, Embedding and the position
        embedding; LayerNorms at identity; positional Gaussians keep their own."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed, std=0.02)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the last layer: ``[B, N, hidden_dim]``."""
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"images must be [B, C, H, W] with H x W = {self.img_size[0]} x "
                f"{self.img_size[1]} (model.img_size), got {list(images.shape)}"
            )
        x = self.embed(self.to_tokens(images))  # [B, N, C]
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.embed_drop(x)
        shared = None
        if self.share_layers:  # one block: its input-independent scores once per forward
            shared = self.layers[0].attention.positional_bias(self.grid)
        for layer in self.layers:
            x = layer(x, self.grid, positional_scores=shared)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_features(images)  # [B, N, C]
        pooled = tokens.amax(dim=1) if self.pool == "max" else tokens.mean(dim=1)  # [B, C]
        return self.head(pooled)  # [B, num_classes]

"""A plain ViT classifier on attnkit's self-attention, module for module as timm's.

Module and parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm``, ``fc_norm``, ``head``), so a timm ``vit_*`` state dict loads without key mapping (see
:mod:`attnkit.models.vit.timm_weights`) and gives the same logits; the attention normalizer is the
only thing that changes. Tokens are laid out as attnkit's ViT convention: the class token (if
any) first, then the ``h x w`` patches in row-major order, ``key_grid=(h, w)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from attnkit.attention import SelfAttention, make_normalizer
from attnkit.models.vit.config import ViTConfig

__all__ = ["Block", "PatchEmbed", "VisionTransformer", "build_vit"]

LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> tokens: ``[B, C_in, H, W] -> [B, h * w, C]``."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, dim: int):
        super().__init__()
        H, W = img_size
        if H % patch_size or W % patch_size:
            raise ValueError(
                f"img_size {[H, W]} must be a multiple of patch_size {patch_size} on both sides"
            )
        self.img_size = (H, W)
        self.patch_size = patch_size
        self.grid_size = (H // patch_size, W // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"images must be [B, C, H, W] with H x W = {self.img_size[0]} x "
                f"{self.img_size[1]} (img_size), got {list(images.shape)}"
            )
        x = self.proj(images)  # [B, C, h, w]
        return x.flatten(2).transpose(1, 2)  # [B, h * w, C]


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        normalizer: str | nn.Module = "softmax",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = SelfAttention(
            dim, num_heads, normalizer, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop
        )
        self.ls1 = nn.Identity()  # timm's place for layer scale; none in the plain ViT
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop)
        self.ls2 = nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, key_grid: tuple[int, int], prefix_tokens: int
    ) -> torch.Tensor:
        a, _ = self.attn(self.norm1(x), key_grid=key_grid, prefix_tokens=prefix_tokens)
        x = x + self.drop_path1(self.ls1(a))  # [B, N, C]
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))  # [B, N, C]


class VisionTransformer(nn.Module):
    """ViT image classifier: ``forward(images [B, C, H, W]) -> logits [B, num_classes]``.

    Learned absolute position embeddings ``pos_embed [1, prefix + h * w, C]`` are added after the
    class token is prepended (timm's default, ``no_embed_class=False``). ``global_pool="token"``
    classifies the normalised class token; ``"avg"`` averages the patch tokens (the class token,
    if any, is left out) and normalises after pooling (``fc_norm``; ``norm`` is then an
    identity), as timm. Every block's attention gets ``key_grid=(h, w)`` and
    ``prefix_tokens`` (1 with a class token, else 0), so recorded maps can be put on the image.

    Args:
        img_size: ``(H, W)`` of the inputs, multiples of ``patch_size``.
        normalizer: a normalizer name, or a factory ``layer index -> nn.Module`` giving each
            block its own normalizer module (see :func:`build_vit`).
        drop_rate: dropout after the position embedding, the attention and MLP projections and
            before the head.
        drop_path_rate: stochastic depth of the last block, linearly from 0 at the first.
        Other arguments as :class:`~attnkit.models.vit.config.ViTConfig`.
    """

    def __init__(
        self,
        img_size: tuple[int, int] = (32, 32),
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        class_token: bool = True,
        global_pool: str = "token",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        normalizer: str | Callable[[int], nn.Module] = "softmax",
    ) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool 'token' needs class_token=True; use 'avg' without one")
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})"
            )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.global_pool = global_pool
        self.num_prefix_tokens = 1 if class_token else 0

        self.patch_embed = PatchEmbed(tuple(img_size), patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, depth).tolist() if depth else []
        if isinstance(normalizer, str):
            name = normalizer

            def make(_layer: int) -> str:
                return name
        elif callable(normalizer) and not isinstance(normalizer, nn.Module):
            make = normalizer
        else:
            raise TypeError(
                "normalizer must be a name or a factory 'layer index -> module' (blocks must "
                f"not share one normalizer module), got {type(normalizer).__name__}"
            )
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                make(i),
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=rates[i],
            )
            for i in range(depth)
        )
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if use_fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(h, w)``: the patch grid."""
        return self.patch_embed.grid_size

    def reset_parameters(self) -> None:
        """timm's default ViT init: truncated normal (std 0.02) for the position embedding and
        every Linear (zero biases), normal (std 1e-6) for the class token. Normalizer parameters
        keep their own initialisation."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block and ``norm``: ``[B, prefix + h * w, C]``."""
        x = self.patch_embed(images)  # [B, h * w, C]
        if self.cls_token is not None:
            cls = self.cls_token.expand(x.shape[0], -1, -1)  # [B, 1, C]
            x = torch.cat([cls, x], dim=1)  # [B, 1 + h * w, C]
        x = self.pos_drop(x + self.pos_embed)
        for block in self.blocks:
            x = block(x, key_grid=self.grid_size, prefix_tokens=self.num_prefix_tokens)
        return self.norm(x)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the tokens ``[B, N, C]`` and classify: ``[B, num_classes]`` (``[B, C]`` with
        ``pre_logits``)."""
        if self.global_pool == "token":
            x = tokens[:, 0]  # [B, C]
        else:
            x = tokens[:, self.num_prefix_tokens :].mean(dim=1)  # [B, C]
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of ``images [B, C, H, W]`` (``model(**batch.inputs)``)."""
        return self.forward_head(self.forward_features(images))


def build_vit(model_cfg: ViTConfig) -> VisionTransformer:
    """The :class:`VisionTransformer` of a :class:`ViTConfig`, one fresh normalizer per block."""
    att = model_cfg.attention
    if len(model_cfg.img_size) != 2:
        raise ValueError(f"model.img_size must be [H, W], got {model_cfg.img_size}")

    def normalizer(_layer: int) -> nn.Module:
        return make_normalizer(
            att.normalizer,
            model_cfg.num_heads,
            alpha_init=att.alpha_init,
            tvmax_lambda=att.tvmax_lambda,
        )

    return VisionTransformer(
        img_size=tuple(model_cfg.img_size),
        patch_size=model_cfg.patch_size,
        in_chans=model_cfg.in_chans,
        num_classes=model_cfg.num_classes,
        embed_dim=model_cfg.embed_dim,
        depth=model_cfg.depth,
        num_heads=model_cfg.num_heads,
        mlp_ratio=model_cfg.mlp_ratio,
        qkv_bias=model_cfg.qkv_bias,
        class_token=model_cfg.class_token,
        global_pool=model_cfg.global_pool,
        drop_rate=model_cfg.drop_rate,
        attn_drop_rate=model_cfg.attn_drop_rate,
        drop_path_rate=model_cfg.drop_path_rate,
        normalizer=normalizer,
    )

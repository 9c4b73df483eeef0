"""DETR (Carion et al. 2020): backbone, transformer and the class / box heads.

``DETR.forward(images, mask)`` returns the predictions of the last decoder layer and, with
``aux_loss``, those of every earlier decoder layer for the auxiliary losses. Boxes are
normalised ``(cx, cy, w, h)`` relative to each image's unpadded size, as the targets of
``attnkit.data.coco``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.models.detr.backbone import Backbone
from attnkit.models.detr.position_encoding import PositionEmbeddingSine
from attnkit.models.detr.transformer import Transformer

__all__ = ["DETR", "MLP", "build_detr"]


class MLP(nn.Module):
    """A ReLU perceptron with ``num_layers`` linear layers ``layers.0`` .. ``layers.{n-1}``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x  # [..., output_dim]


class DETR(nn.Module):
    """The DEtection TRansformer with a pluggable attention normalizer per location.

    Args:
        backbone: a :class:`Backbone` (features ``[B, C_b, h, w]`` and the padding mask).
        transformer: a :class:`Transformer` of width ``hidden_dim``.
        num_classes: number of class ids (max id + 1); the head has one more output, the
            "no object" class, at index ``num_classes``.
        num_queries: object queries Q, the most objects DETR can detect in one image.
        aux_loss: return the predictions of every decoder layer (``aux_outputs``).
    """

    def __init__(
        self,
        backbone: Backbone,
        transformer: Transformer,
        num_classes: int,
        num_queries: int = 100,
        aux_loss: bool = True,
    ) -> None:
        super().__init__()
        hidden_dim = transformer.d_model
        self.backbone = backbone
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.input_proj = nn.Conv2d(backbone.num_channels, hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.transformer = transformer
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss

    def forward(
        self, images: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | list[dict[str, torch.Tensor]]]:
        """Detect objects in padded ``images [B, 3, H, W]``; ``mask [B, H, W]`` True on padding.

        Returns ``{"pred_logits": [B, Q, num_classes + 1], "pred_boxes": [B, Q, 4]}`` (boxes
        normalised cxcywh) and, with ``aux_loss``, ``"aux_outputs"``: one such dict per decoder
        layer before the last.
        """
        if mask is None:
            mask = images.new_zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool)
        features, small_mask = self.backbone(images, mask)  # [B, C_b, h, w], [B, h, w]
        pos = self.position_encoding(small_mask).to(features.dtype)  # [B, C, h, w]
        src = self.input_proj(features)  # [B, C, h, w]
        hs, _ = self.transformer(src, small_mask, self.query_embed.weight, pos)  # [L, B, Q, C]
        logits = self.class_embed(hs)  # [L, B, Q, num_classes + 1]
        boxes = self.bbox_embed(hs).sigmoid()  # [L, B, Q, 4]
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        return out


def build_detr(model_cfg, train_backbone: bool = True) -> DETR:
    """A :class:`DETR` from a ``DETRConfig`` (``cfg.model``).

    ``train_backbone``: official DETR trains the backbone when ``lr_backbone > 0``.
    """
    att = model_cfg.attention
    backbone = Backbone(
        model_cfg.backbone,
        dilation=model_cfg.dilation,
        stage=model_cfg.backbone_stage,
        train_backbone=train_backbone,
        pretrained=model_cfg.pretrained_backbone,
        mask_padding=model_cfg.backbone_mask_padding,
        from_scratch=model_cfg.backbone_from_scratch,
    )
    transformer = Transformer(
        d_model=model_cfg.hidden_dim,
        nhead=model_cfg.num_heads,
        num_encoder_layers=model_cfg.enc_layers,
        num_decoder_layers=model_cfg.dec_layers,
        dim_feedforward=model_cfg.dim_feedforward,
        dropout=model_cfg.dropout,
        pre_norm=model_cfg.pre_norm,
        return_intermediate=True,
        encoder=att.encoder,
        decoder_self=att.decoder_self,
        cross=att.cross,
        alpha_init=att.alpha_init,
        tvmax_lambda=att.tvmax_lambda,
    )
    return DETR(
        backbone,
        transformer,
        num_classes=model_cfg.num_classes,
        num_queries=model_cfg.num_queries,
        aux_loss=model_cfg.aux_loss,
    )

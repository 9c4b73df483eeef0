"""An independent minimal re-implementation of official DETR's model structure, for tests.

It mirrors facebookresearch/detr as released: sequence-first tensors ``[N, B, C]``,
``torch.nn.MultiheadAttention``, a ``Joiner`` (``nn.Sequential`` of backbone and position
encoding) so that the backbone's keys are ``backbone.0.body.*``, torchvision's
``IntermediateLayerGetter`` over a ResNet with ``FrozenBatchNorm2d`` and the transformer and
heads under the official names. Its ``state_dict()`` therefore has exactly the official keys,
which is what ``attnkit.models.detr.official`` must load without downloading a checkpoint.
Nothing here imports attnkit.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d


class RefBackbone(nn.Module):
    """Official ``BackboneBase``: the ``layer4`` output of a frozen-BN ResNet, plus its mask."""

    def __init__(self, name: str) -> None:
        super().__init__()
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d)
        self.body = IntermediateLayerGetter(resnet, return_layers={"layer4": "0"})
        self.num_channels = 512 if name in ("resnet18", "resnet34") else 2048

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        x = self.body(images)["0"]
        m = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        return x, m


class RefSine(nn.Module):
    """Official ``PositionEmbeddingSine`` (normalised)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        not_mask = ~mask
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        eps, scale = 1e-6, 2 * math.pi
        y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
        x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32)
        dim_t = 10000 ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class Joiner(nn.Sequential):
    """Official ``Joiner``: index 0 the backbone, index 1 the position encoding."""

    def forward(self, images: torch.Tensor, mask: torch.Tensor):
        x, m = self[0](images, mask)
        return x, m, self[1](m).to(x.dtype)


def _pos(x, pos):
    return x if pos is None else x + pos


class RefEncoderLayer(nn.Module):
    def __init__(self, d, h, ffn, pre_norm):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, h, dropout=0.0)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.pre_norm = pre_norm

    def forward(self, src, mask, pos):
        if self.pre_norm:
            s = self.norm1(src)
            q = k = _pos(s, pos)
            src = src + self.self_attn(q, k, value=s, key_padding_mask=mask)[0]
            s = self.norm2(src)
            return src + self.linear2(F.relu(self.linear1(s)))
        q = k = _pos(src, pos)
        src = self.norm1(src + self.self_attn(q, k, value=src, key_padding_mask=mask)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class RefDecoderLayer(nn.Module):
    def __init__(self, d, h, ffn, pre_norm):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, h, dropout=0.0)
        self.multihead_attn = nn.MultiheadAttention(d, h, dropout=0.0)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.pre_norm = pre_norm

    def forward(self, tgt, memory, mask, pos, query_pos):
        if self.pre_norm:
            t = self.norm1(tgt)
            q = k = _pos(t, query_pos)
            tgt = tgt + self.self_attn(q, k, value=t)[0]
            t = self.norm2(tgt)
            tgt = (
                tgt
                + self.multihead_attn(
                    _pos(t, query_pos), _pos(memory, pos), value=memory, key_padding_mask=mask
                )[0]
            )
            t = self.norm3(tgt)
            return tgt + self.linear2(F.relu(self.linear1(t)))
        q = k = _pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.self_attn(q, k, value=tgt)[0])
        t2 = self.multihead_attn(
            _pos(tgt, query_pos), _pos(memory, pos), value=memory, key_padding_mask=mask
        )[0]
        tgt = self.norm2(tgt + t2)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class RefEncoder(nn.Module):
    def __init__(self, layers, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, src, mask, pos):
        for layer in self.layers:
            src = layer(src, mask, pos)
        return src if self.norm is None else self.norm(src)


class RefDecoder(nn.Module):
    def __init__(self, layers, norm):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(self, tgt, memory, mask, pos, query_pos):
        intermediate = []
        for layer in self.layers:
            tgt = layer(tgt, memory, mask, pos, query_pos)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


class RefTransformer(nn.Module):
    def __init__(self, d, h, enc, dec, ffn, pre_norm):
        super().__init__()
        self.encoder = RefEncoder(
            [RefEncoderLayer(d, h, ffn, pre_norm) for _ in range(enc)],
            nn.LayerNorm(d) if pre_norm else None,
        )
        self.decoder = RefDecoder(
            [RefDecoderLayer(d, h, ffn, pre_norm) for _ in range(dec)], nn.LayerNorm(d)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos_embed):
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)  # [hw, B, C]
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)  # [Q, B, C]
        mask = mask.flatten(1)
        memory = self.encoder(src, mask, pos_embed)
        hs = self.decoder(torch.zeros_like(query_embed), memory, mask, pos_embed, query_embed)
        return hs.transpose(1, 2)  # [L, B, Q, C]


class RefMLP(nn.Module):
    def __init__(self, i, h, o, n):
        super().__init__()
        dims = [h] * (n - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip([i, *dims], [*dims, o]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class RefDETR(nn.Module):
    """Official ``DETR`` (aux loss on): same keys, same forward, sequence-first inside."""

    def __init__(
        self,
        backbone: str = "resnet18",
        hidden_dim: int = 32,
        nheads: int = 4,
        enc_layers: int = 1,
        dec_layers: int = 2,
        dim_feedforward: int = 64,
        num_queries: int = 5,
        num_classes: int = 6,
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        body = RefBackbone(backbone)
        self.backbone = Joiner(body, RefSine(hidden_dim // 2))
        self.transformer = RefTransformer(
            hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward, pre_norm
        )
        self.input_proj = nn.Conv2d(body.num_channels, hidden_dim, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = RefMLP(hidden_dim, hidden_dim, 4, 3)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> dict:
        x, m, pos = self.backbone(images, mask)
        hs = self.transformer(self.input_proj(x), m, self.query_embed.weight, pos)
        logits, boxes = self.class_embed(hs), self.bbox_embed(hs).sigmoid()
        return {
            "pred_logits": logits[-1],
            "pred_boxes": boxes[-1],
            "aux_outputs": [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ],
        }


def make_reference(seed: int = 0, **kw) -> RefDETR:
    """A reference DETR in eval mode with random weights and non-trivial frozen BN statistics."""
    torch.manual_seed(seed)
    model = RefDETR(**kw).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model

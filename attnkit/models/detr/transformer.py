"""DETR's encoder-decoder transformer on attnkit attention, with a normalizer per location.

The layers compute exactly what official DETR's do (post-norm by default, ``pre_norm`` option;
position embeddings added to queries and keys, never to values; learned query positions in the
decoder; a final decoder LayerNorm also applied to the intermediate outputs used by the auxiliary
losses), and the module names are official DETR's (``encoder.layers.0.self_attn``,
``decoder.layers.0.multihead_attn``, ``decoder.norm``, ...), so official checkpoints map onto it
key for key. Unlike official DETR, tensors are batch-first ``[B, N, C]`` throughout.

The three attention locations take their normalizer separately: encoder self-attention,
decoder self-attention and decoder cross-attention. Keys of the encoder self-attention and of
the cross-attention are the flattened feature map (row-major), so those modules receive
``key_grid=(h, w)`` (TVMax needs it; the attention recorder reports it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.attention import MultiheadAttention, make_normalizer

__all__ = [
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
]


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    """Self-attention over the feature map, then a ReLU feed-forward block, each with residual.

    ``normalizer`` is a module (owned by this layer's attention) or a name.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalizer: str | nn.Module = "softmax",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, normalizer=normalizer, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))  # [B, N, C]

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        key_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``src [B, N, C]``, ``pos [B, N, C]``, ``key_padding_mask [B, N]`` -> ``[B, N, C]``."""
        if self.pre_norm:
            x = self.norm1(src)
            q = k = _with_pos(x, pos)
            attn = self.self_attn(q, k, x, key_padding_mask=key_padding_mask, key_grid=key_grid)[0]
            src = src + self.dropout1(attn)
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        attn = self.self_attn(q, k, src, key_padding_mask=key_padding_mask, key_grid=key_grid)[0]
        src = self.norm1(src + self.dropout1(attn))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the encoder memory, feed-forward."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        self_normalizer: str | nn.Module = "softmax",
        cross_normalizer: str | nn.Module = "softmax",
        pre_norm: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(
            d_model, nhead, normalizer=self_normalizer, dropout=dropout
        )
        self.multihead_attn = MultiheadAttention(
            d_model, nhead, normalizer=cross_normalizer, dropout=dropout
        )
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))  # [B, Q, C]

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        key_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``tgt [B, Q, C]``, ``memory [B, N, C]``, ``pos [B, N, C]``, ``query_pos [B, Q, C]``.

        ``memory_key_padding_mask [B, N]`` marks padded memory cells; returns ``[B, Q, C]``.
        """
        if self.pre_norm:
            x = self.norm1(tgt)
            q = k = _with_pos(x, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, x)[0])
            x = self.norm2(tgt)
            attn = self.multihead_attn(
                _with_pos(x, query_pos),
                _with_pos(memory, pos),
                memory,
                key_padding_mask=memory_key_padding_mask,
                key_grid=key_grid,
            )[0]
            tgt = tgt + self.dropout2(attn)
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt)[0]))
        attn = self.multihead_attn(
            _with_pos(tgt, query_pos),
            _with_pos(memory, pos),
            memory,
            key_padding_mask=memory_key_padding_mask,
            key_grid=key_grid,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers, with a final LayerNorm ``norm`` only in the pre-norm variant."""

    def __init__(self, layers: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        key_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``src [B, N, C]`` -> memory ``[B, N, C]``."""
        for layer in self.layers:
            src = layer(src, pos=pos, key_padding_mask=key_padding_mask, key_grid=key_grid)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """A stack of decoder layers with a final LayerNorm ``norm``.

    With ``return_intermediate`` the output of every layer (after ``norm``) is returned, for the
    auxiliary losses: ``[L, B, Q, C]``; otherwise only the last, as ``[1, B, Q, C]``.
    """

    def __init__(
        self, layers: list[nn.Module], norm: nn.Module, return_intermediate: bool = True
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.return_intermediate = return_intermediate

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor | None = None,
        query_pos: torch.Tensor | None = None,
        memory_key_padding_mask: torch.Tensor | None = None,
        key_grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """``tgt [B, Q, C]``, ``memory [B, N, C]`` -> ``[L or 1, B, Q, C]``."""
        outputs = []
        for layer in self.layers:
            tgt = layer(
                tgt,
                memory,
                pos=pos,
                query_pos=query_pos,
                memory_key_padding_mask=memory_key_padding_mask,
                key_grid=key_grid,
            )
            if self.return_intermediate:
                outputs.append(self.norm(tgt))
        if not self.return_intermediate:
            outputs.append(self.norm(tgt))
        return torch.stack(outputs)  # [L or 1, B, Q, C]


class Transformer(nn.Module):
    """DETR's transformer: encoder over the feature map, decoder over learned object queries.

    Args:
        d_model: hidden size C.
        nhead: attention heads.
        num_encoder_layers, num_decoder_layers: depth of each stack.
        dim_feedforward: width of the feed-forward blocks.
        dropout: dropout of the residual branches, feed-forward blocks and attention weights.
        pre_norm: LayerNorm before each block (and a final encoder norm) instead of after.
        return_intermediate: return every decoder layer's output (for auxiliary losses).
        encoder, decoder_self, cross: normalizer names of the encoder self-attention, decoder
            self-attention and decoder cross-attention.
        alpha_init: initial alpha of ``alpha_entmax`` normalizers (learned per head and layer).
        tvmax_lambda: strength of the total-variation term of ``tvmax`` normalizers.
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        pre_norm: bool = False,
        return_intermediate: bool = True,
        encoder: str = "softmax",
        decoder_self: str = "softmax",
        cross: str = "softmax",
        alpha_init: float = 1.5,
        tvmax_lambda: float = 0.05,
    ) -> None:
        super().__init__()

        def norm(name: str) -> nn.Module:
            return make_normalizer(name, nhead, alpha_init=alpha_init, tvmax_lambda=tvmax_lambda)

        enc = [
            TransformerEncoderLayer(
                d_model, nhead, dim_feedforward, dropout, norm(encoder), pre_norm
            )
            for _ in range(num_encoder_layers)
        ]
        dec = [
            TransformerDecoderLayer(
                d_model, nhead, dim_feedforward, dropout, norm(decoder_self), norm(cross), pre_norm
            )
            for _ in range(num_decoder_layers)
        ]
        self.encoder = TransformerEncoder(enc, nn.LayerNorm(d_model) if pre_norm else None)
        self.decoder = TransformerDecoder(dec, nn.LayerNorm(d_model), return_intermediate)
        self.d_model = d_model
        self.nhead = nhead
        self.pre_norm = pre_norm
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Xavier-uniform for every matrix, as official DETR (normalizer vectors keep theirs)."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor,
        query_embed: torch.Tensor,
        pos_embed: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the projected feature map and decode the object queries.

        Args:
            src: projected features ``[B, C, h, w]``.
            mask: ``[B, h, w]``, True on padding.
            query_embed: learned query positions ``[Q, C]``.
            pos_embed: position encoding ``[B, C, h, w]``.

        Returns:
            ``(hs [L or 1, B, Q, C], memory [B, C, h, w])``.
        """
        B, C, h, w = src.shape
        src = src.flatten(2).transpose(1, 2)  # [B, h*w, C]
        pos = pos_embed.flatten(2).transpose(1, 2)  # [B, h*w, C]
        key_padding_mask = mask.flatten(1)  # [B, h*w]
        query_pos = query_embed.unsqueeze(0).expand(B, -1, -1)  # [B, Q, C]
        tgt = torch.zeros_like(query_pos)  # [B, Q, C]
        memory = self.encoder(src, pos=pos, key_padding_mask=key_padding_mask, key_grid=(h, w))
        hs = self.decoder(
            tgt,
            memory,
            pos=pos,
            query_pos=query_pos,
            memory_key_padding_mask=key_padding_mask,
            key_grid=(h, w),
        )  # [L, B, Q, C]
        return hs, memory.transpose(1, 2).reshape(B, C, h, w)

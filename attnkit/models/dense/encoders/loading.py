"""Loading another codebase's weights into an encoder: shapes checked, every difference named."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["load_checked"]


def load_checked(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` (already in the encoder's names and layouts) into ``encoder``.

    A tensor whose shape differs from the encoder's, or a key with no place in it, is a
    ``ValueError`` naming the key and ``source`` (``"timm Swin"``). Returns the encoder keys that
    kept their initial values.
    """
    own = encoder.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(
                f"{source} weights do not fit this encoder at {key}: {tuple(value.shape)} in the "
                f"weights, {tuple(own[key].shape)} in the encoder (another variant or window?)"
            )
    result = encoder.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"{source} keys with no place in the encoder: {result.unexpected_keys[:5]}"
        )
    return list(result.missing_keys)

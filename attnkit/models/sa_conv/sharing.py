"""Weight sharing across layers: the hierarchical variants of the sa_conv family.

Layers stay separate modules (so the attention recorder and the figures still see one site per
layer) whose parameters are the very same ``nn.Parameter`` objects: ``model.parameters()``,
the optimiser and the parameter count see each shared weight once, and a gradient step moves
every layer. Buffers (batch-norm running statistics) are not shared.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["share_blocks", "tie_parameters"]


def tie_parameters(source: nn.Module, target: nn.Module) -> None:
    """Make every parameter of ``target`` the very same ``nn.Parameter`` as ``source``'s
    (modules of identical structure)."""
    for name, param in source.named_parameters():
        owner_name, _, leaf = name.rpartition(".")
        owner = target.get_submodule(owner_name) if owner_name else target
        setattr(owner, leaf, param)


def share_blocks(blocks: Sequence[nn.Module]) -> None:
    """Tie every block of ``blocks`` to the first one."""
    for block in blocks[1:]:
        tie_parameters(blocks[0], block)

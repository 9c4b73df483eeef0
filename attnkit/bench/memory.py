"""Peak memory of a forward + backward pass: CUDA's allocator on a GPU, a dispatch-level tracker
of tensor storages on the CPU (where torch keeps no allocator statistics)."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["PeakBytes", "step_peak_mib"]


class PeakBytes(TorchDispatchMode):
    """Peak bytes of the CPU tensor storages created by dispatched ops while active.

    Storages are followed to their release (weakref on the storage object, which torch keeps
    alive exactly as long as the storage), so tensors kept for the backward pass count until
    they are freed. Scratch memory inside a kernel is not seen: this is a proxy.
    """

    def __init__(self, preexisting: list[torch.Tensor]) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._known = {id(t.untyped_storage()) for t in preexisting}

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._known.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._known:
                continue
            self._known.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, storage.nbytes())
        return out


def step_peak_mib(step, tracked: list[torch.Tensor], device: torch.device) -> float:
    """Peak MiB of one call of ``step()`` beyond what is already allocated: CUDA's allocator on
    a GPU; on the CPU the storages created while it runs, ``tracked`` (inputs, weights) left
    out."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    with PeakBytes(tracked) as tracker:
        step()
    return tracker.peak / 2**20

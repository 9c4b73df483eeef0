"""One optimiser step: forward, loss, backward over micro-batches, clip, update.

Kept apart from the loop so the DDP equality test (and benchmarks) run exactly the code that
training runs.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from attnkit.train.optim import ALPHA_SUFFIX

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


def _all_finite(outputs) -> bool:
    """Whether every floating tensor in ``outputs`` (nested dicts / lists) is finite."""
    if isinstance(outputs, torch.Tensor):
        return not outputs.is_floating_point() or bool(torch.isfinite(outputs).all())
    if isinstance(outputs, dict):
        return all(_all_finite(v) for v in outputs.values())
    if isinstance(outputs, (list, tuple)):
        return all(_all_finite(v) for v in outputs)
    return True


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(grads))


def grad_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gradient norms of ``pre_alpha`` against all other parameters (pitfall 8: is alpha moving?)."""
    alpha, other = [], []
    for name, param in model.named_parameters():
        (alpha if name.endswith(ALPHA_SUFFIX) else other).append(param)
    norms = {"grad_norm/other": _grad_norm(other)}
    if alpha:
        norms["grad_norm/pre_alpha"] = _grad_norm(alpha)
    return norms


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list,
    device: torch.device,
    step: int,
    clip_max_norm: float = 0.0,
    amp: str = "none",
    scaler: torch.amp.GradScaler | None = None,
    want_grad_norms: bool = False,
) -> dict[str, torch.Tensor]:
    """Accumulate gradients over ``batches`` (micro-batches), then take one optimiser step.

    Returns the detached losses of the last micro-batch averaged over all of them (device
    tensors: reading them is the caller's choice of host sync). Raises
    :class:`NonFiniteLossError` before touching the weights when a loss is NaN or inf.
    """
    model.train()
    criterion.train()
    amp_dtype = AMP_DTYPES[amp]
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, torch.Tensor] = {}
    ddp = isinstance(model, nn.parallel.DistributedDataParallel)
    for i, batch in enumerate(batches):
        batch = batch.to(device, non_blocking=True)
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                outputs = model(**batch.inputs)
                try:
                    losses = criterion(outputs, batch.targets)
                except ValueError as err:  # e.g. the Hungarian matcher on a NaN cost matrix
                    if not _all_finite(outputs):
                        raise NonFiniteLossError(
                            f"non-finite model outputs at step {step} (the loss cannot be "
                            f"computed: {' '.join(str(err).split())})"
                        ) from err
                    raise
            loss = losses["loss"].float() / len(batches)
            if not torch.isfinite(loss):  # one host sync per micro-batch: worth it
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at step {step}; "
                    f"components: { {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0} }"
                )
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
        for key, value in losses.items():
            value = value.detach().float() / len(batches)
            totals[key] = totals[key] + value if key in totals else value
    if scaler is not None:
        scaler.unscale_(optimizer)
    if want_grad_norms:
        totals.update(grad_norms(model))
    if clip_max_norm > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        total_norm = nn.utils.clip_grad_norm_(params, clip_max_norm)
        totals["grad_norm/total"] = total_norm.detach()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return totals


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - the legacy global generator, on purpose
    torch.manual_seed(seed)

"""DistributedDataParallel set-up under ``torchrun`` (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from attnkit.errors import ConfigError, EnvError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group ``torchrun`` describes in the environment; False when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: this rank's GPU when there is one, else the CPU.

    A device name torch does not know is a :class:`ConfigError`; a CUDA device on a machine
    without one (or with fewer GPUs) is an :class:`EnvError`, before any work starts.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(
            f"train.device={name!r} is not a device: use auto, cpu, cuda, cuda:N or mps"
        ) from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise EnvError(
                f"train.device={name} but torch sees no CUDA GPU here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}): use "
                "train.device=auto or cpu"
            )
        if device.index is not None and device.index >= count:
            raise EnvError(f"train.device={name} but this machine has {count} CUDA GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EnvError(f"train.device={name} but MPS is not available here: use auto or cpu")
    return device

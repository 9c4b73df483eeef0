"""DistributedDataParallel: one step on 2 CPU processes (gloo) equals one single-process step."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnkit.data.coco import Batch
from attnkit.models import build_model
from attnkit.tasks import build_criterion
from attnkit.train.step import seed_everything, train_step

from train_helpers import tiny_config


def global_batch() -> Batch:
    """4 same-size images, 2 boxes each (so every rank's loss normaliser is the same)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=g)
    mask = torch.zeros(4, 64, 64, dtype=torch.bool)
    targets = []
    for i in range(4):
        centres = torch.rand(2, 2, generator=g) * 0.5 + 0.25
        sizes = torch.rand(2, 2, generator=g) * 0.2 + 0.1
        targets.append(
            {
                "boxes": torch.cat([centres, sizes], 1),
                "labels": torch.tensor([1, 2 + i % 3]),
                "image_id": i,
                "orig_size": torch.tensor([64, 64]),
                "size": torch.tensor([64, 64]),
            }
        )
    return Batch(images, mask, targets)


def one_step(model, batch):
    cfg = tiny_config(**{"model.dropout": 0.0})
    criterion = build_criterion(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1)
    train_step(model, criterion, optimizer, [batch], torch.device("cpu"), 1, clip_max_norm=0.0)


def fresh_model():
    seed_everything(0)
    return build_model(tiny_config(**{"model.dropout": 0.0}))


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.parallel.DistributedDataParallel(fresh_model())
    batch = global_batch()
    half = Batch(
        batch.images[2 * rank : 2 * rank + 2],
        batch.mask[2 * rank : 2 * rank + 2],
        batch.targets[2 * rank : 2 * rank + 2],
    )
    one_step(model, half)
    if rank == 0:
        torch.save(model.module.state_dict(), out)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_step_equals_single_process_step(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    ddp_weights = torch.load(out, weights_only=True)
    single = fresh_model()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    one_step(single, global_batch())
    moved = 0
    for key, value in single.state_dict().items():
        torch.testing.assert_close(ddp_weights[key], value, atol=2e-6, rtol=1e-5, msg=key)
        moved += int(not torch.equal(before[key], value))
    assert moved > 10  # the step changed the weights; equality is not trivial

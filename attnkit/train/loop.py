"""The training loop: config in, checkpoints + ``metrics.jsonl`` + TensorBoard out.

``train(cfg, out_dir, resume=False)`` runs on one device or, under ``torchrun``, with
DistributedDataParallel. It saves ``last.pt`` atomically every ``train.checkpoint_every_steps``
steps, at every epoch end and when it stops, so ``resume=True`` continues from the last complete
checkpoint and, on CPU, ends with the same weights bit for bit as an uninterrupted run.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from attnkit.attention import alpha_values
from attnkit.config import config_diff, config_from_dict, config_to_dict, save_config
from attnkit.errors import CheckpointError, OutputError, TrainingError
from attnkit.models import build_model
from attnkit.models.loading import init_from_checkpoint
from attnkit.outputs import TRAIN_FILES, existing, make_folder, remove_outputs
from attnkit.runfiles import CHECKPOINT_NAME
from attnkit.tasks import task_of
from attnkit.tasks.evaluate import run_evaluation
from attnkit.train import distributed as dist_utils
from attnkit.train.checkpoint import (
    load_checkpoint,
    remove_partial_files,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from attnkit.train.logged_values import logged_values
from attnkit.train.logger import MetricsLogger
from attnkit.train.optim import build_optimizer, build_scheduler
from attnkit.train.sampling import make_loader
from attnkit.train.step import AMP_DTYPES, NonFiniteLossError, seed_everything, train_step

# Keys a resumed run may change: how long to train and how often to save / evaluate / log.
RESUMABLE_CHANGES = {
    "train.epochs",
    "train.max_steps",
    "train.checkpoint_every_steps",
    "train.eval_every_epochs",
    "train.log_every_steps",
    "data.num_workers",
    "train.device",
}


RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "step", "epoch_step", "config")
"""What a checkpoint needs for ``--resume`` to continue exactly."""


@dataclass
class Progress:
    epoch: int = 0
    step: int = 0  # optimiser steps taken in the whole run
    epoch_step: int = 0  # optimiser steps taken in the current epoch
    seconds: float = 0.0  # wall time spent training, over all resumes


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_resume_config(cfg, saved: dict, path: Path) -> None:
    changed = [key for key, _, _ in config_diff(config_from_dict(saved), cfg)]
    forbidden = [k for k in changed if k not in RESUMABLE_CHANGES]
    if forbidden:
        raise TrainingError(
            f"cannot resume {path}: the config differs in {', '.join(forbidden)} "
            f"(a resumed run may only change {', '.join(sorted(RESUMABLE_CHANGES))})"
        )


class Trainer:
    """Holds the model, data and optimiser of one run; :meth:`fit` trains it."""

    def __init__(
        self,
        cfg,
        out_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        overwrite: bool = False,
    ):
        self.cfg, self.out_dir, self.progress = cfg, Path(out_dir), progress
        self.device = dist_utils.pick_device(cfg.train.device)
        self.distributed = dist_utils.init_from_env(self.device)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.main = self.rank == 0
        self.ckpt_path = self.out_dir / CHECKPOINT_NAME
        self._claim_output(resume, overwrite)
        seed_everything(cfg.seed)  # same initial weights on every rank
        self.task = task_of(cfg)
        self.model = build_model(cfg).to(self.device)
        self.criterion = self.task.build_criterion(cfg).to(self.device)
        self.train_set = self.task.build_dataset(cfg, "train")
        self.val_set = self.task.build_dataset(cfg, "val")
        self.task.check(cfg, self.train_set)
        self.task.check(cfg, self.val_set)
        collate, data = self.task.collate, cfg.data
        self.train_loader = make_loader(
            self.train_set,
            data.batch_size,
            cfg.seed,
            True,
            collate,
            data.num_workers,
            self.rank,
            self.world,
        )
        self.val_loader = make_loader(
            self.val_set, data.batch_size, cfg.seed, False, collate, data.num_workers
        )
        accum = cfg.train.grad_accum_steps
        self.steps_per_epoch = len(self.train_loader.sampler) // (data.batch_size * accum)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.amp == "fp16" else None
        self.state = Progress()
        if resume:
            self._restore()
        else:
            if cfg.train.init_from:
                kept = init_from_checkpoint(self.model, cfg.train.init_from, cfg)
                if kept and self.main:
                    print(f"init_from {cfg.train.init_from}: kept the initial {', '.join(kept)}")
            seed_everything(cfg.seed + self.rank)  # different dropout per rank
            if self.main:
                remove_outputs(self.out_dir, TRAIN_FILES)  # only there with --overwrite
                save_config(cfg, self.out_dir)
            self.logger = MetricsLogger(self.out_dir, enabled=self.main)
        self.ddp_model = (
            nn.parallel.DistributedDataParallel(self.model) if self.distributed else self.model
        )

    def _claim_output(self, resume: bool, overwrite: bool) -> None:
        """Refuse an out folder holding another run unless ``overwrite`` (its files are then
        deleted once the new run has been set up), and remove the partial checkpoint files a
        killed run left behind."""
        if resume and overwrite:
            raise TrainingError(
                "--resume continues the run in --out; --overwrite deletes it: pick one"
            )
        if resume and not self.ckpt_path.exists():
            raise TrainingError(f"--resume: no checkpoint at {self.ckpt_path}")
        if not resume:
            found = existing(self.out_dir, TRAIN_FILES)
            if found and not overwrite:
                hint = "--resume to continue it, " if self.ckpt_path.exists() else ""
                raise OutputError(
                    f"{self.out_dir} holds another run ({', '.join(p.name for p in found)}): "
                    f"pass {hint}--overwrite to start afresh, or choose another --out"
                )
        if self.main:
            make_folder(self.out_dir)
            stale = remove_partial_files(self.ckpt_path)
            if stale:
                print(
                    f"removed {len(stale)} partial checkpoint file(s) a killed run left in {self.out_dir}"
                )

    # ------------------------------------------------------------------ checkpoints

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.ckpt_path, map_location=self.device)
        lacking = [k for k in RESUME_KEYS if k not in ckpt]
        if lacking:
            raise CheckpointError(
                f"{self.ckpt_path} is not a training checkpoint of attnkit (no {', '.join(lacking)}):"
                " cannot resume from it"
            )
        _check_resume_config(self.cfg, ckpt["config"], self.ckpt_path)
        self.logger = MetricsLogger(self.out_dir, enabled=self.main)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        scheduler = ckpt["scheduler"]
        if scheduler.get("last_epoch") != ckpt["step"]:
            # Written by attnkit's earlier per-epoch scheduler: the schedule now counts steps.
            scheduler = {**scheduler, "last_epoch": ckpt["step"]}
        self.scheduler.load_state_dict(scheduler)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = Progress(
            ckpt["epoch"], ckpt["step"], ckpt["epoch_step"], ckpt.get("seconds", 0.0)
        )
        set_rng_state(ckpt["rng"][self.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
        self.logger.truncate_after(self.state.step)
        if self.main:
            save_config(self.cfg, self.out_dir)

    def save(self) -> None:
        states = [rng_state()]
        if self.distributed:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        if not self.main:
            return
        save_checkpoint(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "rng": states if self.distributed else states[0],
                "epoch": self.state.epoch,
                "step": self.state.step,
                "epoch_step": self.state.epoch_step,
                "seconds": self._elapsed(),
                "config": config_to_dict(self.cfg),
            },
            self.ckpt_path,
        )

    # ------------------------------------------------------------------ loop

    def _log_train(self, losses: dict, t_iter: float, t_data: float) -> None:
        record = {"kind": "train", "step": self.state.step, "epoch": self.state.epoch}
        record.update({k: float(v) for k, v in losses.items()})
        for group in self.optimizer.param_groups:
            record[f"lr/{group.get('name', 'default')}"] = group["lr"]
        for name, alphas in alpha_values(self.model).items():
            record[f"alpha/{name}"] = [round(float(a), 6) for a in alphas]
        record.update(logged_values(self.model))
        record.update(
            {"time/iter": t_iter, "time/data": t_data, "memory_mb": _memory_mb(self.device)}
        )
        self.logger.log(record)

    def _elapsed(self) -> float:
        return round(self.state.seconds + time.perf_counter() - self._started, 1)

    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the val split (``kind: eval`` in ``metrics.jsonl``)."""
        metrics = run_evaluation(
            self.model,
            self.task.build_evaluator(self.cfg, self.val_set),
            self.val_loader,
            self.device,
            AMP_DTYPES[self.cfg.train.amp],
            progress=self.progress,
        )
        self.logger.log(
            {"kind": "eval", "step": self.state.step, "epoch": self.state.epoch, **metrics}
        )
        return metrics

    def fit(self) -> dict:
        cfg = self.cfg.train
        self._started = time.perf_counter()
        accum = cfg.grad_accum_steps
        steps_per_epoch = self.steps_per_epoch
        if steps_per_epoch == 0:
            raise TrainingError(
                f"the train split has {len(self.train_set)} images: too few for one step of "
                f"batch {self.cfg.data.batch_size} x accumulation {accum} x {self.world} ranks"
            )
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        bar = tqdm(
            total=total,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=not (self.progress and self.main),
        )
        metrics: dict = {}
        stopped = self.state.step >= total
        while not stopped and self.state.epoch < cfg.epochs:
            sampler = self.train_loader.sampler
            sampler.set_epoch(
                self.state.epoch, self.state.epoch_step * self.cfg.data.batch_size * accum
            )
            batches = iter(self.train_loader)
            t_last = time.perf_counter()
            while self.state.epoch_step < steps_per_epoch:
                micro = [next(batches) for _ in range(accum)]
                t_data = time.perf_counter() - t_last
                log_now = (self.state.step + 1) % cfg.log_every_steps == 0
                try:
                    losses = train_step(
                        self.ddp_model,
                        self.criterion,
                        self.optimizer,
                        micro,
                        self.device,
                        self.state.step + 1,
                        cfg.clip_max_norm,
                        cfg.amp,
                        self.scaler,
                        log_now,
                    )
                except NonFiniteLossError as err:
                    kept = self.ckpt_path if self.ckpt_path.exists() else "none saved yet"
                    raise TrainingError(
                        f"{err}. Stopped; last good checkpoint: {kept}. A learning rate too "
                        f"high for this model is the usual cause (train.lr={cfg.lr:g})"
                    ) from err
                self.state.step += 1
                self.state.epoch_step += 1
                self.scheduler.step()
                bar.update(1)
                if log_now and self.main:
                    t_iter = time.perf_counter() - t_last
                    self._log_train(losses, t_iter, t_data)
                    bar.set_postfix(loss=f"{float(losses['loss']):.3f}")
                t_last = time.perf_counter()
                every = cfg.checkpoint_every_steps
                if every and self.state.step % every == 0:
                    self.save()
                if self.state.step >= total:
                    stopped = True
                    break
            if self.state.epoch_step >= steps_per_epoch:
                self.state.epoch += 1
                self.state.epoch_step = 0
                if (
                    self.main
                    and cfg.eval_every_epochs
                    and self.state.epoch % cfg.eval_every_epochs == 0
                ):
                    metrics = self.evaluate()
            self.save()
        bar.close()
        if self.main and not metrics and cfg.eval_every_epochs:
            metrics = self.evaluate()
        summary = {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "seconds": self._elapsed(),
            **metrics,
        }
        if self.main:
            (self.out_dir / "train_summary.json").write_text(json.dumps(summary, indent=1))
        self.logger.close()
        dist_utils.barrier()
        return summary


def train(
    cfg, out_dir: str | Path, resume: bool = False, progress: bool = True, overwrite: bool = False
) -> dict:
    """Train ``cfg`` into ``out_dir`` (see :class:`Trainer`); returns the final summary."""
    return Trainer(cfg, out_dir, resume=resume, progress=progress, overwrite=overwrite).fit()

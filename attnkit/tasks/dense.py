"""Dense (pixel-wise) regression, e.g. a height map in metres, with a nodata mask.

Batches carry ``targets = {"target": [B, 1, H, W], "valid": [B, 1, H, W] bool}``; the loss and
every metric only see valid pixels. With ``data.eval_window`` the evaluator predicts each image as
overlapping tiles (:mod:`attnkit.tasks.sliding_window`) instead of whole.
"""

from __future__ import annotations

from attnkit.config.schema import DenseDataConfig, DenseLossConfig
from attnkit.errors import ConfigError, DataError
from attnkit.tasks.base import Task
from attnkit.tasks.dense_loss import DenseRegressionLoss
from attnkit.tasks.dense_metrics import DenseRegressionMetrics

__all__ = ["DenseRegressionEvaluator", "DenseRegressionTask", "SlidingWindowDenseEvaluator"]


class DenseRegressionEvaluator:
    """Streams predictions into MAE, RMSE, R^2, bias and the error per target-value bin."""

    def __init__(self, bins: list[float] | None = None):
        self.metrics = DenseRegressionMetrics(bins or None)

    def update(self, outputs, batch) -> None:
        pred = outputs["pred"] if isinstance(outputs, dict) else outputs  # [B, 1, H, W]
        self.metrics.update(pred, batch.targets["target"], batch.targets["valid"])

    def compute(self) -> dict:
        return self.metrics.compute()

    def artifacts(self) -> dict:
        return {}


class SlidingWindowDenseEvaluator(DenseRegressionEvaluator):
    """:class:`DenseRegressionEvaluator` whose ``predict`` runs the model on overlapping
    ``window`` tiles of each batch and blends them (``data.eval_window`` / ``eval_overlap``)."""

    def __init__(self, bins, window, overlap: float):
        super().__init__(bins)
        self.window, self.overlap = list(window), float(overlap)

    def predict(self, model, batch):
        """The model's prediction ``[B, out, H, W]`` for ``batch``, tile by tile."""
        from attnkit.tasks.sliding_window import tiled_prediction

        return tiled_prediction(model, batch, self.window, self.overlap, "pred")


class DenseRegressionTask(Task):
    """Images to a same-sized map of values; masked L1 / L2 / smooth-L1."""

    name = "dense_regression"
    data_schema = DenseDataConfig
    loss_schema = DenseLossConfig
    key_metric = "rmse"
    higher_is_better = False

    def build_dataset(self, cfg, split, train=None):
        from attnkit.data.dense import build_dense_dataset

        return build_dense_dataset(cfg.data, split, split == "train" if train is None else train)

    def collate(self, samples):
        from attnkit.data.dense import collate_dense

        return collate_dense(samples)

    def build_criterion(self, cfg):
        return DenseRegressionLoss(kind=cfg.loss.kind, beta=cfg.loss.beta)

    def build_evaluator(self, cfg, dataset):
        window = getattr(cfg.data, "eval_window", None)
        if window:
            return SlidingWindowDenseEvaluator(cfg.loss.bins, window, cfg.data.eval_overlap)
        return DenseRegressionEvaluator(cfg.loss.bins)

    def check(self, cfg, dataset) -> None:
        """A split must hold images: with none, training has no steps and every metric is NaN.
        The model's ``in_chans`` must be the images' band count (``dataset.bands``).

        The datasets refuse an empty split when they open; this catches any other dataset a
        family builds, naming where the data comes from.
        """
        if len(dataset) == 0:
            where = (
                getattr(dataset, "folder", None) or cfg.data.root or f"data.name {cfg.data.name!r}"
            )
            raise DataError(f"{where}: the split has no images; give it at least one")
        bands = getattr(dataset, "bands", None)
        in_chans = getattr(getattr(cfg, "model", None), "in_chans", None)
        if bands is not None and in_chans is not None and bands != in_chans:
            where = getattr(dataset, "folder", None) or f"data.name '{cfg.data.name}'"
            raise ConfigError(
                f"model.in_chans is {in_chans} but the images of {where} have {bands} bands: "
                f"set model.in_chans={bands}"
            )

"""The ``dense_segmentation`` task: metrics against hand-computed confusion matrices, the loss
against torch's cross-entropy, task selection in configs (and its errors), and `attnkit train` /
`attnkit eval` end to end on the synthetic scenes."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from attnkit.config import ConfigError, config_from_dict, config_to_dict, load_config
from attnkit.models import build_model
from attnkit.tasks import get_task, task_name, task_of
from attnkit.tasks.segmentation import SegmentationTask
from attnkit.tasks.segmentation_loss import SegmentationLoss
from attnkit.tasks.segmentation_metrics import SegmentationMetrics, confusion_scores

SEG = "configs/dense/synth_swin_segformer_seg.yaml"
SMALL = ["data.num_train=32", "data.num_val=16", "data.batch_size=8", "data.num_workers=0"]

# --------------------------------------------------------------------------- metrics


def test_metrics_match_a_hand_computed_confusion_matrix():
    """Targets 0 0 1 1 2 (and one ignored pixel), predictions 0 1 1 1 0: rows (target)
    [1 1 0], [0 2 0], [1 0 0]. IoU = 1/3, 2/3, 0 (class 2: TP 0, union 1); pixel accuracy
    3/5; class accuracies 1/2, 1, 0."""
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])  # [1, 2, 3]
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    metrics = SegmentationMetrics(3, ignore_index=255)
    metrics.update(pred, target)
    assert metrics.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    out = metrics.compute()
    assert out["iou_per_class"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert out["miou"] == pytest.approx(1 / 3)
    assert out["pixel_acc"] == pytest.approx(3 / 5)
    assert out["acc_per_class"] == pytest.approx([0.5, 1.0, 0.0])
    assert out["mean_class_acc"] == pytest.approx(0.5)
    assert out["num_pixels"] == 5


def test_absent_classes_are_left_out_of_the_means():
    """Class 3 appears nowhere (IoU NaN, not counted); class 2 only in the predictions (IoU 0,
    counted; its class accuracy NaN, not counted)."""
    cm = torch.tensor([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    out = confusion_scores(cm)
    iou = out["iou_per_class"]
    assert iou[:3] == pytest.approx([3 / 4, 1.0, 0.0]) and math.isnan(iou[3])
    assert out["miou"] == pytest.approx((3 / 4 + 1.0 + 0.0) / 3)
    acc = out["acc_per_class"]
    assert acc[:2] == pytest.approx([3 / 4, 1.0]) and math.isnan(acc[2]) and math.isnan(acc[3])
    assert out["mean_class_acc"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert out["pixel_acc"] == pytest.approx(5 / 6)
    empty = confusion_scores(torch.zeros(2, 2, dtype=torch.int64))
    assert all(math.isnan(empty[k]) for k in ("miou", "pixel_acc", "mean_class_acc"))


def test_metrics_stream_over_batches_and_take_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 6, 7)
    target = torch.randint(0, 5, (4, 6, 7))
    target[0, :2] = 255
    whole = SegmentationMetrics(5)
    whole.update(logits, target)
    parts = SegmentationMetrics(5)
    for i in range(4):
        parts.update(logits[i : i + 1].argmax(1), target[i : i + 1])
    assert torch.equal(whole.confusion, parts.confusion)
    assert whole.confusion.dtype == torch.int64 and whole.num_pixels == 4 * 42 - 14
    with pytest.raises(ValueError, match="target class id 7 is outside 0..4"):
        whole.update(logits[:1], torch.full((1, 6, 7), 7))
    with pytest.raises(ValueError, match="3 channels but there are 5 classes"):
        whole.update(logits[:, :3], target)


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0]])
def test_loss_is_cross_entropy_over_the_kept_pixels(smoothing, weights):
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 6, requires_grad=True)
    labels = torch.randint(0, 3, (2, 5, 6))
    labels[0, :2] = 255
    out = SegmentationLoss(255, smoothing, weights)(logits, {"labels": labels})
    keep = labels != 255
    kept_logits = logits.permute(0, 2, 3, 1)[keep]  # [N, K]
    weight = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(kept_logits, labels[keep], weight=weight, label_smoothing=smoothing)
    assert torch.allclose(out["loss"], expected, atol=1e-6) and out["loss_ce"] is out["loss"]
    right = (logits.argmax(1) == labels)[keep].float().mean()
    assert torch.allclose(out["pixel_acc"], right)


def test_an_all_ignored_batch_gives_a_zero_loss_with_a_gradient():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = SegmentationLoss(ignore_index=9)(logits, {"labels": torch.full((2, 4, 4), 9)})
    assert out["loss"].item() == 0.0 and out["loss"].grad_fn is not None
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()
    assert out["pixel_acc"].item() == 0.0


# --------------------------------------------------------------------------- task selection


def test_configs_pick_the_task_and_old_configs_keep_the_default(repo_root):
    seg = load_config(repo_root / SEG)
    assert seg.task == "dense_segmentation" and task_name(seg) == "dense_segmentation"
    assert (
        isinstance(task_of(seg), SegmentationTask)
        and get_task("dense_segmentation").key_metric == "miou"
    )
    assert type(seg.loss).__name__ == "SegmentationLossConfig" and seg.model.out_channels == 3
    unet = load_config(repo_root / "configs/dense/synth_swin_unet_seg.yaml")
    assert unet.model.decoder.name == "swin_unet" and task_name(unet) == "dense_segmentation"
    logits = build_model(unet).eval()(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 3, 32, 32)
    regression = load_config(repo_root / "configs/dense/synth_swin_segformer.yaml")
    assert regression.task is None and task_name(regression) == "dense_regression"
    # A config saved before the key existed (an old checkpoint's) has no ``task``: the default.
    tree = config_to_dict(regression)
    del tree["task"]
    assert task_name(config_from_dict(tree)) == "dense_regression"
    explicit = load_config(
        repo_root / "configs/dense/synth_swin_segformer.yaml", ["task=dense_regression"]
    )
    assert task_name(explicit) == "dense_regression" and explicit.loss.kind == "l1"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["task=dense_segmentaton"], r"'task' must be one of 'dense_regression', "
         r"'dense_segmentation' .*did you mean 'dense_segmentation'\?"),
        (["task=classification"], r"'task' must be one of 'dense_regression'"),
        (["model.name=detr", "task=dense_segmentation"], r"'task' must be one of 'detection'"),
    ],
)  # fmt: skip
def test_a_task_the_family_does_not_offer_is_a_config_error(repo_root, overrides, match):
    base = repo_root / "configs/dense/synth_swin_segformer.yaml"
    path = None if overrides[0].startswith("model.name") else base
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)


def test_delete_key_replaces_an_inherited_section(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: dense}\nloss: {kind: l2, bins: [1, 2]}\n")
    (tmp_path / "seg.yaml").write_text(
        "_base_: base.yaml\ntask: dense_segmentation\nmodel: {out_channels: 3}\n"
        "loss: {_delete_: true, label_smoothing: 0.1}\n"
    )
    assert load_config(tmp_path / "seg.yaml").loss.label_smoothing == 0.1
    (tmp_path / "merged.yaml").write_text("_base_: base.yaml\ntask: dense_segmentation\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: unknown key 'loss\.(kind|bins)'"):
        load_config(tmp_path / "merged.yaml")


def test_task_check_names_the_key_to_set(repo_root):
    cfg = load_config(repo_root / SEG, [*SMALL, "model.out_channels=2"])
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, "val")
    with pytest.raises(ConfigError, match=r"model\.out_channels is 2 .* 3 classes \(ground, "
                       r"building, tree\): set model\.out_channels=3"):  # fmt: skip
        task.check(cfg, dataset)
    cfg = load_config(repo_root / SEG, [*SMALL, "loss.class_weights=[1, 2]"])
    with pytest.raises(ConfigError, match=r"loss\.class_weights has 2 weights for 3 classes"):
        task.check(cfg, dataset)
    cfg = load_config(repo_root / SEG, [*SMALL, "data.class_names=null", "data.ignore_index=2"])
    with pytest.raises(ConfigError, match=r"data\.ignore_index=2 is a class id"):
        task.check(cfg, task.build_dataset(cfg, "val"))


def test_models_command_lists_the_extra_tasks(capsys):
    from attnkit.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "dense  (dense_regression; also dense_segmentation" in out
    assert "detr  (detection)" in out


def test_bench_models_refuses_a_segmentation_config(repo_root):
    from attnkit.bench.models import load_model_config

    with pytest.raises(ConfigError, match="is a dense_segmentation model"):
        load_model_config(repo_root / SEG, [], None)


# --------------------------------------------------------------------------- end to end


def test_trains_and_evaluates_through_the_cli(repo_root, tmp_path):
    from attnkit.cli import main

    run, evaluated = tmp_path / "run", tmp_path / "eval"
    args = ["train", "--config", str(repo_root / SEG), "--out", str(run), "--quiet"]
    overrides = [*SMALL, "train.epochs=3", "train.eval_every_epochs=1", "train.log_every_steps=1"]
    assert main([*args, *overrides]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert len(evals) == 3 and all(0.0 <= r["miou"] <= 1.0 for r in evals)
    assert max(r["miou"] for r in evals[1:]) > evals[0]["miou"], [r["miou"] for r in evals]
    train = [r for r in records if "loss_ce" in r]
    assert train and all(math.isfinite(r["loss_ce"]) for r in train)

    assert main(["eval", "--checkpoint", str(run), "--out", str(evaluated), "--quiet"]) == 0
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(evals[-1]["miou"])
    report = json.loads((evaluated / "segmentation.json").read_text())
    assert report["class_names"] == ["ground", "building", "tree"]
    assert sum(map(sum, report["confusion"])) == metrics["num_pixels"]
    assert [row["class"] for row in report["per_class"]] == report["class_names"]


class _Pointwise(torch.nn.Module):
    """Logits from each pixel alone (a 1x1 conv), or, with context, plus the tile's mean: the
    first is the same whole or tiled, the second is not."""

    def __init__(self, context: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.context = context

    def forward(self, images):
        logits = self.conv(images)  # [B, 3, H, W]
        if self.context:
            logits = logits + 10.0 * images.mean(dim=(2, 3), keepdim=True)[:, :1]
        return {"logits": logits}


def test_eval_window_predicts_tiles_and_blends_their_logits(repo_root):
    from attnkit.data.segmentation import collate_segmentation
    from attnkit.tasks.segmentation import SlidingWindowSegmentationEvaluator

    cfg = load_config(repo_root / SEG, [*SMALL, "data.eval_window=[24, 24]"])
    task = task_of(cfg)
    dataset = task.build_dataset(cfg, "val")
    evaluator = task.build_evaluator(cfg, dataset)
    assert isinstance(evaluator, SlidingWindowSegmentationEvaluator)
    assert evaluator.window == [24, 24] and evaluator.overlap == 0.25
    plain = task.build_evaluator(load_config(repo_root / SEG, SMALL), dataset)
    assert not hasattr(plain, "predict")

    batch = collate_segmentation([dataset[i] for i in range(4)])  # 64 x 64 images
    torch.manual_seed(0)
    pointwise, context = _Pointwise(False), _Pointwise(True)
    whole = pointwise(**batch.inputs)["logits"]
    torch.testing.assert_close(evaluator.predict(pointwise, batch), whole, atol=1e-5, rtol=0)
    tiled = evaluator.predict(context, batch)  # the tiles' means differ from the image's
    assert (tiled - context(**batch.inputs)["logits"]).abs().max() > 1e-2

    evaluator.update(evaluator.predict(pointwise, batch), batch)
    plain.update(pointwise(**batch.inputs), batch)
    assert torch.equal(evaluator.metrics.confusion, plain.metrics.confusion)

"""Backbone pre-training on object crops, the tiny_cnn body, and loading pre-trained bodies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from attnkit.data.coco import CocoDetection
from attnkit.models.detr.backbone import Backbone
from attnkit.models.detr.tiny_cnn import TinyCNN
from attnkit.runfiles import resolve_shipped_path
from attnkit.train.pretrain_backbone import (
    _overlap_fraction,
    _square_crop,
    object_crops,
    pretrain_backbone,
)

from train_helpers import tiny_config


def test_square_crop_centres_the_object_and_fills_outside_with_the_mean():
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[10:20, 30:40] = (255, 0, 0)  # a red square centred at (35, 15)
    image = Image.fromarray(pixels)
    crop = _square_crop(image, 35, 15, 10, 10)  # exactly the square
    assert crop.shape == (10, 10, 3)
    assert (crop[..., 0] > 200).all() and (crop[..., 1] < 50).all()
    corner = _square_crop(image, 0, 0, 20, 20)  # three quarters outside the image
    mean = np.asarray(image).reshape(-1, 3).mean(0).astype(int)
    assert np.abs(corner[0, 0].astype(int) - mean).max() <= 1
    assert (corner[15, 15] == 0).all()  # inside: the black image


def test_overlap_fraction_by_hand():
    boxes = np.array([[0.0, 0.0, 10.0, 10.0]])
    assert _overlap_fraction(boxes, 5, 5, 10) == pytest.approx(1.0)
    assert _overlap_fraction(boxes, 10, 10, 10) == pytest.approx(0.25)
    assert _overlap_fraction(boxes, 30, 30, 10) == 0.0
    assert _overlap_fraction(np.zeros((0, 4)), 5, 5, 10) == 0.0


def test_object_crops_one_per_object_and_scale_and_labelled_backgrounds(shapes_root):
    dataset = CocoDetection(shapes_root, "train")
    crops, labels = object_crops(dataset, size=32, crops_per_object=3, background_per_image=1)
    targets = [dataset.raw_target(i) for i in range(len(dataset))]
    expected = torch.cat([t["labels"].repeat_interleave(3) for t in targets if len(t["labels"])])
    objects = labels > 0
    assert crops.dtype == torch.uint8 and crops.shape[1:] == (3, 32, 32)
    assert int(objects.sum()) == 3 * sum(len(t["labels"]) for t in targets)
    # Object crops come image by image, each image's objects before its background crop.
    assert torch.equal(labels[objects], expected)
    assert 0 < int((labels == 0).sum()) <= len(dataset)
    again, _ = object_crops(dataset, size=32, crops_per_object=3, background_per_image=1)
    assert torch.equal(crops, again)  # seeded


def test_tiny_cnn_stride_16_and_first_stage_frozen_when_pretrained(tmp_path):
    body = TinyCNN()
    out = body(torch.randn(2, 3, 50, 67))
    assert out.shape == (2, 128, math.ceil(50 / 16), math.ceil(67 / 16))
    path = tmp_path / "bb.pt"
    torch.save({"body": body.state_dict()}, path)
    backbone = Backbone("tiny_cnn", pretrained=path, mask_padding=True)
    for name, param in backbone.body.named_parameters():
        assert param.requires_grad == (not name.startswith("stages.0")), name
        assert torch.equal(param, body.state_dict()[name])
    scratch = Backbone("tiny_cnn", from_scratch=True)
    assert all(p.requires_grad for p in scratch.parameters())
    with pytest.raises(ValueError, match="no stage/dilation"):
        Backbone("tiny_cnn", from_scratch=True, stage=-2)


def test_pretrained_file_of_another_backbone_is_refused(tmp_path):
    path = tmp_path / "bb.pt"
    torch.save({"body": TinyCNN((8, 8, 8, 8)).state_dict()}, path)
    with pytest.raises(ValueError, match="does not fit this backbone"):
        Backbone("timm:regnetx_002", pretrained=path, from_scratch=True)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        Backbone("tiny_cnn", pretrained=tmp_path / "missing.pt")


def test_timm_backbone_stage_minus_2_is_stride_16():
    last = Backbone("timm:regnetx_002", from_scratch=True)
    before = Backbone("timm:regnetx_002", from_scratch=True, stage=-2)
    images, mask = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    assert last(images, mask)[0].shape[-2:] == (2, 3)
    features, small = before(images, mask)
    assert features.shape[-2:] == (4, 6) and small.shape == (1, 4, 6)
    assert before.num_channels < last.num_channels
    with pytest.raises(ValueError, match="last stage only"):
        Backbone("resnet18", stage=-2)


def test_checkpoints_placeholder_prefers_the_env_folder_then_the_repo(tmp_path, monkeypatch):
    from attnkit.models.reference import REPO_CHECKPOINTS

    monkeypatch.setenv("ATTNKIT_CHECKPOINTS", str(tmp_path))
    assert resolve_shipped_path("{checkpoints}/x.pt") == REPO_CHECKPOINTS / "x.pt"
    (tmp_path / "x.pt").write_bytes(b"")
    assert resolve_shipped_path("{checkpoints}/x.pt") == tmp_path / "x.pt"
    assert resolve_shipped_path("~/y.pt") == resolve_shipped_path("~/y.pt").expanduser()


def test_pretraining_learns_and_writes_a_loadable_body(tmp_path):
    cfg = tiny_config(**{"model.backbone": "tiny_cnn", "model.backbone_from_scratch": True})
    out = tmp_path / "backbone.pt"
    metrics = pretrain_backbone(cfg, out, steps=60, batch_size=32, crop_size=32, progress=False)
    assert metrics["final_loss"] < 0.75 * math.log(cfg.model.num_classes)
    assert 0.0 <= metrics["object_accuracy"] <= 1.0 and metrics["steps"] == 60
    assert out.with_suffix(".json").is_file()
    saved = torch.load(out, weights_only=True)
    assert saved["backbone"] == "tiny_cnn" and saved["metrics"] == metrics
    backbone = Backbone("tiny_cnn", pretrained=out)
    for name, value in backbone.body.state_dict().items():
        assert torch.equal(value, saved["body"][name].to(value.dtype)), name


def test_a_checkpoint_loads_without_its_pretrained_backbone_file(tmp_path):
    from attnkit.config import config_to_dict
    from attnkit.models import build_model
    from attnkit.models.loading import model_from_checkpoint

    weights = tmp_path / "bb.pt"
    torch.save({"body": TinyCNN().state_dict()}, weights)
    cfg = tiny_config(**{"model.backbone": "tiny_cnn", "model.pretrained_backbone": str(weights)})
    model = build_model(cfg)
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg)}, tmp_path / "c.pt")
    weights.unlink()  # e.g. a checkpoint copied to another machine
    loaded, loaded_cfg = model_from_checkpoint(tmp_path / "c.pt")
    assert loaded_cfg.model.pretrained_backbone == str(weights)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_shipped_backbone_fits_the_shapes_tiny_config():
    from attnkit.config import load_config
    from attnkit.models.reference import REPO_CHECKPOINTS

    cfg = load_config(REPO_CHECKPOINTS.parent / "configs" / "detr" / "shapes_tiny_softmax.yaml")
    path = REPO_CHECKPOINTS / "shapes_tiny_backbone.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["backbone"] == cfg.model.backbone and saved["metrics"]["object_accuracy"] > 0.9
    Backbone(cfg.model.backbone, pretrained=cfg.model.pretrained_backbone)  # loads strictly

"""The model-family machinery: registry, family-tagged configs, one loop, eval and analyze for all.

The toy family below is the proof that adding a family needs nothing but its registration: it
trains, evaluates and is analysed through the CLI without any edit in attnkit's shared code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Literal

import pytest
import torch
import yaml
from torch import nn

from attnkit.attention import MultiheadAttention, make_normalizer
from attnkit.cli import main
from attnkit.config import ConfigError, load_config
from attnkit.config.schema import ClassificationDataConfig, ClassificationLossConfig
from attnkit.models import FAMILIES, build_model
from attnkit.models.registry import Family, register_family
from attnkit.models.vit import ViTConfig
from attnkit.train.logger import read_metrics
from attnkit.train.loop import train

# --------------------------------------------------------------------------- a toy family


@dataclass
class ToyConfig:
    name: Literal["toy_attention"] = "toy_attention"
    dim: int = 16
    normalizer: str = "softmax"
    num_classes: int = 10


class ToyAttentionClassifier(nn.Module):
    """8x8 patches of a 32x32 image -> one attention layer -> mean pool -> classes."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.embed = nn.Conv2d(3, cfg.dim, 8, stride=8)
        self.attn = MultiheadAttention(cfg.dim, 2, normalizer=make_normalizer(cfg.normalizer, 2))
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, images):
        x = self.embed(images).flatten(2).transpose(1, 2)  # [B, 16, C]
        x, _ = self.attn(x, x, x, key_grid=(4, 4))
        return self.head(x.mean(1))  # [B, classes]


@pytest.fixture
def toy_family():
    family = register_family(
        Family(
            name="toy_attention",
            schema=ToyConfig,
            build=lambda cfg: ToyAttentionClassifier(cfg.model),
            task="classification",
            site_label=lambda name: "the only layer" if name == "attn" else None,
        )
    )
    yield family
    FAMILIES.remove("toy_attention")


def _write(path, tree) -> str:
    path.write_text(yaml.safe_dump(tree))
    return str(path)


SMALL_DATA = {"num_train": 64, "num_val": 32, "batch_size": 16, "num_workers": 0}


def test_a_family_registered_in_a_few_lines_trains_evaluates_and_is_analysed(
    toy_family, tmp_path, capsys
):
    config = _write(
        tmp_path / "toy.yaml",
        {
            "model": {"name": "toy_attention", "normalizer": "sparsemax"},
            "data": SMALL_DATA,
            "train": {"epochs": 2, "lr": 3e-3, "eval_every_epochs": 1, "log_every_steps": 1},
        },
    )
    run = tmp_path / "run"
    assert main(["train", "--config", config, "--out", str(run), "--quiet"]) == 0
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert len(evals) == 2 and 0.0 <= evals[-1]["top1"] <= 1.0
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(evals[-1]["top1"])  # same weights, same split
    assert len(metrics["confusion"]) == 10 and sum(map(sum, metrics["confusion"])) == 32
    out = tmp_path / "an"
    assert (
        main(["analyze", "--checkpoint", str(run / "last.pt"), "--out", str(out), "--quiet"]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["sites"] == {"attn": "the only layer"}
    assert summary["zeros_ratio"]["attn"]["mean"] > 0  # sparsemax: exact zeros
    assert len(summary["gini"]["attn"]["per_head"]) == 2
    assert "the only layer" in capsys.readouterr().out


def test_attnkit_models_lists_families_and_variants(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for text in ("detr  (detection)", "vit  (classification)", "variant tiny", "synth_softmax"):
        assert text in out


# --------------------------------------------------------------------------- configs


def test_the_family_types_the_model_data_and_loss_sections(repo_root):
    cfg = load_config(repo_root / "configs/vit/synth_sparsemax.yaml")
    assert isinstance(cfg.model, ViTConfig) and cfg.model.attention.normalizer == "sparsemax"
    assert isinstance(cfg.data, ClassificationDataConfig) and cfg.data.name == "synthetic"
    assert isinstance(cfg.loss, ClassificationLossConfig) and cfg.loss.label_smoothing == 0.1
    assert cfg.train.schedule == "cosine" and cfg.train.no_weight_decay == [
        "pos_embed",
        "cls_token",
    ]
    bare = load_config(None, ["model.name=vit"])  # missing sections: the family's defaults
    assert isinstance(bare.data, ClassificationDataConfig)


def test_family_config_errors_name_the_key_and_the_closest_value(repo_root, tmp_path):
    vit = repo_root / "configs/vit/synth_softmax.yaml"
    with pytest.raises(ConfigError, match=r"'data.name' must be one of .*'cifar10'.*got 'shapes'"):
        load_config(vit, ["data.name=shapes"])  # a detection dataset for a classifier
    with pytest.raises(ConfigError, match=r"'model.name'.*got 'vitt'; did you mean 'vit'"):
        load_config(vit, ["model.name=vitt"])
    typo = _write(tmp_path / "typo.yaml", {"_base_": str(vit), "model": {"depht": 3}})
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'model.depht'.*'model.depth'"):
        load_config(typo)
    with pytest.raises(ConfigError, match=r"unknown key 'loss.cost_class'"):
        load_config(vit, ["loss.cost_class=1.0"])  # DETR's loss key on a classifier
    with pytest.raises(ConfigError, match=r"'train.lr_mult.backbone.' must be float"):
        load_config(vit, {"train.lr_mult": {"backbone.": "fast"}})


# --------------------------------------------------------------------------- the ViT line


def _vit_overrides(normalizer: str, epochs: int = 1) -> dict:
    return {
        "model.attention.normalizer": normalizer,
        "model.embed_dim": 32,
        "model.depth": 2,
        "model.num_heads": 2,
        **{f"data.{k}": v for k, v in SMALL_DATA.items()},
        "train.epochs": epochs,
        "train.warmup_steps": 2,
        "train.eval_every_epochs": 1,
        "train.log_every_steps": 1,
    }


def test_vit_softmax_and_sparsemax_train_eval_and_analyze(repo_root, tmp_path):
    config = str(repo_root / "configs/vit/synth_softmax.yaml")
    zeros, ginis = {}, {}
    for normalizer in ("softmax", "sparsemax"):
        run, out = tmp_path / normalizer, tmp_path / f"{normalizer}_an"
        overrides = [f"{k}={v}" for k, v in _vit_overrides(normalizer).items()]
        assert main(["train", "--config", config, "--out", str(run), "--quiet", *overrides]) == 0
        assert main(["analyze", "--checkpoint", str(run), "--out", str(out), "--quiet"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["meta"]["sites"] == {"blocks.0.attn": "block 1", "blocks.1.attn": "block 2"}
        assert len(summary["gini"]["blocks.1.attn"]["per_head"]) == 2
        distance = summary["distance"]["blocks.0.attn"]["mean"]
        assert 0 < distance < math.hypot(32, 32)  # pixels on a 32x32 image
        zeros[normalizer] = summary["zeros_ratio"]["blocks.0.attn"]["mean"]
        ginis[normalizer] = summary["gini"]["blocks.0.attn"]["mean"]
        assert main(["eval", "--checkpoint", str(run), "--out", str(out), "--quiet"]) == 0
        top1 = json.loads((out / "metrics.json").read_text())["top1"]
        assert top1 == pytest.approx(read_metrics(run / "metrics.jsonl")[-1]["top1"])
    assert zeros["softmax"] == 0.0 and zeros["sparsemax"] > 0.01
    assert ginis["sparsemax"] > ginis["softmax"] + 0.1


def test_vit_alpha_is_logged_per_head_and_resume_is_exact(repo_root, tmp_path):
    cfg = load_config(
        repo_root / "configs/vit/synth_softmax.yaml",
        {**_vit_overrides("alpha_entmax", epochs=2), "train.eval_every_epochs": 0},
    )
    full = train(cfg, tmp_path / "full", progress=False)
    half = replace(cfg, train=replace(cfg.train, max_steps=3))  # interrupted after 3 steps
    train(half, tmp_path / "resumed", progress=False)
    train(cfg, tmp_path / "resumed", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)["model"]
    assert full["step"] == 8 and all(torch.equal(a[k], b[k]) for k in a)
    records = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    alphas = records[-1]["alpha/blocks.1.attn"]
    assert len(alphas) == 2 and all(1.0 < x <= 2.0 for x in alphas)
    assert records[-1]["grad_norm/pre_alpha"] > 0  # the gradient reaches pre_alpha (pitfall 8)


def test_a_cnn_baseline_trains_with_the_same_loop(repo_root, tmp_path):
    cfg = load_config(
        repo_root / "configs/cnn/synth_small.yaml",
        {**{f"data.{k}": v for k, v in SMALL_DATA.items()}, "train.epochs": 1, "model.width": 8},
    )

    def count(overrides) -> int:
        model = build_model(load_config(repo_root / "configs/cnn/synth_small.yaml", overrides))
        return sum(p.numel() for p in model.parameters())

    # 3 conv stages of (32, 64, 128) channels + head, by hand: 10208 + 55552 + 221696 + 1290.
    assert count({}) == 288_746
    assert count({"model.arch": "resnet18"}) == 11_173_962  # ResNet-18 for CIFAR: 11.2M
    summary = train(cfg, tmp_path / "cnn", progress=False)
    assert summary["step"] == 4 and 0.0 <= summary["top1"] <= 1.0


def test_a_classifier_with_the_wrong_number_of_classes_is_refused(repo_root, tmp_path):
    cfg = load_config(
        repo_root / "configs/vit/synth_softmax.yaml",
        {**_vit_overrides("softmax"), "model.num_classes": 7},
    )
    with pytest.raises(ConfigError, match="model.num_classes is 7 but .* has 10 classes"):
        train(cfg, tmp_path / "run", progress=False)


def test_analyze_refuses_a_model_without_attention_in_one_line(repo_root, tmp_path, capsys):
    cfg = load_config(
        repo_root / "configs/cnn/synth_small.yaml",
        {**{f"data.{k}": v for k, v in SMALL_DATA.items()}, "train.max_steps": 1},
    )
    train(replace(cfg, model=replace(cfg.model, width=4)), tmp_path / "cnn", progress=False)
    out = tmp_path / "an"
    assert main(["analyze", "--checkpoint", str(tmp_path / "cnn"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cnn model" in err and "no attnkit attention module" in err
    assert not (out / "records.parquet").exists()


def test_a_run_saved_by_the_per_epoch_scheduler_resumes_on_the_per_step_schedule(
    repo_root, tmp_path
):
    cfg = load_config(
        repo_root / "configs/vit/synth_softmax.yaml",
        {**_vit_overrides("softmax", epochs=2), "train.eval_every_epochs": 0},
    )
    train(cfg, tmp_path / "full", progress=False)
    train(replace(cfg, train=replace(cfg.train, max_steps=5)), tmp_path / "old", progress=False)
    path = tmp_path / "old" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["scheduler"]["last_epoch"] = ckpt["epoch"]  # what the per-epoch scheduler saved
    torch.save(ckpt, path)
    train(cfg, tmp_path / "old", resume=True, progress=False)

    def lrs(run):
        records = read_metrics(tmp_path / run / "metrics.jsonl")
        return {r["step"]: r["lr/default"] for r in records if r["kind"] == "train"}

    assert lrs("old") == pytest.approx(lrs("full"))

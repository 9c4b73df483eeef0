"""The dense family end to end: every encoder with the SegFormer head builds from its config, trains
through `attnkit train` on the synthetic height maps (the error falls), and labels its sites."""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.analysis import AttentionRecorder
from attnkit.config import load_config
from attnkit.models import build_model

CONFIGS = ["synth_swin_segformer", "synth_mit_segformer", "synth_swin_unet"]
SMALL = ["data.num_train=32", "data.num_val=16", "data.batch_size=8", "data.num_workers=0"]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
def test_model_predicts_a_map_of_the_input_size_at_any_size(repo_root, config, normalizer):
    cfg = load_config(
        repo_root / f"configs/dense/{config}.yaml", [f"model.attention.normalizer={normalizer}"]
    )
    model = build_model(cfg).eval()
    with torch.no_grad(), AttentionRecorder(model) as rec:
        pred = model(torch.randn(2, 3, 50, 70))
    assert pred.shape == (2, 1, 50, 70) and torch.isfinite(pred).all()
    sites = {rec.last(n).site for n in rec.names}
    encoder = {"stage 1 block 1", "stage 1 block 2", "stage 2 block 1", "stage 2 block 2"}
    assert sites == (encoder | {"up 1 block 1", "up 1 block 2"} if "unet" in config else encoder)
    modules = dict(model.named_modules())
    assert all(modules[n].normalizer.name == normalizer for n in rec.names)


@pytest.mark.parametrize("config", CONFIGS)
def test_trains_and_evaluates_through_the_cli(repo_root, tmp_path, config):
    from attnkit.cli import main

    run = tmp_path / "run"
    args = ["train", "--config", str(repo_root / f"configs/dense/{config}.yaml"), "--out", str(run)]
    overrides = [*SMALL, "train.epochs=3", "train.eval_every_epochs=1", "train.log_every_steps=1"]
    assert main([*args, "--quiet", *overrides]) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert len(evals) == 3 and all(r["mae"] == r["mae"] for r in evals)  # finite, not NaN
    assert evals[-1]["mae"] < evals[0]["mae"], [r["mae"] for r in evals]


def test_segformer_head_by_hand():
    """Two stage maps: each projected by its 1x1 conv, upsampled bilinearly to the first map's
    size, concatenated deepest first, fused (1x1 conv, BN, ReLU), predicted by a 1x1 conv."""
    import torch.nn.functional as F

    from attnkit.models.dense.decoders.segformer import SegFormerHead

    torch.manual_seed(3)
    head = SegFormerHead([4, 6], embed_dim=5, out_channels=2).eval()
    with torch.no_grad():
        head.fuse[1].running_mean.normal_()
        head.fuse[1].running_var.uniform_(0.5, 2.0)
        c1, c2 = torch.randn(1, 4, 8, 6), torch.randn(1, 6, 4, 3)
        p1 = F.conv2d(c1, head.linear[0].weight, head.linear[0].bias)  # [1, 5, 8, 6]
        p2 = F.interpolate(
            F.conv2d(c2, head.linear[1].weight, head.linear[1].bias), size=(8, 6), mode="bilinear"
        )
        fused = F.conv2d(torch.cat([p2, p1], 1), head.fuse[0].weight)  # deepest first
        bn = head.fuse[1]
        fused = (fused - bn.running_mean[:, None, None]) / (
            bn.running_var[:, None, None] + bn.eps
        ).sqrt()
        fused = (fused * bn.weight[:, None, None] + bn.bias[:, None, None]).relu()
        expected = F.conv2d(fused, head.predict.weight, head.predict.bias)
        assert torch.allclose(head([c1, c2]), expected, atol=1e-5)


def test_swin_unet_has_the_released_size_and_expands_patches_in_p1_p2_c_order(repo_root):
    """Pitfall 13: Swin-Unet's patch expanding reads channels as (p1 p2 c), not PixelShuffle's
    (c p1 p2); the released configuration has 27.17 M parameters."""
    from attnkit.models.dense.decoders.swin_unet import spread_channels

    cfg = load_config(repo_root / "configs/dense/swin_unet_224.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    assert abs(sum(p.numel() for p in model.parameters()) - 27.17e6) < 0.005e6
    x = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(1, 1, 1, 12)  # one token, c = 3
    patch = spread_channels(x, 2)[0]  # [2, 2, 3]
    assert patch[0, 1].tolist() == [3.0, 4.0, 5.0]  # p1 = 0, p2 = 1: channels 3..5
    assert patch[1, 0].tolist() == [6.0, 7.0, 8.0]
    shuffled = torch.nn.functional.pixel_shuffle(x.permute(0, 3, 1, 2), 2)[0]  # [3, 2, 2]
    assert not torch.equal(shuffled.permute(1, 2, 0), patch)


MECHANISMS = [
    "full",
    "window",
    "shifted_window",
    "grid",
    "spatial_reduction",
    "pooled_reduction",
    "efficient",
]
ENCODERS = {  # overrides giving four attention sites; the label they start with
    "swin": (["model.encoder.variant=tiny"], "stage "),
    "mit": (["model.encoder.variant=b0", "model.encoder.embed_dims=[32,64]"], "stage "),
    "vit": (
        [
            "model.encoder.embed_dim=32",
            "model.encoder.depth=4",
            "model.encoder.num_heads=[2]",
            "model.encoder.patch_size=8",
            "model.encoder.stage_idx=[0,1,2,3]",
        ],
        "block ",
    ),
}


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_mechanism_in_every_encoder_learns(repo_root, encoder, mechanism):
    """One config line swaps the mechanism (and Mix-FFN into Swin and ViT, an MLP into MiT); a
    few AdamW steps on a fixed batch lower the loss and every site still reports its attention."""
    normalizer = "softmax" if mechanism == "efficient" else "sparsemax"
    ffn = "mlp" if encoder == "mit" else "mix_ffn"
    overrides, site = ENCODERS[encoder]
    cfg = load_config(
        repo_root / "configs/dense/synth_swin_segformer.yaml",
        [
            f"model.encoder.name={encoder}",
            *overrides,
            f"model.attention.mechanism={mechanism}",
            f"model.attention.normalizer={normalizer}",
            f"model.block.ffn={ffn}",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    images, target = torch.randn(4, 3, 40, 56), torch.randn(4, 1, 40, 56)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        loss = (model(images) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    if mechanism == "efficient":  # forms no attention matrix: nothing to record, and it says so
        with (
            pytest.warns(UserWarning, match="no attnkit attention module"),
            AttentionRecorder(model),
        ):
            pass
        return
    with torch.no_grad(), AttentionRecorder(model) as rec:
        model(images[:1])
    assert len(rec.names) == 4
    assert all(rec.last(n).site.startswith(site) for n in rec.names)


def test_efficient_attention_refuses_a_sparse_normalizer(repo_root):
    from attnkit.errors import ConfigError

    with pytest.raises(ConfigError, match="efficient attention forms no attention matrix"):
        load_config(
            repo_root / "configs/dense/synth_swin_segformer.yaml",
            ["model.attention.mechanism=efficient", "model.attention.normalizer=sparsemax"],
        )

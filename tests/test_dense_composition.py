"""The dense family's composition beyond Swin and MiT: the ViT and MaxViT encoders, the FPN head,
PVTv2-Li's pooled spatial reduction, and every encoder x decoder pair trained by `attnkit train`.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
import torch.nn.functional as F

from attnkit.config import load_config
from attnkit.errors import ConfigError
from attnkit.models import build_model

BASE = "configs/dense/synth_swin_segformer.yaml"
ENCODER_CONFIGS = {
    "swin": "synth_swin_segformer",
    "mit": "synth_mit_segformer",
    "vit": "synth_vit_segformer",
    "maxvit": "synth_maxvit_segformer",
}
DECODERS = ["segformer", "swin_unet", "fpn"]
QUICK = {("swin", "fpn"), ("mit", "swin_unet"), ("vit", "segformer"), ("maxvit", "swin_unet")}
"""The pairs `make test` trains (every encoder and every decoder once); the others are slow."""
PAIRS = [
    pytest.param(e, d, marks=() if (e, d) in QUICK else pytest.mark.slow, id=f"{e}-{d}")
    for e in ENCODER_CONFIGS
    for d in DECODERS
]


def test_pooled_spatial_reduction_equals_timm_pvt_v2_linear_attention():
    """PVTv2-Li: keys and values average-pooled to 7 x 7, a 1x1 conv, LayerNorm and GELU; timm's
    module names, so its weights load as they are and the outputs agree."""
    from timm.models.pvt_v2 import Attention

    from attnkit.attention.spatial_reduction import SpatialReductionAttention

    torch.manual_seed(0)
    ref = Attention(32, num_heads=4, sr_ratio=1, linear_attn=True).eval()
    ours = SpatialReductionAttention(32, 4, pool_size=7).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 15 * 11, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x, (15, 11)), ref(x, [15, 11]), atol=1e-6)


def test_pooled_reduction_keeps_49_keys_at_any_size():
    from attnkit.analysis import AttentionRecorder
    from attnkit.attention.spatial_reduction import SpatialReductionAttention

    layer = SpatialReductionAttention(16, 2, pool_size=7, normalizer="sparsemax").eval()
    for h, w in ((9, 9), (20, 31)):
        with torch.no_grad(), AttentionRecorder(layer) as rec:
            layer(torch.randn(1, h * w, 16), (h, w))
        weights = rec.last(rec.names[0]).weights  # [B, heads, N, 49]
        assert weights.shape[-2:] == (h * w, 49)
        assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)


def test_vit_encoder_taps_blocks_and_resamples_them_to_four_strides():
    """The map at stride s is the tapped block's normed tokens on the grid, 1x1-projected and
    resampled (transposed conv up, stride-2 3x3 convs down), cropped to ceil(H / s)."""
    from attnkit.models.dense.encoders.vit import ViTEncoder

    torch.manual_seed(1)
    enc = ViTEncoder((32, 48), patch_size=8, embed_dim=32, depth=4, num_heads=2).eval()
    assert enc.stage_idx == [0, 1, 2, 3] and enc.channels == [4, 8, 16, 32]
    images = torch.randn(2, 3, 30, 45)  # padded to 32 x 48 for the patches
    with torch.no_grad():
        maps = enc.forward_features(images)
        x = enc.patch_embed(F.pad(images, (0, 3, 0, 2))).permute(0, 2, 3, 1)  # [2, 4, 6, 32]
        x = x + enc.pos_embed  # the planned grid: no resizing
        for block in enc.blocks:  # up to stage_idx[3] = 3, the last tapped block
            x = block(x)
        tap = enc.norm(x).permute(0, 3, 1, 2)  # the fourth block's tokens, [2, 32, 4, 6]
        down = enc.resample[3]  # stride 8 -> 32: 1x1 conv, then two stride-2 3x3 convs
        expected = down[2](down[1](down[0](tap)))  # [2, 32, 1, 2]
    assert [tuple(m.shape[1:]) for m in maps] == [(4, 8, 12), (8, 4, 6), (16, 2, 3), (32, 1, 2)]
    assert torch.allclose(maps[3], expected, atol=1e-6)


def test_vit_encoder_resizes_its_position_embedding_to_other_grids():
    from attnkit.models.dense.encoders.vit import ViTEncoder

    enc = ViTEncoder((32, 32), patch_size=8, embed_dim=16, depth=4, num_heads=2)
    assert enc.position(4, 4) is enc.pos_embed
    wide = enc.position(4, 8)
    assert wide.shape == (1, 4, 8, 16)
    assert torch.allclose(wide.mean(), enc.pos_embed.mean(), atol=0.02)


def test_maxvit_encoder_maps_are_the_classifier_stage_maps():
    """The MaxViT encoder runs the classifier's stem and stages: the same weights give the same
    maps (its stride-2 stem map left out)."""
    from attnkit.models.dense.encoders.maxvit import maxvit_encoder
    from attnkit.models.maxvit.config import maxvit_variant
    from attnkit.models.maxvit.model import MaxViT

    torch.manual_seed(2)
    classifier = MaxViT(maxvit_variant("synth")).eval()
    enc = maxvit_encoder("synth").eval()
    state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("head.")}
    enc.model.load_state_dict(state)
    images = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        ours, theirs = enc.forward_features(images), classifier.forward_features(images)[1:]
    assert enc.channels == [32, 64, 128] and len(ours) == 3
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_fpn_head_by_hand():
    """Laterals, top-down nearest upsampling and addition, 3x3 conv + BN + ReLU, 1x1 predict."""
    from attnkit.models.dense.decoders.fpn import FPNHead

    torch.manual_seed(3)
    head = FPNHead([4, 6, 8], embed_dim=5, out_channels=2).eval()
    with torch.no_grad():
        head.smooth[1].running_mean.normal_()
        head.smooth[1].running_var.uniform_(0.5, 2.0)
        c = [torch.randn(1, 4, 8, 10), torch.randn(1, 6, 4, 5), torch.randn(1, 8, 2, 3)]
        lat = [F.conv2d(m, layer.weight, layer.bias) for m, layer in zip(c, head.lateral)]
        p3 = lat[2]
        p2 = lat[1] + p3.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :4, :5]
        p1 = lat[0] + p2.repeat_interleave(2, -2).repeat_interleave(2, -1)
        bn = head.smooth[1]
        y = F.conv2d(p1, head.smooth[0].weight, padding=1)
        y = (y - bn.running_mean[:, None, None]) / (bn.running_var[:, None, None] + bn.eps).sqrt()
        y = (y * bn.weight[:, None, None] + bn.bias[:, None, None]).relu()
        expected = F.conv2d(y, head.predict.weight, head.predict.bias)
        assert torch.allclose(head(c), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.encoder.name=maxvit", "model.attention.mechanism=window"], "must be native"),
        (["model.encoder.name=maxvit", "model.block.ffn=mix_ffn"], "must be native"),
        (["model.encoder.name=vit", "model.encoder.num_heads=[2,4]"], "has one entry"),
        (["model.encoder.patch_size=8"], "ViT encoder's patch side"),
        (["model.encoder.name=vit", "model.encoder.patch_size=6"], "4, 8, 16 or 32"),
    ],
)
def test_impossible_compositions_are_one_line_config_errors(repo_root, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(repo_root / BASE, overrides)


@pytest.mark.parametrize(("encoder", "decoder"), PAIRS)
def test_every_encoder_decoder_pair_trains_through_the_cli(repo_root, tmp_path, encoder, decoder):
    """Each pair trains a few steps by `attnkit train` on the synthetic height maps at 32 x 48
    (non-square): the training loss falls and the evaluation is finite."""
    from attnkit.cli import main

    config = repo_root / f"configs/dense/{ENCODER_CONFIGS[encoder]}.yaml"
    run = tmp_path / "run"
    overrides = [
        f"model.decoder.name={decoder}",
        "model.decoder.window=4",
        "model.img_size=[32,48]",
        "data.image_size=[32,48]",
        "data.num_train=32",
        "data.num_val=8",
        "data.batch_size=8",
        "data.num_workers=0",
        "train.epochs=3",
        "train.warmup_steps=1",
        "train.eval_every_epochs=3",
        "train.log_every_steps=1",
    ]
    args = ["train", "--config", str(config), "--out", str(run), "--quiet", *overrides]
    assert main(args) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3]), losses
    assert evals and evals[-1]["mae"] == evals[-1]["mae"]  # not NaN


@pytest.mark.parametrize("config", ["synth_swin_unet", "synth_maxvit_segformer"])
@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
def test_whole_model_prediction_does_not_depend_on_what_fills_the_window_padding(
    repo_root, monkeypatch, config, normalizer
):
    """At 44 x 60 pixels no map is a multiple of the window (or grid), so every window and grid
    attention of the model pads its map; with the padded keys masked out, filling the padding
    with 1000 instead of 0 leaves the prediction at every real pixel unchanged."""
    import attnkit.attention.partition as partition

    cfg = load_config(
        repo_root / f"configs/dense/{config}.yaml", [f"model.attention.normalizer={normalizer}"]
    )
    torch.manual_seed(4)
    model = build_model(cfg).eval()
    images = torch.randn(2, 3, 44, 60)
    with torch.no_grad():
        clean = model(images)
        fill = types.SimpleNamespace(pad=lambda x, p, *a, **k: F.pad(x, p, value=1e3))
        monkeypatch.setattr(partition, "F", fill)  # only the partition module's padding
        filled = model(images)
    assert clean.shape == (2, 1, 44, 60)
    assert torch.allclose(clean, filled, atol=1e-5)


@pytest.mark.parametrize(
    ("mechanism", "shifted"),
    [("native", [False, True]), ("window", [False, False]), ("shifted_window", [True, True])],
)
def test_swin_shifts_every_other_block_natively_never_with_window_always_with_shifted(
    repo_root, mechanism, shifted
):
    cfg = load_config(repo_root / BASE, [f"model.attention.mechanism={mechanism}"])
    stage = build_model(cfg).encoder.layers[0]
    assert [any(block.attn.shift) for block in stage.blocks] == shifted


def test_keys_outside_a_queries_shift_region_are_not_counted_as_zeros(repo_root):
    """In a shifted window a query may not see the tokens of the other regions (Swin's mask):
    softmax gives them exactly 0, but they were never candidates, so a softmax Swin's zeros
    ratio is 0 at every site and its support covers every key the query could see."""
    from attnkit.analysis.analyze import AttentionAnalysis
    from attnkit.data.dense import DenseBatch

    cfg = load_config(repo_root / BASE, ["model.attention.normalizer=softmax"])
    torch.manual_seed(5)
    model = build_model(cfg).eval()
    analysis = AttentionAnalysis(model)
    target = torch.zeros(2, 1, 64, 64)
    analysis.update(DenseBatch(torch.randn(2, 3, 64, 64), target, target > 0))
    zeros = analysis.summary()["zeros_ratio"]
    shifted = "encoder.layers.0.blocks.1.attn"
    assert set(zeros) >= {shifted, "encoder.layers.0.blocks.0.attn"}
    assert all(v["mean"] == 0.0 for v in zeros.values()), {k: v["mean"] for k, v in zeros.items()}

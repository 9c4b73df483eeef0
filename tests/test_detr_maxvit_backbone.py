"""attnkit's MaxViT as DETR's backbone (``maxvit:<variant>``) and the shapes_tiny_maxvit configs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.models.detr import Backbone
from attnkit.models.detr.backbone import valid_extent
from attnkit.models.detr.maxvit_backbone import MaxViTBody
from attnkit.models.maxvit import model as maxvit_model
from attnkit.models.maxvit.config import maxvit_variant
from attnkit.models.maxvit.mbconv import MBConv
from attnkit.tasks import build_criterion
from attnkit.train.optim import build_optimizer

SIZES = [(45, 70), (61, 50)]  # no side a multiple of the stride or of the 4x4 partitions


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def padded_batch(sizes, seed=0):
    """Random images of the given (h, w) sizes, padded bottom/right as the collate function."""
    g = torch.Generator().manual_seed(seed)
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, H, W)
    mask = torch.ones(len(sizes), H, W, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
        mask[i, :h, :w] = False
    return images, mask


def ceil_halvings(n: int, steps: int) -> int:
    for _ in range(steps):
        n = (n + 1) // 2
    return n


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize(
    ("variant", "stage", "index"), [("synth", -1, 3), ("synth", -2, 2), ("nano", -1, 4)]
)
def test_map_of_the_chosen_stage_and_its_padding_mask(variant, stage, index, mask_padding):
    torch.manual_seed(0)
    backbone = Backbone(f"maxvit:{variant}", stage=stage, mask_padding=mask_padding).eval()
    info = maxvit_model.MaxViT(maxvit_variant(variant)).feature_info[index]
    body = backbone.body
    assert isinstance(body, MaxViTBody)
    assert len(body.stages) == index and not hasattr(body, "head")  # later stages not built
    assert backbone.num_channels == info["num_chs"] and body.reduction == info["reduction"]
    images, mask = padded_batch(SIZES)
    with torch.no_grad():
        features, small = backbone(images, mask)
    steps = info["reduction"].bit_length() - 1
    h, w = ceil_halvings(images.shape[-2], steps), ceil_halvings(images.shape[-1], steps)
    assert features.shape == (2, info["num_chs"], h, w)
    assert small.shape == (2, h, w) and small.dtype == torch.bool
    assert torch.isfinite(features).all()
    if mask_padding:  # exact: each image's real cells
        for i, (hi, wi) in enumerate(SIZES):
            expected = torch.ones(h, w, dtype=torch.bool)
            expected[: ceil_halvings(hi, steps), : ceil_halvings(wi, steps)] = False
            assert torch.equal(small[i], expected)


def test_stage_dilation_and_variant_errors():
    with pytest.raises(ValueError, match="MaxViT has no dilated variant"):
        Backbone("maxvit:synth", dilation=True)
    for stem in (0, -4):
        with pytest.raises(ValueError, match="stem"):
            Backbone("maxvit:synth", stage=stem)
    with pytest.raises(ValueError, match="has stages -3..-1"):
        Backbone("maxvit:synth", stage=4)
    with pytest.raises(ValueError, match="unknown MaxViT variant.*synth"):
        Backbone("maxvit:huge")
    assert Backbone("maxvit:synth", stage=2).body.reduction == 8  # feature_info index


def test_freezing_rules():
    trained = Backbone("maxvit:synth")  # pretrained-style: frozen BN, stem + stage 1 frozen
    names = {n for n, p in trained.body.named_parameters() if p.requires_grad}
    frozen = {n for n, p in trained.body.named_parameters() if not p.requires_grad}
    assert {n.split(".blocks")[0] for n in names} == {"stages.1", "stages.2"}
    assert any(n.startswith("stem.") for n in frozen) and any(
        n.startswith("stages.0.") for n in frozen
    )
    assert not any(isinstance(m, nn.BatchNorm2d) for m in trained.modules())
    off = Backbone("maxvit:synth", train_backbone=False)
    assert not any(p.requires_grad for p in off.parameters())
    scratch = Backbone("maxvit:synth", from_scratch=True)
    assert all(p.requires_grad for p in scratch.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.modules())


def test_masked_padding_is_never_read_at_real_cells():
    """Noise written into the padded area of every block's output leaves the real cells alone
    with ``mask_padding`` (squeeze-excitation, which pools the padding too, removed), and
    changes them without it."""
    images, mask = padded_batch(SIZES)
    valid_h = (~mask).any(dim=2).sum(dim=1)  # [B]
    valid_w = (~mask).any(dim=1).sum(dim=1)  # [B]

    def real(h, w):  # [B, h, w]
        rows = torch.arange(h) < valid_extent(mask.shape[-2], valid_h, h)[:, None]
        cols = torch.arange(w) < valid_extent(mask.shape[-1], valid_w, w)[:, None]
        return rows[:, :, None] & cols[:, None, :]

    def add_noise(module, args, out):  # [B, C, h, w]
        noise = torch.randn_like(out) * 10
        return out + noise * ~real(*out.shape[-2:])[:, None]

    for mask_padding in (True, False):
        torch.manual_seed(0)
        backbone = Backbone("maxvit:synth", mask_padding=mask_padding).eval()
        for m in backbone.modules():
            if isinstance(m, MBConv):
                m.se = nn.Identity()
        with torch.no_grad():
            clean, small = backbone(images, mask)
            blocks = [backbone.body.stem, *(b for s in backbone.body.stages for b in s.blocks)]
            for block in blocks:
                block.register_forward_hook(add_noise)
            noisy, _ = backbone(images, mask)
            copied, _ = copy.deepcopy(backbone)(images, mask)  # hooks follow the copy
        keep = ~small[:, None].expand_as(clean)
        for out in (noisy, copied):
            same = torch.allclose(out[keep], clean[keep], atol=1e-5, rtol=0)
            assert same == mask_padding, mask_padding


def test_pretrained_maxvit_weights_load_minus_the_head_and_later_stages(tmp_path):
    torch.manual_seed(3)
    classifier = maxvit_model.MaxViT(maxvit_variant("synth"))
    state = classifier.state_dict()
    torch.save({"model": state, "epoch": 1}, tmp_path / "ckpt.pt")  # an `attnkit train` file
    backbone = Backbone("maxvit:synth", stage=-2, pretrained=tmp_path / "ckpt.pt")
    body = backbone.body
    torch.testing.assert_close(
        body.stages[1].blocks[1].attn_grid.attn.qkv.weight,
        classifier.stages[1].blocks[1].attn_grid.attn.qkv.weight,
    )
    torch.testing.assert_close(body.stem.norm1.running_var, classifier.stem.norm1.running_var)
    # timm's layout: tables indexed key - query (flipped on load), head.pre_logits.fc
    table = ".attn.relative_bias.table"
    timm = {
        k.replace(table, ".attn.rel_pos.relative_position_bias_table"): (
            v.flip(-2, -1) if k.endswith(table) else v
        )
        for k, v in state.items()
    }
    torch.save(timm, tmp_path / "timm.pth")
    body = Backbone("maxvit:synth", pretrained=tmp_path / "timm.pth", from_scratch=True).body
    torch.testing.assert_close(
        body.stages[2].blocks[0].attn_block.attn.relative_bias.table,
        classifier.stages[2].blocks[0].attn_block.attn.relative_bias.table,
    )
    torch.save(maxvit_model.MaxViT(maxvit_variant("nano")).state_dict(), tmp_path / "nano.pt")
    with pytest.raises(ValueError, match="does not fit"):
        Backbone("maxvit:synth", pretrained=tmp_path / "nano.pt")


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
def test_shapes_tiny_maxvit_config_trains(repo_root, normalizer):
    cfg = load_config(repo_root / f"configs/detr/shapes_tiny_maxvit_{normalizer}.yaml")
    assert cfg.model.backbone == "maxvit:synth" and cfg.model.backbone_from_scratch
    assert cfg.model.pretrained_backbone is None
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    assert model.backbone.body.reduction == 16  # the stride of tiny_cnn
    crosses = [layer.multihead_attn.normalizer for layer in model.transformer.decoder.layers]
    assert {getattr(n, "name", None) for n in crosses} == {normalizer}
    optimizer = build_optimizer(model, cfg.train)
    images, mask = padded_batch([(64, 80), (48, 96)])
    targets = [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7] * 4])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
    ]
    body = model.backbone.body
    before = body.stem.conv1.weight.detach().clone()
    model.train()
    for _ in range(2):
        loss = criterion(model(images, mask), targets)["loss"]
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        for part in (body.stem, *body.stages):
            grads = [p.grad for p in part.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
            assert any(g.abs().sum() > 0 for g in grads)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_max_norm)
        optimizer.step()
    assert not torch.equal(body.stem.conv1.weight, before)

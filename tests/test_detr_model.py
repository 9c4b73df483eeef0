"""DETR model: shapes, padding, every normalizer at every location, backbones, overfitting."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torchvision

from attnkit.attention import alpha_values, hooks
from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.models.detr import (
    DETR,
    Backbone,
    PositionEmbeddingSine,
    PostProcess,
)
from attnkit.tasks import build_criterion

TINY = {
    "model.backbone": "resnet18",
    "model.hidden_dim": 32,
    "model.num_heads": 4,
    "model.enc_layers": 1,
    "model.dec_layers": 2,
    "model.dim_feedforward": 64,
    "model.num_queries": 8,
    "model.num_classes": 6,
    "model.dropout": 0.0,
    "train.lr_backbone": 0.0,  # a frozen backbone keeps the backward passes cheap
}
HAS_TVMAX = importlib.util.find_spec("attnkit.attention.tvmax") is not None


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**overrides):
    return load_config(None, {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}})


def tiny_model(seed: int = 0, **overrides) -> DETR:
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**overrides))


def padded_batch(sizes, generator=None):
    """Random images of the given (h, w) sizes, padded bottom/right as the collate function."""
    H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
    images = torch.zeros(len(sizes), 3, H, W)
    mask = torch.ones(len(sizes), H, W, dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=generator)
        mask[i, :h, :w] = False
    return images, mask


def test_forward_shapes_on_non_square_padded_batch():
    model = tiny_model().eval()
    images, mask = padded_batch([(64, 96), (96, 64)])
    with torch.no_grad():
        out = model(images, mask)
    assert out["pred_logits"].shape == (2, 8, 7)
    assert out["pred_boxes"].shape == (2, 8, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == 1
    assert out["aux_outputs"][0]["pred_logits"].shape == (2, 8, 7)
    assert "aux_outputs" not in tiny_model(model__aux_loss=False)(images, mask)
    no_mask = model(images[:1, :, :64, :96])  # mask defaults to "no padding"
    assert no_mask["pred_logits"].shape == (1, 8, 7)


def test_position_encoding_ignores_padding_and_puts_rows_first():
    pe = PositionEmbeddingSine(8)
    small = torch.zeros(1, 3, 5, dtype=torch.bool)
    big = torch.ones(1, 6, 9, dtype=torch.bool)
    big[:, :3, :5] = False
    alone, padded = pe(small), pe(big)  # [1, 16, h, w]
    assert alone.shape == (1, 16, 3, 5)
    torch.testing.assert_close(padded[..., :3, :5], alone)
    # channel 0 = sin of the normalised row, channel 8 = sin of the normalised column
    rows = torch.arange(1, 4) / 3 * 2 * torch.pi
    cols = torch.arange(1, 6) / 5 * 2 * torch.pi
    torch.testing.assert_close(alone[0, 0, :, 0], rows.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(alone[0, 8, 0, :], cols.sin(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("small", [(64, 96), (70, 90)])
def test_outputs_do_not_depend_on_batch_padding(small):
    """An image gives the same detections alone and next to a larger image (pitfalls 4 and 9)."""
    model = tiny_model(model__backbone_mask_padding=True).eval()
    with torch.no_grad():  # realistic frozen-BN statistics, so padding would leak if unmasked
        for m in model.backbone.modules():
            if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d):
                m.bias.normal_(0, 0.3)
                m.running_mean.normal_(0, 0.2)
    g = torch.Generator().manual_seed(0)
    images, mask = padded_batch([small, (96, 128)], generator=g)
    h, w = small
    with torch.no_grad():
        alone = model(images[:1, :, :h, :w], mask[:1, :h, :w])
        batched = model(images, mask)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(batched[key][:1], alone[key], atol=1e-4, rtol=0)
    torch.testing.assert_close(
        batched["aux_outputs"][0]["pred_boxes"][:1],
        alone["aux_outputs"][0]["pred_boxes"],
        atol=1e-4,
        rtol=0,
    )


def test_backbone_mask_matches_feature_map():
    backbone = Backbone("resnet18", train_backbone=False).eval()
    images, mask = padded_batch([(64, 96), (96, 128)])
    features, small = backbone(images, mask)
    assert features.shape == (2, 512, 3, 4)
    assert small.shape == (2, 3, 4)
    assert small[0].sum() == 3 * 4 - 2 * 3 and not small[1].any()
    masked = Backbone("resnet18", mask_padding=True).eval()
    assert torch.equal(masked(images, mask)[1], small)


LOCATIONS = ("encoder", "decoder_self", "cross")
NORMALIZERS = ("softmax", "sparsemax", "entmax15", "alpha_entmax", "tvmax")


@pytest.mark.parametrize("location", LOCATIONS)
@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_every_normalizer_at_every_location_trains(normalizer, location):
    if normalizer == "tvmax" and not HAS_TVMAX:
        pytest.skip("attnkit.attention.tvmax is not there yet")
    cfg = tiny_cfg(**{f"model__attention__{location}": normalizer})
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    images, mask = padded_batch([(64, 64), (64, 96)])
    targets = [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7] * 4])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
    ]
    losses = criterion(model(images, mask), targets)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.transformer.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    alphas = alpha_values(model)
    if normalizer == "alpha_entmax":
        layers = 1 if location == "encoder" else 2
        assert len(alphas) == layers
        # The first decoder layer's self-attention attends over values that are all zero
        # (DETR's decoder input is zeros), so its weights, hence its alphas, get no gradient.
        dead = "transformer.decoder.layers.0.self_attn"
        for name, module in model.named_modules():
            if name in alphas:
                grad = module.normalizer.pre_alpha.grad
                assert (grad.abs().sum() == 0) if name == dead else (grad.abs().min() > 0), name
                torch.testing.assert_close(alphas[name], torch.full((4,), 1.5))
    else:
        assert alphas == {}


def test_alpha_init_and_key_grid_reach_the_attention():
    model = tiny_model(
        model__attention__cross="alpha_entmax", model__attention__alpha_init=1.2
    ).eval()
    alphas = alpha_values(model)
    assert sorted(alphas) == [f"transformer.decoder.layers.{i}.multihead_attn" for i in (0, 1)]
    torch.testing.assert_close(
        alphas["transformer.decoder.layers.0.multihead_attn"], torch.full((4,), 1.2)
    )

    seen = {}

    class Grabber:
        def observes(self, module):
            return True

        def __call__(self, module, weights, key_grid, key_padding_mask, meta):
            seen[names[module]] = (tuple(weights.shape), key_grid, key_padding_mask is not None)

    names = {m: n for n, m in model.named_modules()}
    grabber = Grabber()
    hooks.add_observer(grabber)
    try:
        images, mask = padded_batch([(64, 96), (96, 64)])
        with torch.no_grad():
            model(images, mask)
    finally:
        hooks.remove_observer(grabber)
    enc = seen["transformer.encoder.layers.0.self_attn"]
    cross = seen["transformer.decoder.layers.1.multihead_attn"]
    dec_self = seen["transformer.decoder.layers.0.self_attn"]
    assert enc == ((2, 4, 9, 9), (3, 3), True)
    assert cross == ((2, 4, 8, 9), (3, 3), True)
    assert dec_self == ((2, 4, 8, 8), None, False)


def test_images_with_zero_one_and_many_objects():
    cfg = tiny_cfg(model__num_queries=20)
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    images, mask = padded_batch([(64, 64), (64, 96), (96, 64)])
    many = torch.rand(15, 4) * 0.3 + 0.3
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.6]])},
        {"labels": torch.randint(1, 6, (15,)), "boxes": many},
    ]
    losses = criterion(model(images, mask), targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    empty = [{"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}] * 3
    losses = criterion(model(images, mask), empty)
    assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0
    losses["loss"].backward()


def test_backbone_freezing_follows_official_detr():
    trained = Backbone("resnet18", train_backbone=True)
    names = {n.split(".")[0] for n, p in trained.body.named_parameters() if p.requires_grad}
    assert names == {"layer2", "layer3", "layer4"}
    frozen = Backbone("resnet18", train_backbone=False)
    assert not any(p.requires_grad for p in frozen.parameters())
    assert not any(p.requires_grad for p in tiny_model().backbone.parameters())
    model = tiny_model(train__lr_backbone=1e-5)
    assert any(p.requires_grad for p in model.backbone.body.layer2.parameters())
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    bn = [m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn == []


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:efficientnet_b0"])
def test_timm_backbones(name):
    backbone = Backbone(name).eval()
    images, mask = padded_batch([(64, 96), (96, 64)])
    with torch.no_grad():
        features, small = backbone(images, mask)
    assert features.shape[:2] == (2, backbone.num_channels)
    assert small.shape == (2, *features.shape[-2:])
    trainable = [n for n, p in backbone.body.named_parameters() if p.requires_grad]
    frozen = [n for n, p in backbone.body.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    first = "layer1." if name == "timm:resnet18" else "blocks.1."
    assert any(n.startswith(first) for n in frozen)
    assert not any(n.startswith(first) for n in trainable)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def test_pretrained_backbone_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    backbone = Backbone("resnet18", pretrained=path)
    torch.testing.assert_close(backbone.body.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    torch.testing.assert_close(backbone.body.bn1.running_var, resnet.bn1.running_var)
    with pytest.raises(FileNotFoundError, match="no file at"):
        Backbone("resnet18", pretrained=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="does not fit"):
        Backbone("resnet34", pretrained=path)


def test_backbone_errors_and_dilation():
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        Backbone("resnet19")
    with pytest.raises(ValueError, match="dilation needs a bottleneck"):
        Backbone("resnet18", dilation=True)
    backbone = Backbone("resnet50", dilation=True, train_backbone=False).eval()
    with torch.no_grad():
        features, small = backbone(*padded_batch([(64, 96)]))
    assert features.shape == (1, 2048, 4, 6) and small.shape == (1, 4, 6)


def test_build_from_the_shapes_tiny_config(repo_root):
    cfg = load_config(repo_root / "configs/detr/shapes_tiny_alpha_entmax.yaml")
    model = build_model(cfg)
    assert model.num_queries == 20 and model.class_embed.out_features == 7
    assert len(model.transformer.encoder.layers) == 2
    assert len(alpha_values(model)) == 3
    criterion = build_criterion(cfg)
    assert criterion.weight_dict == {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
    assert criterion.eos_coef == 0.1
    sites = {m.site for m in model.modules() if getattr(m, "site", None)}
    assert {"encoder L2", "decoder L3 self", "decoder L3 cross"} <= sites


def test_postprocess_scales_boxes_to_the_original_size():
    logits = torch.tensor([[[0.0, 2.0, 0.0, 5.0], [3.0, 0.0, 1.0, 0.0]]])  # [1, 2, 3 + 1]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    targets = [{"orig_size": torch.tensor([200, 300])}]  # h, w
    (result,) = PostProcess()({"pred_logits": logits, "pred_boxes": boxes}, targets)
    prob = logits.softmax(-1)[0]
    torch.testing.assert_close(result["scores"], torch.stack([prob[0, 1], prob[1, 0]]))
    assert result["labels"].tolist() == [1, 0]  # the no-object class 3 never wins
    expected = torch.tensor([[120.0, 60.0, 180.0, 140.0], [0.0, 100.0, 150.0, 200.0]])
    torch.testing.assert_close(result["boxes"], expected)
    (same,) = PostProcess()(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[200, 300]])
    )
    torch.testing.assert_close(same["boxes"], expected)


def synthetic_batch():
    """Two images with coloured rectangles on grey, and their normalised cxcywh targets."""
    images = torch.full((2, 3, 64, 96), -0.5)
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, 48:, :] = True
    images[1, :, 48:] = 0
    boxes_px = [[(10, 8, 40, 30, 1), (50, 30, 90, 60, 2)], [(20, 10, 60, 40, 3)]]  # x0 y0 x1 y1 c
    sizes = [(64, 96), (48, 96)]
    targets = []
    for i, objects in enumerate(boxes_px):
        h, w = sizes[i]
        labels, boxes = [], []
        for x0, y0, x1, y1, c in objects:
            images[i, c - 1, y0:y1, x0:x1] = 2.0
            labels.append(c)
            boxes.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        targets.append({"labels": torch.tensor(labels), "boxes": torch.tensor(boxes)})
    return images, mask, targets


def test_tiny_detr_overfits_one_batch():
    """The loss falls to a quarter in 60 steps (it reaches ~7% there, ~2% after 150)."""
    cfg = tiny_cfg(model__hidden_dim=64, model__dim_feedforward=128)
    torch.manual_seed(0)
    model, criterion = build_model(cfg), build_criterion(cfg)
    images, mask, targets = synthetic_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-4)
    first = None
    for _ in range(60):
        loss = criterion(model(images, mask), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.1)
        optimizer.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < 0.25 * first, (first, float(loss.detach()))


def test_site_labels_name_a_maxvit_backbones_attention(repo_root):
    from attnkit.config import load_config
    from attnkit.models.detr.family import site_label

    cfg = load_config(repo_root / "configs/detr/shapes_tiny_maxvit_sparsemax.yaml", [])
    names = [n for n, _ in build_model(cfg).named_modules()]
    backbone = [n for n in names if n.startswith("backbone.") and n.endswith(".attn")]
    assert backbone and all(site_label(n) for n in backbone)
    assert site_label("backbone.body.stages.1.blocks.0.attn_grid.attn") == (
        "backbone stage 2 block 1 grid"
    )
    assert site_label("backbone.body.stem.conv") is None
    assert site_label("transformer.decoder.layers.2.multihead_attn") == "decoder L3 cross"

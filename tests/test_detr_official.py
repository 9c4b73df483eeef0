"""Loading official DETR state dicts: identical outputs, strict keys, refusal of other architectures.

The official weights cannot be downloaded here, so ``reference_detr.RefDETR`` (an independent
re-implementation of the official model structure on ``torch.nn.MultiheadAttention``) produces
state dicts with exactly the official key names.
"""

from __future__ import annotations

import pytest
import torch

from attnkit.config import load_config
from attnkit.models import build_model
from attnkit.models.detr import load_official_detr

from reference_detr import make_reference

ARCH = {
    "backbone": "resnet18",
    "hidden_dim": 32,
    "nheads": 4,
    "enc_layers": 1,
    "dec_layers": 2,
    "dim_feedforward": 64,
    "num_queries": 5,
    "num_classes": 6,
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and do not fight other processes for the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def attnkit_model(pre_norm=False, **changes):
    arch = {**ARCH, **changes}
    cfg = load_config(
        None,
        {
            "model.backbone": arch["backbone"],
            "model.hidden_dim": arch["hidden_dim"],
            "model.num_heads": arch["nheads"],
            "model.enc_layers": arch["enc_layers"],
            "model.dec_layers": arch["dec_layers"],
            "model.dim_feedforward": arch["dim_feedforward"],
            "model.num_queries": arch["num_queries"],
            "model.num_classes": arch["num_classes"],
            "model.pre_norm": pre_norm,
            "model.attention.cross": arch.get("cross", "softmax"),
        },
    )
    torch.manual_seed(123)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def padded_input():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 96, 128)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    images[0, :, :70, :90] = torch.randn(3, 70, 90, generator=g)
    mask[0, :70, :90] = False
    images[1] = torch.randn(3, 96, 128, generator=g)
    mask[1] = False
    return images, mask


@pytest.fixture(scope="module")
def post_norm_reference():
    return make_reference(**ARCH, pre_norm=False)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_official_weights_give_identical_outputs(pre_norm, padded_input, post_norm_reference):
    reference = post_norm_reference if not pre_norm else make_reference(**ARCH, pre_norm=True)
    state = reference.state_dict()
    assert ("transformer.encoder.norm.weight" in state) == pre_norm
    assert "backbone.0.body.bn1.running_mean" in state
    assert not any(k.endswith("num_batches_tracked") for k in state)
    model = attnkit_model(pre_norm=pre_norm)
    report = load_official_detr(model, state)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(state) == len(model.state_dict())
    assert report.adapted["backbone.0.body.layer1.0.conv1.weight"] == (
        "backbone.body.layer1.0.conv1.weight"
    )
    with torch.no_grad():
        expected = reference(*padded_input)
        got = model(*padded_input)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=0)
    for ours, theirs in zip(got["aux_outputs"], expected["aux_outputs"], strict=True):
        torch.testing.assert_close(ours["pred_boxes"], theirs["pred_boxes"], atol=1e-5, rtol=0)


def test_checkpoint_wrapper_and_path_are_accepted(tmp_path, post_norm_reference, padded_input):
    state = post_norm_reference.state_dict()
    path = tmp_path / "detr-official.pth"
    torch.save({"model": state, "epoch": 499}, path)
    from_path, from_wrapper = attnkit_model(), attnkit_model()
    load_official_detr(from_path, str(path))
    load_official_detr(from_wrapper, {"model": state})
    with torch.no_grad():
        a = from_path(*padded_input)["pred_boxes"]
        b = from_wrapper(*padded_input)["pred_boxes"]
        c = post_norm_reference(*padded_input)["pred_boxes"]
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)
    torch.testing.assert_close(b, c, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError):
        load_official_detr(attnkit_model(), tmp_path / "nothing.pth")


def test_attnkit_only_parameters_keep_their_init_and_are_reported(post_norm_reference):
    model = attnkit_model(cross="alpha_entmax")
    report = load_official_detr(model, post_norm_reference.state_dict())
    assert report.missing == [
        f"transformer.decoder.layers.{i}.multihead_attn.normalizer.pre_alpha" for i in (0, 1)
    ]
    assert "pre_alpha" in str(report)
    alpha = model.transformer.decoder.layers[1].multihead_attn.normalizer.alpha()
    torch.testing.assert_close(alpha, torch.full((4,), 1.5))


@pytest.mark.parametrize(
    ("model_kw", "named"),
    [
        ({"pre_norm": True}, "pre_norm: checkpoint False, model True"),
        ({"enc_layers": 2}, "enc_layers: checkpoint 1, model 2"),
        ({"dec_layers": 1}, "dec_layers: checkpoint 2, model 1"),
        ({"hidden_dim": 64}, "hidden_dim: checkpoint 32, model 64"),
        ({"num_classes": 91}, "num_classes: checkpoint 6, model 91"),
        ({"num_queries": 7}, "num_queries: checkpoint 5, model 7"),
        ({"backbone": "resnet34"}, "backbone: checkpoint 'resnet18', model 'resnet34'"),
    ],
)
def test_other_architectures_are_refused(model_kw, named, post_norm_reference):
    model = attnkit_model(**model_kw)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="different architecture") as err:
        load_official_detr(model, post_norm_reference.state_dict())
    assert named in str(err.value)
    if "pre_norm" in model_kw:
        assert "has no transformer.encoder.norm" in str(err.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # untouched


def test_pre_norm_checkpoint_into_post_norm_model_is_refused():
    reference = make_reference(**ARCH, pre_norm=True)
    with pytest.raises(ValueError, match="pre_norm: checkpoint True, model False"):
        load_official_detr(attnkit_model(pre_norm=False), reference.state_dict())


def test_unknown_or_missing_keys_are_refused(post_norm_reference):
    state = dict(post_norm_reference.state_dict())
    state["transformer.decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unused official keys \['transformer.decoder.extra"):
        load_official_detr(attnkit_model(), state)
    state = dict(post_norm_reference.state_dict())
    del state["input_proj.bias"]
    with pytest.raises(ValueError, match=r"no official value \['input_proj.bias'\]"):
        load_official_detr(attnkit_model(), state)
    with pytest.raises(ValueError, match="not an official DETR state dict"):
        load_official_detr(attnkit_model(), {"weight": torch.zeros(1)})

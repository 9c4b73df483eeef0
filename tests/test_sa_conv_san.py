"""SAN (Zhao, Jia & Koltun 2020): the SA module against a direct loop over pixels and footprint
positions (both modes, masked borders, dilation), every normalizer, the recorder's dense map,
the networks and their parameter counts."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from attnkit.analysis import AttentionRecorder
from attnkit.attention.normalizers import NORMALIZER_NAMES, Softmax, get_normalizer
from attnkit.models.sa_conv import san_net
from attnkit.models.sa_conv.san import SAM, SANBottleneck
from attnkit.models.sa_conv.san_net import SAN, build_san

B, C, H, W, K, SHARE = 2, 8, 5, 6, 3, 2  # G = C // SHARE = 4 weight channels


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-default BN statistics and affine parameters, sharper gamma outputs; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
        if isinstance(module, SAM):
            module.conv_w[-1].weight.mul_(4.0)
    return module.eval()


def _sam(mode: str, normalizer="softmax", dilation: int = 1, seed: int = 0) -> SAM:
    torch.manual_seed(seed)
    m = SAM(C, 2, C, SHARE, K, dilation=dilation, mode=mode, normalizer=normalizer)
    return _randomize(m, seed)


def _direct(m: SAM, x: torch.Tensor, normalizer: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAN formula one (image, query pixel, footprint position) at a time, in float64.

    Returns ``(y [B, C, H, W], weights [B, G, N, k^2])``; out-of-image positions are left out
    of the normalisation and get weight 0."""
    p = {n: t.detach().double() for n, t in m.state_dict().items()}
    x = x.double()

    def lin(z, name):  # a 1x1 conv on one pixel's channel vector
        out = p[f"{name}.weight"][:, :, 0, 0] @ z
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    def bn(z, name):
        var = p[f"{name}.running_var"] + m.conv_w[0].eps
        return (z - p[f"{name}.running_mean"]) / var.sqrt() * p[f"{name}.weight"] + p[
            f"{name}.bias"
        ]

    def gamma(z):
        z = lin(torch.relu(bn(z, "conv_w.0")), "conv_w.2")
        return lin(torch.relu(bn(z, "conv_w.3")), "conv_w.5")

    g, taps, k, d = m.weight_channels, K * K, K, m.dilation
    xs, ys = torch.linspace(-1, 1, W).double(), torch.linspace(-1, 1, H).double()
    y = torch.zeros(B, C, H, W, dtype=torch.float64)
    weights = torch.zeros(B, g, H * W, taps, dtype=torch.float64)
    for b in range(B):
        for r in range(H):
            for c in range(W):
                phi = lin(x[b, :, r, c], "conv1")
                keys = [(r + (t // k - k // 2) * d, c + (t % k - k // 2) * d) for t in range(taps)]
                inside = [0 <= jr < H and 0 <= jc < W for jr, jc in keys]
                scores = torch.zeros(g, taps, dtype=torch.float64)
                if m.mode == "pairwise":
                    for t, (jr, jc) in enumerate(keys):
                        if inside[t]:
                            delta = phi - lin(x[b, :, jr, jc], "conv2")
                            pos_i = torch.stack([xs[c], ys[r]])  # (x, y) as the reference
                            pos_j = torch.stack([xs[jc], ys[jr]])
                            enc = lin(pos_i, "conv_p") - lin(pos_j, "conv_p")
                            scores[:, t] = gamma(torch.cat([delta, enc]))
                else:
                    patch = torch.zeros(phi.shape[0], taps, dtype=torch.float64)  # psi = 0 out
                    for t, (jr, jc) in enumerate(keys):
                        if inside[t]:
                            patch[:, t] = lin(x[b, :, jr, jc], "conv2")
                    scores = gamma(torch.cat([phi, patch.flatten()])).view(g, taps)
                mask = torch.tensor(inside)
                for gi in range(g):
                    kept = scores[gi, mask]
                    if normalizer == "softmax":
                        kept = torch.softmax(kept, -1)
                    elif normalizer is not None:
                        kept = get_normalizer(normalizer)(kept)
                    weights[b, gi, r * W + c, mask] = kept
                for t, (jr, jc) in enumerate(keys):
                    if inside[t]:
                        wt = weights[b, torch.arange(C) % g, r * W + c, t]  # channel c: c % G
                        y[b, :, r, c] += wt * lin(x[b, :, jr, jc], "conv3")
    return y, weights


@pytest.mark.parametrize(
    ("mode", "normalizer", "dilation"),
    [
        ("pairwise", "softmax", 1),
        ("pairwise", "sparsemax", 1),
        ("pairwise", "softmax", 2),
        ("patchwise", "softmax", 1),
        ("patchwise", "entmax15", 1),
        ("patchwise", None, 1),
    ],
)
def test_sam_equals_direct_formula(mode, normalizer, dilation):
    m = _sam(mode, normalizer, dilation)
    x = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m(x)
        weights, index = m.attention(x)
    y_ref, w_ref = _direct(m, x, normalizer)
    torch.testing.assert_close(weights.double(), w_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, atol=1e-5, rtol=1e-5)
    assert index.shape == (H * W, K * K) and bool((index < 0).any())  # borders are masked


@pytest.mark.parametrize("mode", ["pairwise", "patchwise"])
@pytest.mark.parametrize("normalizer", NORMALIZER_NAMES)
def test_gradients_flow_for_every_normalizer(mode, normalizer):
    torch.manual_seed(0)
    m = SAM(C, 2, C, SHARE, K, mode=mode, normalizer=normalizer).train()
    x = torch.randn(B, C, H, W, requires_grad=True)
    y = m(x)
    assert y.shape == (B, C, H, W)
    (y * torch.randn_like(y)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name in ("conv1.weight", "conv2.weight", "conv3.weight", "conv_w.5.weight"):
        grad = m.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all(), name
    assert m.conv_w[-1].weight.grad.abs().sum() > 0
    if normalizer == "alpha_entmax":
        assert m.normalizer.pre_alpha.shape == (m.weight_channels,)
        assert m.normalizer.pre_alpha.grad.abs().sum() > 0


def test_sparsemax_gives_exact_zeros_inside_the_image():
    m = _sam("pairwise", "sparsemax")
    with torch.no_grad():
        weights, index = m.attention(torch.randn(B, C, H, W))
    inside = (index >= 0).expand_as(weights)
    assert bool((weights[inside] == 0).any())
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))


@pytest.mark.parametrize(("mode", "normalizer"), [("pairwise", "softmax"), ("patchwise", "tvmax")])
def test_recorded_dense_map_masks_borders(mode, normalizer):
    m = _sam(mode, normalizer)
    model = nn.Sequential(m)
    x = torch.randn(B, C, H, W)
    with AttentionRecorder(model) as rec, torch.no_grad():
        model(x)
    record = rec.last("0")
    dense = record.weights
    assert dense.shape == (B, m.weight_channels, H * W, H * W)
    assert record.key_grid == (H, W) and record.meta["layout"].kind == "grid"
    with torch.no_grad():
        weights, index = m.attention(x)
    # masked (out-of-image) footprint positions: weight exactly 0, no mass taken
    assert bool((weights[(index < 0).expand_as(weights)] == 0).all())
    torch.testing.assert_close(dense.sum(-1), torch.ones(B, m.weight_channels, H * W))
    expected = torch.zeros_like(dense)
    for q in range(H * W):
        for t in range(K * K):
            if index[q, t] >= 0:
                expected[:, :, q, index[q, t]] = weights[:, :, q, t]
    assert torch.equal(dense, expected)
    r, c = divmod(int(index[0, 8]), W)  # corner query (0, 0): last footprint tap is (1, 1)
    assert (r, c) == (1, 1) and int(index[0, 0]) == -1


def test_no_dense_map_without_recorder(monkeypatch):
    m = _sam("pairwise")
    monkeypatch.setattr(m, "dense_weights", lambda *a: pytest.fail("dense map built"))
    with torch.no_grad():
        m(torch.randn(B, C, H, W))


@pytest.mark.parametrize("mode", ["pairwise", "patchwise"])
def test_bfloat16_autocast_normalises_in_float32(mode):
    m = _sam(mode, "entmax15")
    x = torch.randn(B, C, H, W)
    with torch.no_grad():
        y32 = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = m(x)
            weights, _ = m.attention(x)
    assert weights.dtype == torch.float32
    assert torch.isfinite(y16).all()
    assert (y16.float() - y32).abs().max() < 0.1 * y32.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["pairwise", "patchwise"])
def test_cuda_matches_cpu(mode):
    m = _sam(mode, "sparsemax")
    x = torch.randn(B, C, H, W)
    with torch.no_grad():
        y_cpu = m(x)
        y_gpu = m.cuda()(x.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y_bf16 = m(x.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(y_bf16).all()


@pytest.mark.parametrize("mode", ["pairwise", "patchwise"])
def test_tiny_san_classifies_cifar_sized_images(mode):
    torch.manual_seed(0)
    model = build_san(mode, "tiny")
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert 20_000 < sum(p.numel() for p in model.parameters()) < 50_000


def test_every_sam_gets_its_own_normalizer():
    model = build_san("pairwise", "tiny", normalizer="alpha_entmax")
    sams = [m for m in model.modules() if isinstance(m, SAM)]
    assert len({id(s.normalizer) for s in sams}) == len(sams) == 3
    assert [s.normalizer.pre_alpha.numel() for s in sams] == [2, 4, 8]
    calls = []
    factory_model = build_san(
        "patchwise", "tiny", normalizer=lambda g: calls.append(g) or Softmax()
    )
    assert calls == [2, 4, 8]
    assert all(
        isinstance(m.normalizer, Softmax) for m in factory_model.modules() if isinstance(m, SAM)
    )


def test_docstring_parameter_counts_match_san10():
    counts = dict(re.findall(r'build_san\("(\w+)"\)``: ([\d.]+)M', san_net.__doc__))
    assert set(counts) == {"pairwise", "patchwise"}
    paper = {"pairwise": 10.5e6, "patchwise": 11.8e6}  # SAN10 at 1000 classes
    for mode, millions in counts.items():
        with torch.device("meta"):
            n10 = sum(p.numel() for p in build_san(mode).parameters())
            n1000 = sum(p.numel() for p in build_san(mode, num_classes=1000).parameters())
        assert abs(n10 - float(millions) * 1e6) < 0.01 * n10, (mode, n10)
        assert abs(n1000 - paper[mode]) < 0.01 * paper[mode], (mode, n1000)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SAM(8, 2, 8, mode="bogus"), "unknown SAN mode"),
        (lambda: SAM(8, 2, 8, share_planes=3), "multiple of share_planes"),
        (lambda: SAM(8, 2, 8, 2, kernel_size=4), "odd"),
        (lambda: SAM(8, 2, 8, 2, stride=2), "stride 1 only"),
        (lambda: SAM(8, 2, 8, 2, normalizer="softmaxx"), "unknown normalizer"),
        (lambda: SAM(8, 2, 8, 2)(torch.zeros(1, 4, 5, 5)), r"expects \[B, 8, H, W\]"),
        (lambda: SANBottleneck(16, 1, 4, 32, 2, 3), "identity shortcut"),
        (lambda: build_san("pairwise", "san11"), "unknown SAN layout 'san11'"),
        (lambda: build_san("pairwsie"), "unknown SAN mode 'pairwsie'"),
        (lambda: build_san("pairwise", "tiny", layers=(1, 1)), "one entry per stage"),
        (lambda: build_san("pairwise", "tiny", depth=3), "unknown SAN layout entries"),
        (lambda: build_san("pairwise", "tiny", planes=(24, 64, 128)), "multiple of 16"),
        (lambda: SAN("pairwise", normalizer=Softmax()), "not a module shared"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()

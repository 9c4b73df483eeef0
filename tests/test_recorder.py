"""AttentionRecorder: what it captures, filtering, streaming, and that it leaves no trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnkit.analysis import AttentionRecorder
from attnkit.analysis.recorder import AttentionRecord
from attnkit.attention import MultiheadAttention, hooks

E, H, B, Q = 16, 4, 2, 3
GRID = (2, 3)
K = GRID[0] * GRID[1]


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = MultiheadAttention(E, H)

    def forward(self, x, kpm):
        return x + self.attn(x, x, x, key_padding_mask=kpm, key_grid=GRID)[0]


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = MultiheadAttention(E, H, normalizer="entmax15")
        self.cross = MultiheadAttention(E, H, normalizer="sparsemax")

    def forward(self, tgt, memory, kpm):
        tgt = tgt + self.self_attn(tgt, tgt, tgt)[0]
        return tgt + self.cross(tgt, memory, memory, key_padding_mask=kpm, key_grid=GRID)[0]


class Toy(nn.Module):
    """A DETR-shaped toy: encoder self-attention over a 2x3 grid, decoder cross-attention."""

    def __init__(self):
        super().__init__()
        self.enc = Encoder()
        self.dec = Decoder()
        self.head = nn.Linear(E, 1)

    def forward(self, x, tgt, kpm):
        memory = self.enc(x, kpm)
        return self.head(self.dec(tgt, memory, kpm))


ALL = ["enc.attn", "dec.self_attn", "dec.cross"]


@pytest.fixture
def toy():
    torch.manual_seed(0)
    model = Toy().eval()
    g = torch.Generator().manual_seed(1)
    x, tgt = torch.randn(B, K, E, generator=g), torch.randn(B, Q, E, generator=g)
    kpm = torch.zeros(B, K, dtype=torch.bool)
    kpm[1, -1] = True
    return model, (x, tgt, kpm)


def _reference_weights(model, x, tgt, kpm):
    """Each module's weights, computed with need_weights=True by hand."""
    attn, dec = model.enc.attn, model.dec
    memory = x + attn(x, x, x, key_padding_mask=kpm)[0]
    w_enc = attn(x, x, x, key_padding_mask=kpm, need_weights=True)[1]
    t, w_self = dec.self_attn(tgt, tgt, tgt, need_weights=True)
    t = tgt + t
    w_cross = dec.cross(t, memory, memory, key_padding_mask=kpm, need_weights=True)[1]
    return {"enc.attn": w_enc, "dec.self_attn": w_self, "dec.cross": w_cross}


@pytest.fixture
def sdpa_calls(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


def test_records_every_module_with_its_name_and_exact_weights(toy):
    model, inputs = toy
    with torch.no_grad():
        expected = _reference_weights(model, *inputs)
        with AttentionRecorder(model) as rec:
            out = model(*inputs)
        plain = model(*inputs)
    assert rec.names == ALL and sorted(rec.records) == sorted(ALL)
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=0)
    for name in ALL:
        (record,) = rec.records[name]
        assert isinstance(record, AttentionRecord)
        assert record.name == name and record.call == 0
        # The recorder forces the explicit path on enc.attn, so memory differs by rounding.
        torch.testing.assert_close(record.weights, expected[name], atol=1e-6, rtol=0)
        assert rec.weights[name] is record.weights
    assert rec.last("enc.attn").key_grid == GRID
    assert rec.last("dec.self_attn").key_grid is None
    assert rec.last("dec.self_attn").key_padding_mask is None
    assert torch.equal(rec.last("dec.cross").key_padding_mask, inputs[2])
    assert rec.last("dec.cross").weights.shape == (B, H, Q, K)
    assert (rec.last("dec.cross").weights[1, ..., -1] == 0).all()  # padded key


@pytest.mark.parametrize(
    "include, names",
    [
        ("dec", ["dec.self_attn", "dec.cross"]),
        (["cross", "enc"], ["enc.attn", "dec.cross"]),
        ("*.attn", ["enc.attn"]),
        ("dec.[sc]*", ["dec.self_attn", "dec.cross"]),
        (lambda name: name.endswith("cross"), ["dec.cross"]),
    ],
)
def test_include_filters_module_names(toy, include, names):
    model, inputs = toy
    with torch.no_grad(), AttentionRecorder(model, include=include) as rec:
        model(*inputs)
    assert rec.names == names
    assert sorted(rec.records) == sorted(names)


def test_include_matching_nothing_is_an_error(toy):
    with pytest.raises(ValueError, match="matches none"):
        AttentionRecorder(toy[0], include="decoder")


def test_unwatched_modules_keep_the_fused_path(toy, sdpa_calls):
    model, inputs = toy
    with torch.no_grad():
        model(*inputs)
        assert len(sdpa_calls) == 1  # enc.attn is softmax: fused, no weights computed
        with AttentionRecorder(model, include="dec"):
            model(*inputs)
        assert len(sdpa_calls) == 2  # enc.attn not watched: still fused
        with AttentionRecorder(model, include="enc"):
            model(*inputs)
        assert len(sdpa_calls) == 2  # enc.attn watched: explicit path
        model(*inputs)
    assert len(sdpa_calls) == 3 and hooks.active_observers() == ()


def test_weights_are_not_computed_outside_a_recorder(toy, monkeypatch):
    model, inputs = toy
    calls = []
    norm = model.enc.attn.normalizer
    real = norm.forward
    monkeypatch.setattr(norm, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        model(*inputs)
        assert calls == []
        with AttentionRecorder(model, include="enc"):
            model(*inputs)
        assert calls == [1]
        model(*inputs)
    assert calls == [1]


def test_sink_streams_and_keeps_nothing(toy):
    model, inputs = toy
    received = []
    with torch.no_grad(), AttentionRecorder(model, sink=received.append) as rec:
        model(*inputs)
        model(*inputs)
    assert rec.records == {}
    assert [(r.name, r.call) for r in received] == [(n, c) for c in (0, 1) for n in ALL]
    with pytest.raises(KeyError, match="sink"):
        rec.last("enc.attn")
    torch.testing.assert_close(received[2].weights, received[5].weights)


def test_several_calls_are_kept_in_order_and_stacked(toy):
    model, (x, tgt, kpm) = toy
    with torch.no_grad(), AttentionRecorder(model, include="cross") as rec:
        model(x, tgt, kpm)
        model(x, tgt.flip(1), kpm)
    recs = rec.records["dec.cross"]
    assert [r.call for r in recs] == [0, 1]
    stacked = rec.stacked("dec.cross")
    assert stacked.shape == (2, B, H, Q, K)
    assert torch.equal(stacked[1], rec.last("dec.cross").weights)
    assert not torch.equal(stacked[0], stacked[1])
    with pytest.raises(KeyError, match="enc.attn"):
        rec.last("enc.attn")
    rec.clear()
    assert rec.records == {}


def test_to_cpu_dtype_and_detach(toy):
    model, inputs = toy
    with AttentionRecorder(model, dtype=torch.float16) as rec:
        model(*inputs)
    w = rec.last("dec.cross").weights
    assert w.dtype == torch.float16 and w.device.type == "cpu" and not w.requires_grad
    with AttentionRecorder(model, to_cpu=False, detach=False) as rec:
        model(*inputs)
    w = rec.last("dec.cross").weights
    assert w.dtype == torch.float32 and w.requires_grad
    w.sum().backward()
    assert model.dec.cross.in_proj_weight.grad is not None


def test_nested_recorders_both_record_and_reentry_is_an_error(toy):
    model, inputs = toy
    outer = AttentionRecorder(model, include="enc")
    with torch.no_grad(), outer:
        with AttentionRecorder(model) as inner:
            model(*inputs)
        model(*inputs)
        with pytest.raises(RuntimeError, match="already active"), outer:
            pass
    assert len(outer.records["enc.attn"]) == 2
    assert sorted(inner.records) == sorted(ALL) and len(inner.records["enc.attn"]) == 1
    assert torch.equal(inner.last("enc.attn").weights, outer.records["enc.attn"][0].weights)
    assert hooks.active_observers() == ()


def test_exit_on_exception_restores_the_fused_path(toy, sdpa_calls):
    model, inputs = toy
    rec = AttentionRecorder(model)
    with torch.no_grad(), pytest.raises(RuntimeError, match="boom"), rec:
        model(*inputs)
        raise RuntimeError("boom")
    assert hooks.active_observers() == () and not rec.observes(model.enc.attn)
    assert len(rec.records["enc.attn"]) == 1
    sdpa_calls.clear()
    with torch.no_grad():
        model(*inputs)
    assert len(sdpa_calls) == 1


def test_reentering_starts_fresh_records(toy):
    model, inputs = toy
    rec = AttentionRecorder(model, include="cross")
    with torch.no_grad():
        for _ in range(2):
            with rec:
                model(*inputs)
            assert len(rec.records["dec.cross"]) == 1 and rec.last("dec.cross").call == 0


def test_model_without_attention_modules_warns():
    with pytest.warns(UserWarning, match="no attnkit attention module"):
        rec = AttentionRecorder(nn.Sequential(nn.Linear(2, 2)))
    with rec:
        pass
    assert rec.records == {}


class WindowAttention(hooks.AttentionModule):
    """A stand-in for a future mixer: it follows the record protocol of attnkit.attention.hooks."""

    def forward(self, x):
        weights = torch.softmax(x @ x.transpose(-2, -1), dim=-1)  # [B * nW, 1, N, N]
        if self.observed():
            self.emit(weights, key_grid=(2, 2), windows=(1, 2))
        return weights @ x


def test_future_attention_modules_plug_in_through_the_hook_protocol():
    model = nn.Sequential(WindowAttention(), nn.Identity())
    x = torch.randn(2, 1, 4, 3)
    with AttentionRecorder(model) as rec:
        model(x)
    record = rec.last("0")
    assert record.meta == {"windows": (1, 2)} and record.key_grid == (2, 2)
    torch.testing.assert_close(record.weights, torch.softmax(x @ x.transpose(-2, -1), dim=-1))


def test_custom_observer_and_registry_errors(toy):
    model, inputs = toy
    seen = []

    class Observer:
        def observes(self, module):
            return module is model.dec.cross

        def __call__(self, module, weights, key_grid, key_padding_mask, meta):
            seen.append((module, weights.shape, key_grid))

    obs = Observer()
    hooks.add_observer(obs)
    try:
        with pytest.raises(RuntimeError, match="already registered"):
            hooks.add_observer(obs)
        with torch.no_grad():
            model(*inputs)
    finally:
        hooks.remove_observer(obs)
    assert seen == [(model.dec.cross, (B, H, Q, K), GRID)]
    assert hooks.active_observers() == ()
    with pytest.raises(TypeError):
        hooks.add_observer(object())

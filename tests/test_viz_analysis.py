"""Figures of training runs and attention analyses: curves, sparsity, PAIBB, alpha-entmax.

Each plotting function is drawn from small hand-made inputs (metrics.jsonl records, summaries,
records frames); the figure must not be blank and, where checkable, the plotted values must be
the inputs. The PAIBB gallery's recomputed maps must score what ``attnkit analyze`` recorded.
"""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from attnkit.analysis import compare  # noqa: E402
from attnkit.viz import alpha, curves, labels, paibb, sparsity, thesis_tables  # noqa: E402
from attnkit.viz.style import NORMALIZER_COLORS  # noqa: E402

from train_helpers import tiny_config  # noqa: E402

LAYERS = [f"transformer.decoder.layers.{i}.multihead_attn" for i in range(2)]
HEADS = 3


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def is_dots(collection) -> bool:
    return isinstance(collection, PathCollection)


def assert_not_blank(fig) -> np.ndarray:
    """Render ``fig``; its pixels must vary (something was drawn). Returns the RGB array."""
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    assert rgb.std() > 5, "the figure is blank"
    return rgb


# ---------------------------------------------------------------- hand-made inputs


def alpha_at(step: int, layer: int, head: int) -> float:
    return round(1.5 + 0.01 * step * (head - 1) + 0.1 * layer, 6)


def make_records(steps: int = 10, drop_after: int = 6) -> list[dict]:
    """A metrics.jsonl of ``steps`` logged train steps, an lr drop after step ``drop_after``,
    and eval records at steps 5 and 10."""
    records = []
    for s in range(1, steps + 1):
        lr = 1e-4 if s <= drop_after else 1e-5
        rec = {
            "kind": "train",
            "step": s,
            "epoch": (s - 1) // 5,
            "loss": 10.0 - s * 0.5,
            "loss_ce": 2.0 - s * 0.1,
            "loss_bbox": 1.0 + 0.01 * s,
            "loss_giou": 0.5,
            "lr/default": lr,
            "lr/backbone": lr / 10,
            "lr/alpha": lr * 10,
            "grad_norm/pre_alpha": 0.01 * s,
            "grad_norm/other": 100.0 / s,
            "grad_norm/total": 100.0 / s,
        }
        for i, layer in enumerate(LAYERS):
            rec[f"alpha/{layer}"] = [alpha_at(s, i, h) for h in range(HEADS)]
        records.append(rec)
        if s % 5 == 0:
            records.append({"kind": "eval", "step": s, "epoch": s // 5, "AP": 0.1 * s / 5})
            records[-1].update({"AP50": 0.2 * s / 5, "AP75": 0.05 * s / 5})
    return records


def stats(mean: float, per_head: list[float], count: int = 30) -> dict:
    return {"mean": mean, "std": 0.1, "count": count, "per_head": per_head}


def make_summary(offset: float) -> dict:
    """A summary.json of two layers and three heads; values shifted by ``offset``."""
    out: dict = {"meta": {}}
    for m, metric in enumerate(("gini", "zeros_ratio", "entropy", "paibb", "paibb_head_avg")):
        out[metric] = {}
        for i, layer in enumerate(LAYERS):
            heads = [offset + 0.05 * m + 0.1 * i + 0.02 * h for h in range(HEADS)]
            out[metric][layer] = stats(float(np.mean(heads)), heads)
    out["paibb_by_size"] = {
        layer: {
            b: stats(offset + 0.1 * k + 0.01 * i, [0.0] * HEADS, count=HEADS * (k + 1))
            for k, b in enumerate(("small", "medium", "large"))
        }
        for i, layer in enumerate(LAYERS)
    }
    return out


SUMMARIES = {"softmax": make_summary(0.1), "sparsemax": make_summary(0.5)}
BASELINE = {"softmax": make_summary(0.05), "sparsemax": make_summary(0.4)}


def make_map_records(models=("softmax", "sparsemax"), images=3, queries=4) -> pd.DataFrame:
    """records.parquet-like rows: every image x layer x head x query; query 0 and 1 matched."""
    rng = np.random.default_rng(0)
    frames = []
    for k, model in enumerate(models):
        idx = pd.MultiIndex.from_product(
            [range(1, images + 1), LAYERS, range(HEADS), range(queries)],
            names=["image_id", "layer", "head", "query"],
        )
        frame = idx.to_frame(index=False)
        n = len(frame)
        frame["gini"] = rng.uniform(0, 1, n) * (0.5 + 0.5 * k)
        frame["zeros_ratio"] = rng.uniform(0, 1, n)
        frame["entropy"] = rng.uniform(0, 3, n)
        frame["gt_index"] = np.where(frame["query"] < 2, frame["query"], -1)
        frame["paibb"] = np.where(frame["gt_index"] >= 0, rng.uniform(0, 1, n), np.nan)
        frame["size_bucket"] = np.where(frame["gt_index"] >= 0, "small", "")
        frames.append(frame.assign(model=model))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- labels


def test_layer_labels_and_model_colours():
    assert labels.layer_label("transformer.decoder.layers.2.multihead_attn") == "layer 3"
    assert labels.layer_label("transformer.decoder.layers.0.self_attn") == "layer 1 self"
    assert labels.layer_label("transformer.encoder.layers.1.self_attn") == "enc layer 2"
    assert labels.layer_label("backbone.attn") == "backbone.attn"
    maxvit = [
        "stages.2.blocks.0.attn_grid.attn",
        "stages.1.blocks.1.attn_block.attn",
        "stages.1.blocks.0.attn_grid.attn",
        "stages.1.blocks.0.attn_block.attn",
    ]
    assert [labels.layer_label(n) for n in labels.sort_layers(maxvit)] == [
        "stage 2 block 1 block",
        "stage 2 block 1 grid",
        "stage 2 block 2 block",
        "stage 3 block 1 grid",
    ]
    names = [
        "transformer.decoder.layers.10.multihead_attn",
        "transformer.decoder.layers.2.multihead_attn",
        "transformer.decoder.layers.2.self_attn",
        "transformer.encoder.layers.0.self_attn",
    ]
    assert labels.sort_layers(names) == [names[3], names[2], names[1], names[0]]
    assert list(labels.layer_labels(names).values()) == [
        "enc layer 1",
        "layer 3 self",
        "layer 3",
        "layer 11",
    ]
    assert labels.normalizer_of("alpha_entmax (random init)") == "alpha_entmax"
    assert labels.normalizer_of("entmax15") == "entmax15"
    assert labels.normalizer_of("my run") is None
    assert labels.model_color("sparsemax, lr 1e-4") == NORMALIZER_COLORS["sparsemax"]
    assert labels.normalizer_label("alpha_entmax (random init)") == "α-entmax (random init)"
    colors = labels.model_colors(["a", "b", "softmax"])
    assert colors["a"] != colors["b"] and colors["softmax"] == NORMALIZER_COLORS["softmax"]


# ---------------------------------------------------------------- curves


def test_lr_drop_and_smoothing():
    records = make_records(drop_after=6)
    assert curves.lr_drop_steps(records) == [7]
    assert curves.lr_drop_steps(records, "alpha") == [7]
    assert curves.lr_drop_steps(make_records(drop_after=99)) == []
    cosine = [
        {
            "kind": "train",
            "step": s,
            "epoch": 0,
            "lr/default": 1e-4 * (1 + math.cos(math.pi * s / 130)),
        }
        for s in range(4, 129, 4)
    ]
    assert curves.lr_drop_steps(cosine) == []  # a gradual decay is not a drop
    x = np.array([1.0, 2.0, 3.0])
    assert np.array_equal(curves.smooth(x, 0.0), x)
    assert np.allclose(curves.smooth([4.0] * 5, 0.9), 4.0)  # debiased: no ramp from 0
    assert curves.smooth([0.0, 10.0], 0.5)[1] == pytest.approx(10 * 0.5 / 0.75)
    with pytest.raises(ValueError):
        curves.smooth(x, 1.0)


def test_metrics_frame_and_load_runs(tmp_path):
    records = make_records()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = curves.load_runs({"from dir": tmp_path, "from file": tmp_path / "metrics.jsonl"})
    assert runs["from dir"] == records == runs["from file"]
    train = curves.metrics_frame(records + [dict(records[0], loss=-1.0)])
    assert len(train) == 10 and train["loss"].iloc[0] == -1.0  # a repeated step: last wins
    assert not any(c.startswith("alpha/") for c in train)
    assert curves.metrics_frame(records, "eval")["AP"].tolist() == [0.1, 0.2]


def test_loss_curves_plot_the_logged_values_with_normalizer_colours():
    records = make_records()
    fig = curves.plot_loss_curves({"sparsemax": records, "softmax": records[:7]})
    assert_not_blank(fig)
    ax = fig.axes[0]
    assert ax.get_title() == "total loss"
    data = [line for line in ax.lines if len(line.get_xdata()) > 2]
    assert [to_hex(line.get_color()) for line in data] == [
        NORMALIZER_COLORS["sparsemax"].lower(),
        NORMALIZER_COLORS["softmax"].lower(),
    ]
    assert list(data[0].get_ydata()) == [r["loss"] for r in records if r["kind"] == "train"]
    assert list(data[1].get_xdata()) == list(range(1, 7))
    drops = [line for line in ax.lines if len(set(line.get_xdata())) == 1]
    assert [line.get_xdata()[0] for line in drops] == [7]  # only sparsemax ran past the drop
    long_run = [dict(r, step=25 * r["step"]) for r in records]  # steps 25..250: crowded ticks
    step_axis = curves.plot_loss_curves(long_run).axes[0]
    lo, hi = step_axis.get_xlim()
    ticks = [t for t in step_axis.get_xticks() if lo <= t <= hi]
    assert 2 <= len(ticks) <= 5 and all(float(t).is_integer() for t in ticks)
    smoothed = curves.plot_loss_curves(records, smoothing=0.8, components=["loss_ce"])
    assert len(smoothed.axes) == 1 and len(smoothed.axes[0].lines) >= 2  # raw + smoothed
    with pytest.raises(ValueError):
        curves.plot_loss_curves(records, components=["nope"])


def test_ap_curves_and_final_table():
    records = make_records()
    no_eval = [r for r in records if r["kind"] == "train"]
    fig = curves.plot_ap_curves({"entmax15": records, "x": no_eval})
    assert_not_blank(fig)
    assert [ax.get_title() for ax in fig.axes] == list(curves.AP_METRICS)
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [5, 10] and list(line.get_ydata()) == [0.1, 0.2]
    assert to_hex(line.get_color()) == NORMALIZER_COLORS["entmax15"].lower()
    one = curves.plot_ap_curves({"entmax15": records})  # one run: one panel, a line per metric
    assert len(one.axes) == 1
    assert [line.get_label() for line in one.axes[0].lines[:3]] == list(curves.AP_METRICS)
    assert list(one.axes[0].lines[1].get_ydata()) == [0.2, 0.4]  # AP50
    assert_not_blank(curves.plot_ap_curves({"x": no_eval}))  # says so instead of failing
    table = curves.final_metrics_table({"entmax15": records, "x": no_eval})
    assert table.loc["entmax15", "AP"] == 0.2 and table.loc["entmax15", "steps"] == 10
    assert math.isnan(table.loc["x", "AP"]) and table.loc["x", "final loss"] == 5.0


# ---------------------------------------------------------------- sparsity


def test_bar_heights_are_the_layer_means_and_dots_the_heads():
    fig = sparsity.plot_metric_by_layer(SUMMARIES, "gini", BASELINE)
    assert_not_blank(fig)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    expected = [SUMMARIES[m]["gini"][layer]["mean"] for m in SUMMARIES for layer in LAYERS]
    assert heights == pytest.approx(expected)
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if is_dots(c)])
    heads = [
        v for m in SUMMARIES for layer in LAYERS for v in SUMMARIES[m]["gini"][layer]["per_head"]
    ]
    assert sorted(dots) == pytest.approx(sorted(heads))
    ticks = [seg[0][1] for c in ax.collections if not is_dots(c) for seg in c.get_segments()]
    base = [BASELINE[m]["gini"][layer]["mean"] for m in BASELINE for layer in LAYERS]
    assert sorted(ticks) == pytest.approx(sorted(base))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layer 1", "layer 2"]


def test_layer_and_head_frames():
    frame = sparsity.layer_frame(SUMMARIES, "entropy")
    assert list(frame["label"]) == ["layer 1", "layer 2"] * 2
    heads = sparsity.head_frame(SUMMARIES, "entropy")
    assert len(heads) == 2 * len(LAYERS) * HEADS
    assert heads["value"].iloc[0] == SUMMARIES["softmax"]["entropy"][LAYERS[0]]["per_head"][0]
    both = sparsity.with_baseline(SUMMARIES, BASELINE)
    assert list(both) == [
        "softmax",
        "softmax (random init)",
        "sparsemax",
        "sparsemax (random init)",
    ]


def test_overview_and_head_heatmap():
    assert_not_blank(sparsity.plot_sparsity_overview(SUMMARIES, BASELINE))
    fig = sparsity.plot_head_heatmap(SUMMARIES, "zeros_ratio", BASELINE)
    assert_not_blank(fig)
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (4, len(LAYERS) * HEADS)
    row = [v for layer in LAYERS for v in BASELINE["sparsemax"]["zeros_ratio"][layer]["per_head"]]
    assert np.asarray(grid[3]) == pytest.approx(row)  # sparsemax's random init, 4th row
    assert_not_blank(sparsity.plot_head_heatmap(SUMMARIES, "entropy", annotate=False))


def test_distributions_and_record_loading(tmp_path):
    records = make_map_records()
    softmax = records[records.model == "softmax"].drop(columns="model")
    softmax.to_parquet(tmp_path / "records.parquet")
    loaded = compare.load_records(
        {"softmax": tmp_path, "sparsemax (random init)": records[records.model == "sparsemax"]},
        max_rows=20,
    )
    assert set(loaded.columns) == {"layer", "head", "gini", "zeros_ratio", "entropy", "model"}
    assert loaded.groupby("model").size().tolist() == [20, 20]
    fig = sparsity.plot_metric_distribution(records, "gini")
    assert_not_blank(fig)
    line = fig.axes[0].lines[0]  # softmax, layer 1: the ECDF of its values
    values = records[(records.model == "softmax") & (records.layer == LAYERS[0])]["gini"]
    assert np.array_equal(line.get_xdata(), np.sort(values))
    assert line.get_ydata()[-1] == 1.0
    assert_not_blank(sparsity.plot_metric_distribution(loaded, "gini"))
    assert_not_blank(sparsity.plot_metric_distribution(records, "entropy", kind="violin"))
    with pytest.raises(ValueError):
        sparsity.plot_metric_distribution(records, kind="box")


def test_export_tables(tmp_path):
    summaries = {"alpha_entmax": SUMMARIES["softmax"], "sparsemax": SUMMARIES["sparsemax"]}
    tables = thesis_tables.export_tables(summaries, ["gini", "zeros_ratio"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gini.md",
        "gini.tex",
        "zeros_ratio.md",
        "zeros_ratio.tex",
    ]
    md = (tmp_path / "gini.md").read_text()
    assert "| α-entmax |" in md and "layer 2" in md
    mean = SUMMARIES["sparsemax"]["gini"][LAYERS[1]]["mean"]
    assert f"{mean:.3f} ± 0.100" in md
    assert r"$\alpha$-entmax" in (tmp_path / "gini.tex").read_text()
    assert list(tables["gini"].columns) == ["layer 1", "layer 2"]


# ---------------------------------------------------------------- PAIBB


def test_paibb_by_layer_by_size_and_heads():
    fig = paibb.plot_paibb_by_layer(SUMMARIES)
    assert_not_blank(fig)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(
        [SUMMARIES[m]["paibb"][layer]["mean"] for m in SUMMARIES for layer in LAYERS]
    )
    diamonds = [c for c in ax.collections if c.get_label() == "head-averaged maps"][0]
    expected = [SUMMARIES["softmax"]["paibb_head_avg"][layer]["mean"] for layer in LAYERS]
    assert list(diamonds.get_offsets()[:, 1]) == pytest.approx(expected)
    fig = paibb.plot_paibb_by_size(SUMMARIES)
    assert_not_blank(fig)
    first = fig.axes[0]
    by_size = SUMMARIES["softmax"]["paibb_by_size"][LAYERS[0]]
    bars = [p.get_height() for p in first.patches][:3]
    assert bars == pytest.approx([by_size[b]["mean"] for b in ("small", "medium", "large")])
    ticks = [t.get_text() for t in first.get_xticklabels()]
    assert ticks == ["small\n(n=1)", "medium\n(n=2)", "large\n(n=3)"]
    assert_not_blank(paibb.plot_paibb_heads(SUMMARIES))


def test_zero_paibb_table_and_lowest_cases():
    records = make_map_records()
    records.loc[records.index[:2], "paibb"] = 0.0  # softmax, image 1, layer 1, head 0, q 0/1
    table = paibb.zero_paibb_table(records)
    assert table.loc[("softmax", "layer 1"), "PAIBB = 0"] == pytest.approx(2 / 18)
    assert table.loc[("softmax", "layer 1"), "matched maps"] == 3 * HEADS * 2
    mine = records[records.model == "softmax"]
    cases = paibb.lowest_paibb_cases(mine, n=5)
    assert list(cases.columns) == paibb.GALLERY_COLUMNS
    assert cases["paibb"].is_monotonic_increasing
    assert not cases.duplicated(["image_id", "gt_index"]).any()
    assert cases["paibb"].iloc[0] == 0.0
    assert len(paibb.lowest_paibb_cases(mine, n=5, zero_only=True)) == 2
    layer2 = paibb.lowest_paibb_cases(mine, n=50, layer=LAYERS[1], one_per_object=False)
    assert len(layer2) == 3 * HEADS * 2 and set(layer2.layer) == {LAYERS[1]}


def test_gallery_of_given_maps():
    yy, xx = np.mgrid[0:40, 0:60]
    case = {
        "image_id": 7,
        "layer": LAYERS[1],
        "head": 2,
        "query": 3,
        "gt_index": 0,
        "size_bucket": "small",
        "paibb": 0.0,
        "label": "star",
        "image": np.full((40, 60, 3), 200, dtype=np.uint8),
        "map": np.exp(-((xx - 45.0) ** 2 + (yy - 20.0) ** 2) / 30),
        "box": np.array([2.0, 3.0, 20.0, 30.0]),
    }
    fig = paibb.plot_paibb_gallery([case, case, case], ncols=2, title="worst")
    assert_not_blank(fig)
    assert "PAIBB 0.000 (small)" in fig.axes[0].get_title()
    assert "layer 2 h2 q3" in fig.axes[0].get_title()
    assert paibb.plot_paibb_gallery([]).axes[0].texts[0].get_text() == "no case"


def _tiny_checkpoint(tmp_path, normalizer="sparsemax"):
    from attnkit.config import config_to_dict
    from attnkit.models import build_model

    cfg = tiny_config(
        **{
            "model.attention.cross": normalizer,
            "model.backbone_mask_padding": True,
            "data.num_val": 3,
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    for name, p in model.named_parameters():
        if name.endswith("pre_alpha"):
            with torch.no_grad():
                p.copy_(torch.linspace(-1, 1, p.numel()))
    path = tmp_path / f"{normalizer}.pt"
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg)}, path)
    return path


def test_gallery_maps_score_what_analyze_recorded(tmp_path):
    """The gallery recomputes each case alone (no batch padding); the PAIBB of the drawn map is
    the one recorded with batch 2 (pitfalls 4, 9), and the analysis is reused when unchanged."""
    torch.set_num_threads(1)
    ckpt = _tiny_checkpoint(tmp_path)
    folders = compare.analyze_models({"sparsemax": ckpt}, tmp_path / "an", batch_size=2)
    rand = compare.analyze_models({"sparsemax": ckpt}, tmp_path / "an", random_init=True)
    assert folders["sparsemax"].name == "sparsemax"
    assert rand["sparsemax"].name == "sparsemax_random_init"
    summary = json.loads((folders["sparsemax"] / "summary.json").read_text())
    assert summary["meta"]["images"] == 3
    stamp = (folders["sparsemax"] / "summary.json").stat().st_mtime_ns
    compare.analyze_models({"sparsemax": ckpt}, tmp_path / "an", batch_size=2)
    assert (folders["sparsemax"] / "summary.json").stat().st_mtime_ns == stamp  # reused
    records = pd.read_parquet(folders["sparsemax"] / "records.parquet")
    cases = paibb.lowest_paibb_cases(records, n=3, layer=LAYERS[1])
    shown = paibb.cases_from_checkpoint(ckpt, cases)
    assert [c["query"] for c in shown] == cases["query"].tolist()
    for case in shown:
        assert case["paibb"] == pytest.approx(case["recorded_paibb"], abs=1e-4)
        assert case["map"].shape == case["image"].shape[:2]
        assert case["map"].sum() > 0 and case["label"]
    assert_not_blank(paibb.plot_paibb_gallery(shown))


# ---------------------------------------------------------------- alpha-entmax


def test_alpha_history_from_records():
    records = make_records(steps=4)
    records.append({"kind": "eval", "step": 4, "AP": 0.0})
    records.append(dict(records[0], **{f"alpha/{LAYERS[0]}": [9.0, 9.0, 9.0]}))  # step 1 again
    history = alpha.alpha_history(records)
    assert list(history.columns) == ["step", "layer", "head", "alpha"]
    assert len(history) == 4 * len(LAYERS) * HEADS
    assert history["layer"].iloc[0] == LAYERS[0] and history["layer"].iloc[-1] == LAYERS[1]
    for row in history.itertuples():
        expected = 9.0 if (row.step, row.layer) == (1, LAYERS[0]) else None
        i = LAYERS.index(row.layer)
        assert row.alpha == (expected or alpha_at(row.step, i, row.head))
    empty = alpha.alpha_history([{"kind": "train", "step": 1, "loss": 1.0}])
    assert empty.empty and list(empty.columns) == ["step", "layer", "head", "alpha"]
    final = alpha.final_alphas(history)
    assert len(final) == len(LAYERS) * HEADS
    assert final["alpha"].iloc[-1] == alpha_at(4, 1, HEADS - 1)


def test_final_alphas_from_a_checkpoint(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path, "alpha_entmax")
    final = alpha.final_alphas(ckpt)
    assert list(final["layer"]) == [name for name in LAYERS for _ in range(2)]  # 2 heads
    expected = (1 + torch.sigmoid(torch.linspace(-1, 1, 2))).clamp(1.01, 2).tolist()
    assert final["alpha"].tolist() == pytest.approx(expected * 2, abs=1e-6)


def test_alpha_figures():
    records = make_records()
    history = alpha.alpha_history(records)
    drops = curves.lr_drop_steps(records)
    fig = alpha.plot_alpha_heatmap(history, drops)
    assert_not_blank(fig)
    mesh = fig.axes[0].collections[0].get_array().reshape(len(LAYERS) * HEADS, 10)
    assert list(mesh[HEADS + 2]) == pytest.approx([alpha_at(s, 1, 2) for s in range(1, 11)])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["layer 1", "layer 2"]
    fig = alpha.plot_alpha_curves(history, drops)
    assert_not_blank(fig)
    assert len(fig.axes[0].lines) == HEADS + 2  # heads, 1.5 reference, lr drop
    assert list(fig.axes[1].lines[0].get_ydata()) == [alpha_at(s, 1, 0) for s in range(1, 11)]
    fig = alpha.plot_alpha_final(alpha.final_alphas(history))
    assert_not_blank(fig)
    dots = sorted(c.get_offsets()[0, 1] for c in fig.axes[0].collections if is_dots(c))
    assert dots == pytest.approx(sorted(alpha_at(10, i, h) for i in range(2) for h in range(HEADS)))
    with pytest.raises(ValueError):
        alpha.plot_alpha_heatmap(history.iloc[:0])


def test_grad_norms_and_lr_drop_effect():
    records = make_records()
    fig = alpha.plot_grad_norms(records)
    assert_not_blank(fig)
    top = fig.axes[0]
    assert top.get_yscale() == "log"
    series = {line.get_label(): line for line in top.lines if not line.get_label().startswith("_")}
    assert list(series["pre_alpha"].get_ydata()) == [0.01 * s for s in range(1, 11)]
    assert [line.get_xdata()[0] for line in top.lines if len(set(line.get_xdata())) == 1] == [7]
    assert fig.axes[1].get_ylabel() == "lr"
    with pytest.raises(ValueError):
        alpha.plot_grad_norms([{"kind": "train", "step": 1, "loss": 1.0}])
    table = alpha.alpha_change_table(alpha.alpha_history(records), 7)
    assert list(table.index) == ["layer 1", "layer 2"]
    # |d alpha| per step = 0.01 * |head - 1|: mean over heads 0, 1, 2 = 0.02 / 3, before and after
    assert table.loc["layer 1", "before"] == pytest.approx(0.02 / 3)
    assert table.loc["layer 2", "ratio"] == pytest.approx(1.0)
    whole = alpha.alpha_change_table(alpha.alpha_history(records), None)
    assert math.isnan(whole.loc["layer 1", "after"])


def test_alpha_notebook_runs_on_a_given_log(tmp_path, repo_root):
    """Notebook 06's glue on a hand-made training log (no checkpoint): figures and tables."""
    import papermill

    from attnkit.workbook import default_kernel

    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in make_records()))
    figures, out = tmp_path / "figures", tmp_path / "out"
    papermill.execute_notebook(
        str(repo_root / "notebooks" / "detr" / "06_alpha_entmax.ipynb"),
        str(tmp_path / "06.ipynb"),
        parameters={"run": str(log), "figures_dir": str(figures), "run_dir": str(out)},
        kernel_name=default_kernel(),
        cwd=str(repo_root / "notebooks" / "detr"),
        progress_bar=False,
    )
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "06_alpha_curves.png",
        "06_alpha_final.png",
        "06_alpha_heatmap.png",
        "06_grad_norms.png",
    ]
    final = (out / "final_alpha.md").read_text()
    assert f"| layer 2 | {alpha_at(10, 1, 0):.3f} |" in final
    assert "| layer 1 |" in (out / "alpha_lr_drop.md").read_text()

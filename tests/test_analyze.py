"""`attnkit analyze`: streamed metrics per layer and head, PAIBB on matched pairs, invariances."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from attnkit.analysis.run_analysis import run_analysis
from attnkit.cli import main
from attnkit.train.loop import train

from train_helpers import TINY, tiny_config

SMALL = {k: v for k, v in TINY.items() if not k.startswith("train.")}
SMALL["model.backbone_mask_padding"] = True


def overrides(**extra):
    return [f"{k}={json.dumps(v)}" for k, v in {**SMALL, **extra}.items()]


def analyze_random(tmp_path, normalizer, batch_size=4, **extra):
    return run_analysis(
        tmp_path / f"{normalizer}_{batch_size}",
        config="configs/detr/shapes_tiny_softmax.yaml",
        random_init=True,
        overrides=overrides(**{"model.attention.cross": normalizer}, **extra),
        batch_size=batch_size,
        progress=False,
    )


def test_random_init_zeros_ratio_orders_sparsemax_entmax_softmax(tmp_path):
    means = {}
    for name in ("softmax", "entmax15", "sparsemax"):
        summary = analyze_random(tmp_path, name)
        layers = summary["zeros_ratio"]
        assert len(layers) == 2  # one entry per decoder layer's cross-attention
        means[name] = [layers[k]["mean"] for k in sorted(layers)]
    for layer in range(2):
        assert means["sparsemax"][layer] > means["entmax15"][layer] > means["softmax"][layer]
    assert means["softmax"] == [0.0, 0.0]  # no softmax weight is <= 1e-6 at random init


def test_summary_and_records_agree_and_cover_every_query(tmp_path):
    summary = analyze_random(tmp_path, "sparsemax")
    out = tmp_path / "sparsemax_4"
    records = pd.read_parquet(out / "records.parquet")
    on_disk = json.loads((out / "summary.json").read_text())
    assert set(on_disk) >= {"gini", "zeros_ratio", "entropy", "paibb", "paibb_by_size", "meta"}
    heads, queries, images = 2, 6, 4
    layer = "transformer.decoder.layers.1.multihead_attn"
    rows = records[records.layer == layer]
    assert len(rows) == images * heads * queries  # all queries, not only detections (pitfall 3)
    stats = summary["gini"][layer]
    assert len(stats["per_head"]) == heads  # per head (pitfall 2)
    assert stats["mean"] == pytest.approx(rows.gini.mean(), abs=1e-6)
    per_head = rows.groupby("head").gini.mean().tolist()
    assert stats["per_head"] == pytest.approx(per_head, abs=1e-6)
    matched = rows[rows.gt_index >= 0]
    assert len(matched) > 0 and matched.paibb.between(0, 1).all()
    assert rows[rows.gt_index < 0].paibb.isna().all()
    assert summary["paibb"][layer]["mean"] == pytest.approx(matched.paibb.mean(), abs=1e-6)
    assert set(matched.size_bucket) <= {"small", "medium", "large"}


def test_results_do_not_depend_on_batch_size(tmp_path):
    """Pitfalls 4 and 9: padding to the largest image in a batch must not change any metric."""
    one = analyze_random(tmp_path, "entmax15", batch_size=1)
    four = analyze_random(tmp_path, "entmax15", batch_size=4)
    for metric in ("gini", "zeros_ratio", "entropy", "paibb"):
        for layer, stats in one[metric].items():
            assert four[metric][layer]["mean"] == pytest.approx(stats["mean"], abs=1e-5), metric
            assert four[metric][layer]["per_head"] == pytest.approx(stats["per_head"], abs=1e-5)


def test_analyze_a_trained_checkpoint_through_the_cli(tmp_path, capsys):
    cfg = tiny_config(**{"train.max_steps": 2, "model.attention.cross": "alpha_entmax"})
    train(cfg, tmp_path / "run", progress=False)
    code = main(
        [
            "analyze",
            "--checkpoint",
            str(tmp_path / "run" / "last.pt"),
            "--out",
            str(tmp_path / "an"),
            "--quiet",
            "--max-images",
            "2",
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert summary["meta"]["images"] == 2 and summary["meta"]["random_init"] is False
    assert set(summary["meta"]["normalizers"].values()) == {"alpha_entmax"}
    assert all(not math.isnan(v["mean"]) for v in summary["gini"].values())
    assert (tmp_path / "an" / "records.parquet").is_file()
    assert "gini" in capsys.readouterr().out


def test_layers_option_selects_modules(tmp_path):
    summary = run_analysis(
        tmp_path / "enc",
        config="configs/detr/shapes_tiny_softmax.yaml",
        random_init=True,
        overrides=overrides(),
        layers=["*encoder.layers.0.self_attn"],
        progress=False,
    )
    assert list(summary["gini"]) == ["transformer.encoder.layers.0.self_attn"]
    assert "paibb" not in summary  # PAIBB is for object queries' cross-attention only
    assert main(["analyze", "--random-init", "--out", str(tmp_path / "x")]) == 2

"""`attnkit bench models --normalizers`: one row per config x normalizer, the softmax ratio, the
normalizer really swapped into the built model, notes and one-line errors.

Timings are printed, never asserted."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_leaves

from attnkit.bench.model_normalizers import build_variants, first_batch
from attnkit.bench.models import main
from attnkit.cli import main as cli_main
from attnkit.errors import ConfigError
from attnkit.models import build_model

DETR = "configs/detr/shapes_tiny_softmax.yaml"
MAXVIT = "configs/maxvit/synth_softmax.yaml"
DENSE = "configs/dense/synth_swin_segformer.yaml"
SMALL_DATA = ["data.num_train=4", "data.num_val=2"]  # keys every task's data section has
FAST = ["--batch", "2", "--repeats", "1", "--threads", "1", "--device", "cpu"]
ALL = ["softmax", "sparsemax", "entmax15", "alpha_entmax"]


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _table(printed: str) -> list[str]:
    return [line for line in printed.splitlines() if line.startswith("|")]


def test_one_row_per_config_and_normalizer(tmp_path, capsys):
    out = tmp_path / "norm.md"
    argv = ["--normalizers", ",".join(ALL), DETR, MAXVIT, DENSE, *SMALL_DATA, *FAST]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    labels = ["detr/shapes_tiny_softmax", "maxvit/synth_softmax", "dense/synth_swin_segformer"]
    assert [(r["label"], r["normalizer"]) for r in rows] == [(c, n) for c in labels for n in ALL]
    assert all(r["params"] > 0 and r["ms"] > 0 and len(r["ms_rounds"]) == 1 for r in rows)
    softmax = {r["label"]: r["ms"] for r in rows if r["normalizer"] == "softmax"}
    for row in rows:
        assert row["x_softmax"] == pytest.approx(row["ms"] / softmax[row["label"]])
    assert all(r["x_softmax"] == 1.0 for r in rows if r["normalizer"] == "softmax")
    table = _table(printed)
    assert len(table) == 2 + 12 and len({len(line) for line in table}) == 1  # aligned
    assert all(line.rstrip().endswith("1.00 |") for line in table if "| softmax " in line)
    assert "2x3x32x32" in printed and "torch threads 1" in printed
    assert "| maxvit/synth_softmax" in out.read_text()


def _outputs(cfg, batch) -> torch.Tensor:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        leaves = tree_leaves(model(**batch.inputs))
    return torch.cat([t.flatten().float() for t in leaves if isinstance(t, torch.Tensor)])


@pytest.mark.parametrize(
    "config",
    [
        DETR,
        MAXVIT,
        DENSE,
        "configs/vit/synth_softmax.yaml",
        "configs/sa_conv/synth_san_pairwise.yaml",
    ],
)
def test_the_normalizer_reaches_the_model(config):
    """Same seed, same batch: softmax twice agrees, sparsemax differs, so the family's keys
    really swap the normalizer (an override that did nothing would fail here)."""
    variants, notes = build_variants(Path(config), SMALL_DATA, ["softmax", "sparsemax"])
    assert set(variants) == {"softmax", "sparsemax"} and not notes
    batch = first_batch(variants["softmax"], 2)
    softmax = _outputs(variants["softmax"], batch)
    assert torch.equal(softmax, _outputs(variants["softmax"], batch))
    assert (softmax - _outputs(variants["sparsemax"], batch)).abs().max() > 1e-5


def test_img_size_sets_the_config_where_it_has_the_keys():
    variants, notes = build_variants(Path(MAXVIT), SMALL_DATA, ["softmax"], [64, 48])
    cfg = variants["softmax"]
    assert cfg.model.img_size == [64, 48] and cfg.data.image_size == [64, 48] and not notes
    assert first_batch(cfg, 2).inputs["images"].shape == (2, 3, 64, 48)
    _, notes = build_variants(Path(DETR), SMALL_DATA, ["softmax"], [64, 64])
    assert len(notes) == 1 and "--img-size does not apply" in notes[0]


def test_a_refused_combination_is_a_note(capsys):
    efficient = "model.attention.mechanism=efficient"  # softmax only
    argv = ["--normalizers", "softmax,sparsemax", DENSE, *SMALL_DATA, efficient, *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert len(_table(printed)) == 3  # header, rule, softmax
    note = [line for line in printed.splitlines() if "sparsemax: skipped" in line]
    assert len(note) == 1 and "efficient" in note[0]


def test_unknown_normalizer_is_one_line(capsys):
    with pytest.raises(ConfigError, match="unknown normalizer 'sparsmax'; known: softmax"):
        main(["--normalizers", "softmax,sparsmax", MAXVIT, *FAST])
    assert cli_main(["bench", "models", "--normalizers", "sparsmax", MAXVIT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnkit: error: --normalizers: unknown normalizer") and "\n" not in err


def test_family_without_normalizer_keys_is_one_line(capsys):
    cnn = "configs/cnn/synth_small.yaml"
    with pytest.raises(ConfigError, match="family cnn has no normalizer keys"):
        main(["--normalizers", "softmax", MAXVIT, cnn, *FAST])
    assert "|" not in capsys.readouterr().out  # refused before anything ran
    assert cli_main(["bench", "models", "--normalizers", "softmax", cnn]) == 2
    err = capsys.readouterr().err.strip()
    assert "family cnn has no normalizer keys" in err and "\n" not in err


def test_help_describes_the_normalizers_mode(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["bench", "models", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--normalizers" in out and "x softmax" in out and "synth224_tiny_softmax" in out


def test_the_timed_batch_does_not_depend_on_earlier_random_draws():
    # DETR's transforms draw from Python's generator: the batch must be the same in every run.
    cfg = build_variants(Path(DETR), SMALL_DATA, ["softmax"])[0]
    batches = []
    for seed in (1, 2):
        random.seed(seed)
        torch.manual_seed(seed)
        batches.append(first_batch(cfg["softmax"], 2))
    first, second = (b.inputs["images"] for b in batches)
    assert torch.equal(
        first.tensors if hasattr(first, "tensors") else first,
        second.tensors if hasattr(second, "tensors") else second,
    )

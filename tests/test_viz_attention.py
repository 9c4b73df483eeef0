"""Inspection of images (attention, detections, matches, costs), its figures, widgets, notebooks."""

from __future__ import annotations

import copy

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from scipy.optimize import linear_sum_assignment

from attnkit.analysis.inspect import inspect_images, inspect_models
from attnkit.config import config_to_dict, load_config
from attnkit.data import build_dataset, collate_detection
from attnkit.models import build_model
from attnkit.models.detr import HungarianMatcher
from attnkit.viz import attention as va
from attnkit.viz import matching as vm
from attnkit.viz.widgets import AttentionViewer, MatchingViewer, is_static_context

matplotlib.use("Agg")

CONFIG = "configs/detr/shapes_tiny_sparsemax.yaml"
TINY = {
    "data.num_train": 4,
    "data.num_val": 4,
    "data.seed": 5,
    "data.val_scale": 64,
    "data.max_size": 112,
    "data.num_workers": 0,
    "model.hidden_dim": 32,
    "model.num_heads": 2,
    "model.enc_layers": 1,
    "model.dec_layers": 2,
    "model.dim_feedforward": 64,
    "model.num_queries": 6,
}
MATCHER = HungarianMatcher(cost_class=2.0, cost_bbox=3.0, cost_giou=1.5)  # not DETR's weights


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forward passes run fastest (and steadiest on a shared CPU) single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(cross: str = "sparsemax", seed: int = 0):
    cfg = load_config(CONFIG, {**TINY, "model.attention.cross": cross, "seed": seed})
    torch.manual_seed(cfg.seed)
    return build_model(cfg).eval(), cfg


@pytest.fixture(scope="module")
def setup():
    model, cfg = tiny_model()
    dataset = build_dataset(cfg.data, "val", train=False)
    inspections = inspect_images(model, dataset, range(4), MATCHER, model_name="sparsemax")
    return model, cfg, dataset, inspections


@pytest.fixture(scope="module")
def two_models(setup):
    """The same images through a second (softmax) model: ``{label: [ImageInspection]}``."""
    _, _, dataset, inspections = setup
    other, _ = tiny_model("softmax", seed=1)
    second = inspect_images(other, dataset, range(4), MATCHER, model_name="softmax")
    return {"sparsemax": inspections, "softmax (random init)": second}


def pixels(fig) -> np.ndarray:
    """The figure rendered to RGB (also after ``plt.close``, as the viewers do)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32)


def assert_not_blank(fig) -> None:
    px = pixels(fig)
    assert px.std() > 10, "figure looks blank"
    matplotlib.pyplot.close(fig)


def test_maps_are_cropped_per_image_and_sum_to_one(setup):
    model, _, dataset, inspections = setup
    shapes = set()
    for ins in inspections:
        L, H, Q, hv, wv = ins.attention.shape
        assert (L, H, Q) == (2, 2, 6) and ins.layers == [0, 1]
        h, w = dataset[ins.index][0].shape[-2:]  # the resized image the model saw
        assert (hv, wv) == (-(-h // 16), -(-w // 16))  # own unpadded grid (tiny_cnn: stride 16)
        shapes.add((hv, wv))
        sums = ins.attention.sum((-2, -1))  # [L, H, Q]
        torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
        assert ins.scores.shape == ins.labels.shape == (Q,) and ins.boxes.shape == (Q, 4)
        raw = dataset.raw_target(ins.index)
        torch.testing.assert_close(ins.gt_boxes, raw["boxes"], atol=0.05, rtol=0)
        assert ins.image_size == tuple(raw["orig_size"].tolist())
        assert len(ins.match_queries) == len(ins.match_targets) == min(Q, len(ins.gt_boxes))
    assert len(shapes) > 1 and any(hv != wv for hv, wv in shapes)  # padded, non-square batch
    # padding to the batch's largest image changes nothing (pitfalls 4 and 9)
    alone = inspect_images(model, dataset, [inspections[1].index], MATCHER, layers=[-1])
    torch.testing.assert_close(
        alone[0].attention[0], inspections[1].attention[-1], atol=1e-5, rtol=0
    )


def test_weighted_cost_terms_sum_to_the_matcher_cost(setup):
    model, _, dataset, inspections = setup
    batch = collate_detection([dataset[i] for i in range(4)])
    with torch.no_grad():
        outputs = model(batch.images, batch.mask)
    costs = MATCHER.cost_matrices(outputs, batch.targets)
    for ins, cost in zip(inspections, costs):
        assert ins.cost_weights == {"class": 2.0, "bbox": 3.0, "giou": 1.5}
        q, t = ins.match_queries, ins.match_targets
        torch.testing.assert_close(ins.total_cost()[q, t], cost[q, t], atol=1e-5, rtol=0)
        torch.testing.assert_close(ins.total_cost(), cost, atol=1e-5, rtol=0)
        if len(t):  # the matches are the optimal assignment of the total
            rows, cols = linear_sum_assignment(ins.total_cost().numpy())
            best = ins.total_cost().numpy()[rows, cols].sum()
            assert float(ins.total_cost()[q, t].sum()) == pytest.approx(best, abs=1e-5)
        table = vm.matching_table(ins)
        matched = table[table.matched_gt.notna()]
        assert len(matched) == len(q)
        for row in matched.itertuples():
            assert row.cost_total == pytest.approx(float(cost[row.query, row.matched_gt]), abs=1e-5)
            assert 0.0 <= row.iou <= 1.0


def test_overlay_blends_the_upsampled_map_over_the_image(setup):
    ins = setup[3][0]
    attn = torch.zeros(ins.grid)
    attn[0, 0] = 1.0  # all the weight on the top-left cell
    up = va.upsample_map(attn, ins.image_size)
    assert up.shape == ins.image_size and up[0, 0] == pytest.approx(1.0)
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1)
    rgb = va.blend_attention(ins.image, attn, norm)
    gray = np.asarray(ins.image.convert("L"), dtype=np.float32) / 255
    corner = rgb[-1, -1]  # zero attention: the (dimmed) image shows through
    assert corner == pytest.approx([0.85 * gray[-1, -1]] * 3, abs=1e-4)
    assert not np.allclose(rgb[0, 0], 0.85 * gray[0, 0])  # attended: coloured


def test_attention_figures_are_drawn(setup, two_models):
    ins = setup[3][0]
    query = ins.objects()[0]
    assert_not_blank(va.plot_detections_row({k: v[0] for k, v in two_models.items()}))
    assert_not_blank(va.plot_layer_head_grid(ins, query))
    fig = va.plot_layer_head_grid(ins, query, layers=[-1], head_average=True)
    assert any("mean of 2 heads" in t.get_text() for ax in fig.axes for t in [ax.title])
    assert_not_blank(fig)
    target = ins.top_targets(1)[0]
    views = {k: v[0] for k, v in two_models.items()}
    for kwargs in ({}, {"head_average": True}, {"models_along": "rows"}):
        assert_not_blank(va.plot_models_side_by_side(views, target, **kwargs))
    assert_not_blank(va.plot_object_attention(ins, query, layer=0, head=None))


def test_matching_figures_and_table(setup):
    for ins in setup[3][:2]:
        assert_not_blank(vm.plot_matching(ins))
        assert_not_blank(vm.plot_cost_terms(ins, max_queries=4))
        assert_not_blank(vm.plot_query_scores(ins))
    tables = {f"#{ins.image_id}": vm.matching_table(ins, "all") for ins in setup[3]}
    assert all(len(t) == 6 for t in tables.values())
    text = vm.tables_markdown(tables)
    assert text.count("| query | matched_gt |") == 4 and "### #" in text


def test_an_image_without_objects_is_drawn(setup):
    ins = copy.deepcopy(setup[3][0])
    ins.gt_boxes, ins.gt_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    ins.costs = {k: v[:, :0] for k, v in ins.costs.items()}
    ins.match_queries = ins.match_targets = torch.zeros(0, dtype=torch.int64)
    assert ins.top_targets() == [] and ins.matched_iou().shape == (0,)
    assert_not_blank(vm.plot_matching(ins))
    assert_not_blank(vm.plot_cost_terms(ins))
    assert vm.matching_table(ins).matched_gt.isna().all()
    viewer = AttentionViewer({"m": [ins]}, static=True)
    assert_not_blank(viewer.update())


def test_viewers_redraw_without_a_display(two_models, monkeypatch):
    monkeypatch.delenv("ATTNKIT_STATIC_WIDGETS", raising=False)
    assert is_static_context()  # a plain Python process has no widget frontend
    monkeypatch.setenv("ATTNKIT_STATIC_WIDGETS", "0")
    assert not is_static_context()
    viewer = AttentionViewer(two_models, static=False)
    first = viewer.update()
    seen = [first]
    viewer.object.value = viewer.object.options[-1][1]
    viewer.layer.value = 0
    viewer.head.value = 1
    viewer.average.value = True
    viewer.image.value = 2
    kind, target = viewer.object.value
    viewer.model.value = "softmax (random init)"
    assert viewer.object.value == (kind, target)  # the same ground-truth object in the other model
    seen.append(viewer.figure)
    assert seen[-1] is not first and pixels(seen[-1]).std() > 10
    assert viewer.widget() is viewer.widget()
    matching = MatchingViewer(two_models, static=True)
    for view in reversed(MatchingViewer.VIEWS):  # each a change from the current view
        matching.view.value = view
        assert pixels(matching.figure).std() > 10
    assert matching.show() is matching.figure  # static: one figure, no widget


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Random-init tiny models saved as the shipped checkpoints (``$ATTNKIT_CHECKPOINTS``)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    for cross in ("sparsemax", "softmax"):
        model, cfg = tiny_model(cross)
        ckpt = {"model": model.state_dict(), "config": config_to_dict(cfg)}
        torch.save(ckpt, folder / f"shapes_tiny_{cross}.pt")
    return folder


def test_inspect_models_names_and_random_init(tiny_checkpoints, monkeypatch):
    monkeypatch.setenv("ATTNKIT_CHECKPOINTS", str(tiny_checkpoints))
    out = inspect_models(
        ["sparsemax", tiny_checkpoints / "shapes_tiny_softmax.pt"], [3, 1], 0, True
    )
    assert list(out) == [
        "sparsemax",
        "sparsemax (random init)",
        "shapes_tiny_softmax",
        "shapes_tiny_softmax (random init)",
    ]
    assert [i.image_id for i in out["sparsemax"]] == [3, 1]
    run = tiny_checkpoints / "my_run"  # a run folder stands for its last.pt
    run.mkdir(exist_ok=True)
    (run / "last.pt").write_bytes((tiny_checkpoints / "shapes_tiny_sparsemax.pt").read_bytes())
    named = inspect_models({"mine": run}, num_images=1)
    torch.testing.assert_close(named["mine"][0].attention, out["sparsemax"][1].attention)
    with pytest.raises(ValueError, match="not in"):
        inspect_models(["sparsemax"], [999])


@pytest.mark.parametrize(
    "notebook, params",
    [
        (
            "02_attention_maps.ipynb",
            {"models": ["sparsemax", "softmax"], "num_images": 1, "heads": [0]},
        ),
        ("03_hungarian_matching.ipynb", {"num_images": 1}),
    ],
)
def test_notebook_runs_under_papermill(
    notebook, params, tiny_checkpoints, repo_root, tmp_path, monkeypatch
):
    import papermill

    monkeypatch.setenv("ATTNKIT_CHECKPOINTS", str(tiny_checkpoints))  # the kernel inherits it
    figures, run_dir = tmp_path / "figures", tmp_path / "run"
    params = {**params, "figures_dir": str(figures)}
    if notebook.startswith("03"):
        params["run_dir"] = str(run_dir)
    papermill.execute_notebook(
        str(repo_root / "notebooks" / "detr" / notebook),
        str(tmp_path / notebook),
        parameters=params,
        kernel_name="attnkit",
        cwd=str(repo_root / "notebooks" / "detr"),
        progress_bar=False,
    )
    pngs = sorted(p.name for p in figures.glob("*.png"))
    if notebook.startswith("02"):
        assert any(p.startswith("02_layers_heads_sparsemax") for p in pngs)
        assert any(p.startswith("02_random_vs_trained_mean") for p in pngs)
    else:
        assert {p.split("_img")[0] for p in pngs} == {"03_matching", "03_costs", "03_scores"}
        assert "| query | matched_gt |" in (run_dir / "matching_summary.md").read_text()

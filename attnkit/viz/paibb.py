"""PAIBB views: per layer, head and model, by object size, and a gallery of the worst cases.

PAIBB (DESIGN.md) is the share of a matched query's cross-attention that falls inside its
ground-truth box. The per-layer and per-head views read ``summary.json`` of ``attnkit analyze``;
the distributions and the gallery read ``records.parquet`` (one row per image x layer x head x
query; ``paibb`` is set on the Hungarian-matched rows). The gallery recomputes the selected maps
with the model and the recorder (:func:`attention_cases`), crops them to the image's unpadded
grid and upsamples them exactly as the metric does, so what is drawn is what was scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from attnkit.analysis.paibb import crop_to_unpadded, paibb
from attnkit.analysis.recorder import AttentionRecorder
from attnkit.analysis.tables import BUCKETS
from attnkit.data.transforms import original_boxes
from attnkit.viz.dataset import draw_boxes
from attnkit.viz.labels import layer_label, model_colors, normalizer_label, sort_layers
from attnkit.viz.sparsity import plot_head_heatmap, plot_metric_by_layer
from attnkit.viz.style import figsize

__all__ = [
    "GALLERY_COLUMNS",
    "attention_cases",
    "cases_from_checkpoint",
    "lowest_paibb_cases",
    "plot_paibb_by_layer",
    "plot_paibb_by_size",
    "plot_paibb_gallery",
    "plot_paibb_heads",
    "zero_paibb_table",
]

GALLERY_COLUMNS = ["image_id", "layer", "head", "query", "gt_index", "paibb", "size_bucket"]


def plot_paibb_by_layer(
    summaries: Mapping[str, dict], head_avg: bool = True, baseline=None, width: float = 0.8
):
    """Bars: PAIBB per layer and model (mean over matched pairs and heads), per-head dots; with
    ``head_avg`` a white diamond marks the PAIBB of the head-averaged maps."""
    fig = plot_metric_by_layer(summaries, "paibb", baseline, legend=False, width=width)
    ax = fig.axes[0]
    models = list(summaries)
    layers = sort_layers(k for s in summaries.values() for k in (s.get("paibb") or {}))
    bar_w = 0.8 / len(models)
    if head_avg:
        for i, model in enumerate(models):
            stats = summaries[model].get("paibb_head_avg") or {}
            x = np.arange(len(layers)) + (i - (len(models) - 1) / 2) * bar_w
            y = [(stats.get(layer) or {}).get("mean", math.nan) for layer in layers]
            ax.scatter(
                x,
                y,
                marker="D",
                s=10,
                color="white",
                edgecolors="black",
                linewidths=0.6,
                zorder=5,
                label="head-averaged maps" if i == 0 else None,
            )
    handles, labels = ax.get_legend_handles_labels()
    first = [i for i, lab in enumerate(labels) if lab != "head-averaged maps"]
    order = first + [i for i in range(len(labels)) if i not in first]
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        fontsize="small",
        ncol=3,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
    )
    fig.tight_layout()
    return fig


def plot_paibb_heads(summaries: Mapping[str, dict], width: float = 1.0):
    """Heatmap of PAIBB per head: rows model, columns (layer, head)."""
    return plot_head_heatmap(summaries, "paibb", width=width)


def plot_paibb_by_size(
    summaries: Mapping[str, dict],
    layers: Sequence[str] | None = None,
    buckets: Sequence[str] = BUCKETS,
    width: float = 1.0,
):
    """PAIBB by COCO size bucket: one panel per layer, x = bucket, one bar per model.

    Tick labels give the number of matched objects per bucket (Hungarian matching assigns every
    ground truth, so it is the same for every model; taken from the first).
    """
    found = [k for s in summaries.values() for k in (s.get("paibb_by_size") or {})]
    layers = list(layers) if layers is not None else sort_layers(found)
    if not layers:
        raise KeyError("no summary has paibb_by_size")
    models = list(summaries)
    colors = model_colors(models)
    fig, axes = plt.subplots(
        1, len(layers), figsize=figsize(width, aspect=0.32), squeeze=False, sharey=True
    )
    bar_w = 0.8 / len(models)
    for ax, layer in zip(axes[0], layers):
        for i, model in enumerate(models):
            stats = (summaries[model].get("paibb_by_size") or {}).get(layer) or {}
            y = [(stats.get(b) or {}).get("mean", math.nan) for b in buckets]
            x = np.arange(len(buckets)) + (i - (len(models) - 1) / 2) * bar_w
            ax.bar(x, y, bar_w * 0.92, color=colors[model], label=normalizer_label(model))
        first = (summaries[models[0]].get("paibb_by_size") or {}).get(layer) or {}
        ticks = []
        for b in buckets:
            s = first.get(b) or {}
            n = s.get("count", 0) // (len(s.get("per_head") or []) or 1)  # counts are per head
            ticks.append(f"{b}\n(n={n})")
        ax.set_xticks(range(len(buckets)), ticks)
        ax.set_title(layer_label(layer))
    axes[0][0].set_ylabel("PAIBB")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(models))
    fig.tight_layout()
    return fig


def zero_paibb_table(records: pd.DataFrame, eps: float = 0.0) -> pd.DataFrame:
    """Per model and layer, over the matched maps of every head: how many, the share with
    PAIBB <= ``eps`` (0: none of the attention inside the box), the median and the mean."""
    matched = records[records["paibb"].notna()]
    if "model" not in matched:
        matched = matched.assign(model="model")
    zero_col = "PAIBB = 0" if eps == 0 else f"PAIBB <= {eps:g}"
    layer_order = {name: i for i, name in enumerate(sort_layers(matched["layer"].unique()))}
    rows = []
    for (model, layer), g in matched.groupby(["model", "layer"], sort=False):
        rows.append(
            {
                "model": model,
                "layer": layer_label(layer),
                "matched maps": len(g),
                zero_col: float((g["paibb"] <= eps).mean()),
                "median": float(g["paibb"].median()),
                "mean": float(g["paibb"].mean()),
                "_o": layer_order[layer],
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    order = {m: i for i, m in enumerate(dict.fromkeys(frame["model"]))}
    frame = frame.sort_values(
        ["model", "_o"], key=lambda c: c.map(order) if c.name == "model" else c
    )
    return frame.drop(columns="_o").set_index(["model", "layer"])


def lowest_paibb_cases(
    records: pd.DataFrame,
    n: int = 8,
    layer: str | None = None,
    zero_only: bool = False,
    one_per_object: bool = True,
) -> pd.DataFrame:
    """The matched maps with the lowest PAIBB (ties: lowest image id, query, head first).

    Args:
        records: rows of ``records.parquet`` (at least :data:`GALLERY_COLUMNS`).
        n: how many cases.
        layer: only this layer (a module name); None: all layers.
        zero_only: only maps with PAIBB exactly 0 (may return fewer than ``n``).
        one_per_object: at most one case per (image, ground truth), its worst head and layer,
            so the gallery shows different objects; among equal PAIBB values, images not
            shown yet come first.
    """
    cases = records[(records["gt_index"] >= 0) & records["paibb"].notna()]
    if layer is not None:
        cases = cases[cases["layer"] == layer]
    if zero_only:
        cases = cases[cases["paibb"] == 0]
    cases = cases.sort_values(["paibb", "image_id", "query", "head"], kind="stable")
    if one_per_object:
        cases = cases.drop_duplicates(["image_id", "gt_index"])
        rank = cases.groupby("image_id").cumcount()  # 0 for each image's worst case
        cases = cases.assign(_rank=rank).sort_values(["paibb", "_rank"], kind="stable")
    return cases[GALLERY_COLUMNS].head(n).reset_index(drop=True)


@torch.no_grad()
def attention_cases(model, dataset, cases: pd.DataFrame, names: Mapping[int, str] | None = None):
    """Recompute the attention maps of ``cases`` (from :func:`lowest_paibb_cases`).

    ``model`` in eval mode; ``dataset`` the evaluated split with its eval transforms
    (``build_dataset(cfg.data, "val", train=False)``; a ``Subset`` of it works too). Each image
    is run alone; its map is cropped to the unpadded grid and upsampled bilinearly
    (``align_corners=False``) to the original size, as PAIBB does.

    Returns one dict per case: ``image`` (``[H, W, 3]`` uint8), ``map`` (``[H, W]``),
    ``grid_map`` (``[h, w]``), ``box`` (xyxy pixels), ``paibb`` (recomputed), ``recorded_paibb``,
    ``label`` (class name) and the case's ``image_id, layer, head, query, gt_index,
    size_bucket``.
    """
    base = getattr(dataset, "dataset", dataset)
    indices = getattr(dataset, "indices", range(len(base)))
    position = {base.ids[i]: i for i in indices}
    names = names if names is not None else base.categories
    from attnkit.data import collate_detection

    device = next(model.parameters()).device
    out = []
    for image_id, group in cases.groupby("image_id", sort=False):
        index = position[int(image_id)]
        sample = base[index]
        batch = collate_detection([sample]).to(device)
        target = batch.targets[0]
        with AttentionRecorder(model, include=sorted(set(group["layer"]))) as rec:
            model(batch.images, batch.mask)
        image = np.asarray(base.load_image(index))
        size = image.shape[:2]
        for case in group.itertuples(index=False):
            record = rec.last(case.layer)
            pad = record.key_padding_mask
            pad = pad[0] if pad is not None else torch.zeros(record.weights.shape[-1], dtype=bool)
            grid = crop_to_unpadded(
                record.weights[0, case.head, case.query].float().cpu(), record.key_grid, pad.cpu()
            )  # [h, w]
            boxes, _ = original_boxes(
                {k: v.cpu() if torch.is_tensor(v) else v for k, v in target.items()}
            )
            box = boxes[int(case.gt_index)]  # [4]
            up = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)
            out.append(
                {
                    **case._asdict(),
                    "image": image,
                    "map": up[0, 0].numpy(),  # [H, W]
                    "grid_map": grid.numpy(),
                    "box": box.numpy(),
                    "paibb": float(paibb(grid[None], size, box[None])[0]),
                    "recorded_paibb": float(case.paibb),
                    "label": names.get(int(target["labels"][case.gt_index]), "?"),
                }
            )
    order = {(c.image_id, c.layer, c.head, c.query): i for i, c in enumerate(cases.itertuples())}
    return sorted(out, key=lambda c: order[(c["image_id"], c["layer"], c["head"], c["query"])])


def cases_from_checkpoint(
    checkpoint: str | Path,
    cases: pd.DataFrame,
    overrides=None,
    split: str = "val",
    device: str | None = None,
) -> list[dict]:
    """:func:`attention_cases` with the model and eval dataset of a checkpoint (its config).

    ``device``: None picks CUDA when available.
    """
    from attnkit.data import build_dataset
    from attnkit.models.loading import model_from_checkpoint

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = model_from_checkpoint(checkpoint, overrides, device=device)
    return attention_cases(model, build_dataset(cfg.data, split, train=False), cases)


def _overlay(map_hw: np.ndarray, cmap: str = "inferno", gamma: float = 0.8) -> np.ndarray:
    """RGBA of a map whose opacity grows with the weight (zero weight: transparent)."""
    peak = float(map_hw.max())
    norm = map_hw / peak if peak > 0 else np.zeros_like(map_hw)
    rgba = plt.get_cmap(cmap)(norm)
    rgba[..., 3] = 0.9 * norm**gamma
    return rgba


def plot_paibb_gallery(
    cases: Sequence[dict], ncols: int = 4, width: float = 1.0, title: str | None = None
):
    """Each case's image (grey), its attention map (opacity and colour grow with the weight)
    and the ground-truth box (green); titled with layer, head, query and PAIBB."""
    n = max(1, len(cases))
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=figsize(width, aspect=0.95 * nrows / ncols), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    if not cases:
        axes[0, 0].text(0.5, 0.5, "no case", ha="center", va="center")
    for ax, case in zip(axes.flat, cases):
        grey = case["image"].mean(-1, keepdims=True).repeat(3, -1) / 255.0
        ax.imshow(0.35 + 0.5 * grey)
        ax.imshow(_overlay(case["map"]))
        draw_boxes(ax, case["box"][None], [case["label"]], colors=["#2ca02c"], linewidth=1.2)
        ax.set_title(
            f"#{case['image_id']} {layer_label(case['layer'])} h{case['head']} "
            f"q{case['query']}\nPAIBB {case['paibb']:.3f} ({case['size_bucket']})",
            fontsize=6,
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout(pad=0.3)
    return fig

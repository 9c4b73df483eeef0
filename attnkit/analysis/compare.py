"""Analyse a set of models the same way and gather the results (notebooks 04 and 05).

Models are given as shipped normalizer names or ``{name: checkpoint or run folder}``; each is
analysed (trained, or its random initialisation) into its own folder, and re-analysed only when
the request changed. ``load_records`` gathers their per-map rows for distribution plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from attnkit.runfiles import resolve_checkpoint

__all__ = ["analyze_models", "load_records", "resolve_models"]


def resolve_models(models: Sequence[str] | Mapping[str, str | Path]) -> dict[str, Path]:
    """``{name: checkpoint}`` from shipped normalizer names or ``{name: checkpoint | run dir}``.

    A run folder stands for its ``last.pt``; ``{checkpoints}/<file>`` names a shipped model
    (``checkpoints/vit_synth_sparsemax.pt``, say).
    """
    from attnkit.models.reference import reference_checkpoint

    if isinstance(models, str):
        models = [models]
    if not isinstance(models, Mapping):
        return {str(name): reference_checkpoint(name) for name in models}
    return {str(name): resolve_checkpoint(path) for name, path in models.items()}


def analyze_models(
    models: Sequence[str] | Mapping[str, str | Path],
    out_dir: str | Path,
    random_init: bool = False,
    max_images: int | None = None,
    data_root: str | Path | None = None,
    batch_size: int | None = None,
    reuse: bool = True,
    progress: bool = False,
    device: str | None = None,
) -> dict[str, Path]:
    """Run ``attnkit analyze`` on each model (trained, or its random init) into ``out_dir/<name>``.

    ``models`` as in :func:`resolve_models`. A random-init model is built from the checkpoint's
    own config (same architecture, seed ``cfg.seed``) into ``out_dir/<name>_random_init``.
    ``data_root`` switches to a COCO-format folder. With ``reuse`` a folder analysed before
    with the same request is not recomputed. ``device``: None picks CUDA when available.
    Returns ``{name: analysis folder}``.
    """
    import json

    import torch

    from attnkit.analysis.run_analysis import run_analysis
    from attnkit.config import config_from_dict, save_config

    overrides = {"data.name": "coco", "data.root": str(data_root)} if data_root else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = {}
    for name, checkpoint in resolve_models(models).items():
        folder = Path(out_dir) / (f"{name}_random_init" if random_init else name)
        request = {
            "checkpoint": str(Path(checkpoint).resolve()),
            "mtime": Path(checkpoint).stat().st_mtime,
            "random_init": random_init,
            "max_images": max_images,
            "data_root": str(data_root) if data_root else None,
            "batch_size": batch_size,
        }
        request_file = folder / "request.json"
        done = (folder / "summary.json").is_file() and (folder / "records.parquet").is_file()
        if (
            reuse
            and done
            and request_file.is_file()
            and json.loads(request_file.read_text()) == request
        ):
            out[name] = folder
            continue
        folder.mkdir(parents=True, exist_ok=True)
        kwargs = {"checkpoint": checkpoint}
        if random_init:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
            cfg = config_from_dict(ckpt["config"], source=f"config inside {checkpoint}")
            config = save_config(cfg, folder / "model_config.yaml")
            kwargs = {"config": config, "random_init": True}
        run_analysis(
            folder,
            overrides=overrides,
            batch_size=batch_size,
            max_images=max_images,
            progress=progress,
            device=device,
            overwrite=True,  # this cache folder is compare's own; its request changed
            **kwargs,
        )
        request_file.write_text(json.dumps(request, indent=1))
        out[name] = folder
    return out


def load_records(
    runs: Mapping[str, str | Path | pd.DataFrame],
    columns: Sequence[str] = ("layer", "head", "gini", "zeros_ratio", "entropy"),
    max_rows: int | None = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Rows of several ``records.parquet`` (run folders, files or frames) with a ``model`` column.

    Only ``columns`` are read; each model keeps at most ``max_rows`` rows, drawn at random.
    """
    parts = []
    for i, (name, run) in enumerate(runs.items()):
        if isinstance(run, pd.DataFrame):
            frame = run[list(columns)]
        else:
            path = Path(run)
            path = path / "records.parquet" if path.is_dir() else path
            frame = pd.read_parquet(path, columns=list(columns))
        if max_rows is not None and len(frame) > max_rows:
            frame = frame.sample(n=max_rows, random_state=seed + i)
        parts.append(frame.assign(model=name))
    if not parts:
        return pd.DataFrame(columns=[*columns, "model"])
    return pd.concat(parts, ignore_index=True)

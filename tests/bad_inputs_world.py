"""The files the bad-input catalogue (``tests/bad_inputs.py``) points at, and the set-ups that
make each bad input from them."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_helpers import TINY  # noqa: E402


@dataclass
class World:
    """The files the cases point at: a tiny config, a trained run, a COCO folder, odd files."""

    root: Path

    def __getattr__(self, name: str) -> Path:  # world.run -> root/run
        return self.root / name

    def paths(self) -> dict[str, str]:
        return {p.name: str(p) for p in self.root.iterdir()} | {"root": str(self.root)}


def make_world(root: Path) -> World:
    """Train a tiny DETR for one step and lay out the files the cases use."""
    from attnkit.cli import main
    from attnkit.data.synthetic import make_shapes_coco

    world = World(Path(root))
    world.root.mkdir(parents=True, exist_ok=True)
    tiny = {**TINY, "train.max_steps": 1, "train.epochs": 1}
    tree: dict = {}
    for key, value in tiny.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    (world.root / "cfg.yaml").write_text(yaml.safe_dump(tree))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        rc = main(
            ["train", "--config", str(world.root / "cfg.yaml"), "--out", str(world.run), "--quiet"]
        )
    assert rc == 0, "the world's tiny training run failed"
    make_shapes_coco(world.coco, 4, seed=0, split="val", progress=False)
    ckpt = torch.load(world.run / "last.pt", weights_only=True)
    torch.save(ckpt["model"], world.root / "bare.pt")  # a state dict without config
    torch.save({"body": {"w": torch.ones(1)}, "backbone": "tiny_cnn"}, world.root / "bb.pt")
    data = (world.run / "last.pt").read_bytes()
    (world.root / "truncated.pt").write_bytes(data[: len(data) // 2])
    (world.root / "empty.pt").write_bytes(b"")
    (world.root / "random.pt").write_bytes(bytes(range(256)) * 8)
    torch.save({"model": _Evil()}, world.root / "evil.pt")
    (world.root / "empty.yaml").write_text("# nothing yet\n")
    (world.root / "broken.yaml").write_text("train:\n  lr: [1e-4\n")
    (world.root / "list.yaml").write_text("- a\n- b\n")
    (world.root / "loop_a.yaml").write_text("_base_: loop_b.yaml\n")
    (world.root / "loop_b.yaml").write_text("_base_: loop_a.yaml\n")
    (world.root / "vit.yaml").write_text("model:\n  name: vit\n")
    (world.root / "afile").write_text("not a folder\n")
    (world.root / "earlier_eval").mkdir()
    (world.root / "earlier_eval" / "metrics.json").write_text('{"AP": "an earlier result"}')
    (world.root / "earlier_analysis").mkdir()
    (world.root / "earlier_analysis" / "summary.json").write_text('{"an": "earlier analysis"}')
    return world


class _Evil:
    """Unpickling this would run a shell command: ``weights_only`` loading must refuse it."""

    def __reduce__(self):
        return (print, ("attnkit-test: arbitrary code ran while loading a checkpoint",))


def coco_variant(name: str, edit: Callable[[dict], None]) -> Callable[[World], None]:
    """A set-up: copy the world's COCO folder to ``name`` and edit its val annotations."""

    def setup(world: World) -> None:
        target = world.root / name
        if target.exists():
            return
        shutil.copytree(world.coco, target)
        ann = target / "annotations" / "instances_val2017.json"
        data = json.loads(ann.read_text())
        edit(data)
        ann.write_text(json.dumps(data))

    return setup


def raw_annotation_file(name: str, text: str) -> Callable[[World], None]:
    def setup(world: World) -> None:
        target = world.root / name
        if not target.exists():
            shutil.copytree(world.coco, target)
        (target / "annotations" / "instances_val2017.json").write_text(text)

    return setup


def first_bbox(value) -> Callable[[dict], None]:
    return lambda data: data["annotations"][0].update(bbox=value)


def use_category(category_id: int) -> Callable[[dict], None]:
    """Declare ``category_id`` and give it to the first annotation."""

    def edit(data: dict) -> None:
        data["categories"].append({"id": category_id, "name": f"class{category_id}"})
        data["annotations"][0]["category_id"] = category_id

    return edit


def drop_image_file(world: World) -> None:
    target = world.root / "coco_noimage"
    if not target.exists():
        shutil.copytree(world.coco, target)
        next(iter(sorted((target / "val2017").iterdir()))).unlink()

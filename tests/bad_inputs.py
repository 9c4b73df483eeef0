"""A catalogue of bad inputs a new user hits, walked through the ``attnkit`` command.

Each :class:`Case` is a command line (``{name}`` fields are paths of the :class:`World`), an
optional set-up that makes the bad input, and the words the one-line error must hold. The test
(``tests/test_bad_inputs.py``) asserts for every case: exit code 2, no traceback, one
``attnkit: error:`` line (argparse's usage errors: its own two-line form), the expected words, and
that no file which existed before the command changed. Run this file to print a table of the
outcomes (``python tests/bad_inputs.py``): the closing note of issue 12 lists it before and after.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs_world import (  # noqa: E402
    World,
    coco_variant,
    drop_image_file,
    first_bbox,
    make_world,
    raw_annotation_file,
    use_category,
)


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: str
    setup: Callable[[World], None] | None = None
    needs_no_gpu: bool = False


EVAL = ["eval", "--checkpoint", "{run}", "--quiet"]
DATA = ["data.name=coco", "data.num_workers=0"]

CASES: list[Case] = [
    # ----------------------------------------------------------------- configs
    Case(
        "misspelt key", ["config", "show", "{cfg.yaml}", "train.lrr=1"], "did you mean 'train.lr'"
    ),
    Case("wrong type", ["config", "show", "{cfg.yaml}", "train.epochs=abc"], "must be int"),
    Case("override YAML", ["config", "show", "{cfg.yaml}", "train.lr=[1e-4"], "not valid YAML"),
    Case("override form", ["config", "show", "{cfg.yaml}", "train.lr"], "key=value"),
    Case("missing config", ["config", "show", "{root}/nope.yaml"], "not found"),
    Case("empty config", ["config", "show", "{empty.yaml}"], "empty"),
    Case("broken YAML file", ["config", "show", "{broken.yaml}"], "not valid YAML"),
    Case("list config", ["config", "show", "{list.yaml}"], "must be a mapping"),
    Case("inheritance loop", ["config", "show", "{loop_a.yaml}"], "inheritance loop"),
    Case("batch size 0", ["config", "show", "{cfg.yaml}", "data.batch_size=0"], "> 0"),
    Case("epochs -1", ["config", "show", "{cfg.yaml}", "train.epochs=-1"], "'train.epochs'"),
    Case("lr 0", ["config", "show", "{cfg.yaml}", "train.lr=0"], "'train.lr' must be > 0"),
    Case("lr negative", ["config", "show", "{cfg.yaml}", "train.lr=-1e-4"], "'train.lr'"),
    Case("workers -1", ["config", "show", "{cfg.yaml}", "data.num_workers=-1"], ">= 0"),
    Case("dropout 1.5", ["config", "show", "{cfg.yaml}", "model.dropout=1.5"], r"in \[0, 1\)"),
    Case("heads", ["config", "show", "{cfg.yaml}", "model.num_heads=3"], "divisible"),
    Case("crop sizes", ["config", "show", "{cfg.yaml}", "data.crop_min_size=100"], "greater"),
    Case("family", ["config", "show", "{cfg.yaml}", "model.name=swim"], "'model.name'"),
    Case(
        "normalizer", ["config", "show", "{cfg.yaml}", "model.attention.cross=sparsmax"], "did you"
    ),
    Case("alpha", ["config", "show", "{cfg.yaml}", "model.attention.alpha_init=2.5"], "alpha_init"),
    Case("vit patch", ["config", "show", "{vit.yaml}", "model.patch_size=5"], "divisible"),
    Case(
        "device name",
        ["train", "--config", "{cfg.yaml}", "--out", "{root}/o_dev", "train.device=gpu"],
        "not a device",
    ),
    Case(
        "no GPU",
        ["train", "--config", "{cfg.yaml}", "--out", "{root}/o_cuda", "train.device=cuda"],
        "no CUDA GPU",
        needs_no_gpu=True,
    ),
    Case("config diff missing", ["config", "diff", "{cfg.yaml}", "{root}/nope"], "not found"),
    # ----------------------------------------------------------------- command-line values
    Case("synth -5", ["data", "synth", "--out", "{root}/o_synth", "--num-images", "-5"], ">= 1"),
    Case(
        "max images 0",
        ["analyze", "--checkpoint", "{run}", "--out", "{root}/o_a0", "--max-images", "0"],
        ">= 1",
    ),
    Case("random init no config", ["analyze", "--random-init", "--out", "{root}/o_ri"], "--config"),
    Case(
        "pretrain steps 0",
        ["pretrain-backbone", "--config", "{cfg.yaml}", "--out", "{root}/o_bb.pt", "--steps", "0"],
        ">= 1",
    ),
    # ----------------------------------------------------------------- checkpoints
    Case(
        "missing checkpoint",
        ["eval", "--checkpoint", "{root}/nope.pt", "--out", "{root}/o_e1"],
        "not found",
    ),
    Case(
        "empty checkpoint", ["eval", "--checkpoint", "{empty.pt}", "--out", "{root}/o_e2"], "empty"
    ),
    Case(
        "truncated checkpoint",
        ["eval", "--checkpoint", "{truncated.pt}", "--out", "{root}/o_e3"],
        "cannot be read",
    ),
    Case(
        "random bytes",
        ["eval", "--checkpoint", "{random.pt}", "--out", "{root}/o_e4"],
        "cannot be read|loads safely",
    ),
    Case(
        "malicious pickle",
        ["eval", "--checkpoint", "{evil.pt}", "--out", "{root}/o_e5"],
        "loads safely",
    ),
    Case(
        "no config inside",
        ["eval", "--checkpoint", "{bare.pt}", "--out", "{root}/o_e6"],
        "carries no config",
    ),
    Case(
        "other normalizer",
        [*EVAL, "--out", "{root}/o_e7", "model.attention.cross=sparsemax"],
        "trained with another model",
    ),
    Case(
        "other width",
        [
            *EVAL,
            "--out",
            "{root}/o_e8",
            "--model-from-config",
            "model.hidden_dim=64",
            "model.num_heads=2",
        ],
        "does not fit",
    ),
    Case(
        "backbone file",
        ["analyze", "--checkpoint", "{bb.pt}", "--out", "{root}/o_a1"],
        "pretrain-backbone",
    ),
    # ----------------------------------------------------------------- data
    Case(
        "no data folder",
        [*EVAL, "--out", "{root}/o_d1", *DATA, "data.root={root}/nowhere"],
        "nowhere",
    ),
    Case(
        "empty annotations",
        [*EVAL, "--out", "{root}/o_d2", *DATA, "data.root={root}/c_empty"],
        "c_empty",
        raw_annotation_file("c_empty", ""),
    ),
    Case(
        "not JSON",
        [*EVAL, "--out", "{root}/o_d3", *DATA, "data.root={root}/c_html"],
        "c_html",
        raw_annotation_file("c_html", "<html>404</html>"),
    ),
    Case(
        "bbox oops",
        [*EVAL, "--out", "{root}/o_d4", *DATA, "data.root={root}/c_oops"],
        "bbox",
        coco_variant("c_oops", first_bbox("oops")),
    ),
    Case(
        "bbox NaN",
        [*EVAL, "--out", "{root}/o_d5", *DATA, "data.root={root}/c_nan"],
        "bbox",
        coco_variant("c_nan", first_bbox([float("nan"), 10, 20, 20])),
    ),
    Case(
        "no-object id",
        [*EVAL, "--out", "{root}/o_d6", *DATA, "data.root={root}/c_id6"],
        "num_classes",
        coco_variant("c_id6", use_category(6)),
    ),
    Case(
        "empty split",
        [*EVAL, "--out", "{root}/o_d7", *DATA, "data.root={root}/c_none"],
        "no images",
        coco_variant("c_none", lambda d: (d.update(images=[]), d.pop("annotations"))),
    ),
    Case(
        "missing image",
        [*EVAL, "--out", "{root}/o_d8", *DATA, "data.root={root}/coco_noimage"],
        "coco_noimage",
        drop_image_file,
    ),
    # ----------------------------------------------------------------- output folders
    Case("earlier eval", [*EVAL, "--out", "{earlier_eval}"], "--overwrite"),
    Case(
        "earlier analysis",
        ["analyze", "--checkpoint", "{run}", "--out", "{earlier_analysis}"],
        "--overwrite",
    ),
    Case("train over a run", ["train", "--config", "{cfg.yaml}", "--out", "{run}"], "--resume"),
    Case(
        "resume nothing",
        ["train", "--config", "{cfg.yaml}", "--out", "{root}/o_t1", "--resume"],
        "no checkpoint",
    ),
    Case(
        "resume changed",
        ["train", "--config", "{cfg.yaml}", "--out", "{run}", "--resume", "train.lr=5e-4"],
        "train.lr",
    ),
    Case(
        "resume + overwrite",
        ["train", "--config", "{cfg.yaml}", "--out", "{run}", "--resume", "--overwrite"],
        "pick one",
    ),
    Case("out is a file", [*EVAL, "--out", "{afile}/sub"], "afile"),
    Case(
        "lr 1e30",
        [
            "train",
            "--config",
            "{cfg.yaml}",
            "--out",
            "{root}/o_nan",
            "--quiet",
            "train.lr=1e30",
            "train.max_steps=3",
            "train.clip_max_norm=0",
        ],
        "non-finite",
    ),
    # ----------------------------------------------------------------- workbook
    Case(
        "workbook param type",
        [
            "workbook",
            "run",
            "--profile",
            "smoke",
            "--only",
            "detr/00",
            "--out",
            "{root}/o_wb",
            "-p",
            "num_samples=abc",
        ],
        "num_samples",
    ),
    Case(
        "workbook unknown id",
        ["workbook", "run", "--only", "detr/99", "--out", "{root}/o_wb2"],
        "99",
    ),
    Case("workbook profile", ["workbook", "run", "--profile", "fast"], "invalid choice"),
]


def snapshot(root: Path) -> dict[str, str]:
    """Content hashes of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@dataclass
class Outcome:
    code: int | str
    stderr: str
    traceback: bool


def run_case(case: Case, world: World) -> Outcome:
    """Run one case in-process; an exception escaping ``main`` counts as a traceback."""
    from attnkit.cli import main

    if case.setup is not None:
        case.setup(world)
    paths = world.paths()
    argv = [_fill(a, paths) for a in case.argv]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code: int | str = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
        except BaseException as exc:  # noqa: BLE001 - what reaches the user is the point
            return Outcome(type(exc).__name__, f"{type(exc).__name__}: {exc}", True)
    text = err.getvalue()
    return Outcome(code, text, "Traceback" in text)


def _fill(arg: str, paths: dict[str, str]) -> str:
    for name, value in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        arg = arg.replace("{" + name + "}", value)
    return arg


def main() -> None:
    import tempfile

    world = make_world(Path(tempfile.mkdtemp(prefix="attnkit-bad-inputs-")))
    for case in CASES:
        before = snapshot(world.root)
        outcome = run_case(case, world)
        after = snapshot(world.root)
        lost = [k for k, v in before.items() if after.get(k) != v]
        kind = (
            "traceback"
            if outcome.traceback
            else "accepted silently"
            if outcome.code == 0
            else f"exit {outcome.code}"
        )
        line = outcome.stderr.strip().splitlines()[-1][:110] if outcome.stderr.strip() else ""
        flag = f" LOST {lost[:2]}" if lost else ""
        print(f"| {case.name} | {kind}{flag} | {line.replace('|', '/')} |")


if __name__ == "__main__":
    main()

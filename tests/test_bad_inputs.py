"""Every bad input of the catalogue (``tests/bad_inputs.py``) through the ``attnkit`` command:
exit 2, one clear line, no traceback, and no file that existed before is changed."""

from __future__ import annotations

import re

import pytest
import torch
from bad_inputs import CASES, make_world, run_case, snapshot


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("bad_inputs"))


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_line_and_loses_nothing(case, world):
    if case.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if case.setup is not None:
        case.setup(world)  # what the case makes is not what it must keep
    before = snapshot(world.root)
    outcome = run_case(case, world)
    after = snapshot(world.root)
    assert not outcome.traceback, outcome.stderr
    assert outcome.code == 2, f"exit {outcome.code}: {outcome.stderr}"
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"attnkit( [\w-]+)*: error: ", line)]
    assert len(errors) == 1, outcome.stderr
    if errors[0].startswith("attnkit: error:"):  # ours; argparse adds its usage lines
        assert len(lines) == 1, outcome.stderr
    assert re.search(case.expect, errors[0]), errors[0]
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or lost: {changed}"

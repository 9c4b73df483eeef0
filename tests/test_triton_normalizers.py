"""The Triton kernels of sparsemax, entmax-1.5 and alpha-entmax, without a GPU.

Values and gradients: ``triton_checks.py`` run under Triton's interpreter on CPU tensors, in a
subprocess (``TRITON_INTERPRET=1`` must be set before triton is imported). The kernels are also
compiled for an sm_90 (H100 / H200) target, which needs no device. The dispatch
(``use_triton``) and importing attnkit without triton are checked here. GPU timings and checks
at the models' shapes: ``benchmarks/gpu_normalizers.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from attnkit.attention.kernels import triton_functions  # noqa: E402
from attnkit.attention.kernels.functions import use_fused  # noqa: E402
from attnkit.attention.kernels.triton_functions import MAX_KEYS, use_triton  # noqa: E402
from attnkit.attention.sparsemax import sparsemax  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_under_the_interpreter():
    """``triton_checks.py`` (values, gradients, masks, half precision against the ``entmax``
    package) on CPU tensors, in a subprocess: the interpreter must be on before triton is
    imported, and this process has imported it already."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop(triton_functions.TRITON_ENV, None)
    command = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "triton_checks.py")]
    command += ["-q", "-p", "no:xdist", "-p", "no:cacheprovider", "-W", "error::RuntimeWarning"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]


def _cuda_like(num_keys: int, dtype=torch.float32):
    """What ``use_triton`` reads of a CUDA tensor (there is no device here)."""
    return types.SimpleNamespace(device=torch.device("cuda"), dtype=dtype, shape=(3, num_keys))


def test_dispatch(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv(triton_functions.TRITON_ENV, raising=False)
    cpu = torch.randn(3, 10)
    assert not use_triton(cpu) and not use_triton(cpu, "torch") and not use_triton(cpu, "fused")
    assert not use_fused(cpu, "triton")
    assert use_triton(_cuda_like(10)) and use_triton(_cuda_like(MAX_KEYS, torch.bfloat16))
    assert not use_triton(_cuda_like(MAX_KEYS + 1))  # too long: the PyTorch path
    assert not use_triton(_cuda_like(10, torch.float64))  # float64 stays exact in PyTorch
    with pytest.raises(ValueError, match="backend"):
        use_triton(cpu, "cuda")
    with pytest.raises(ValueError, match="CUDA tensors"):
        sparsemax(cpu, backend="triton")  # no interpreter
    with pytest.raises(ValueError, match="float32"):
        use_triton(_cuda_like(10, torch.float64), "triton")
    assert use_triton(_cuda_like(10), "triton")
    monkeypatch.setenv(triton_functions.TRITON_ENV, "1")
    assert not use_triton(_cuda_like(10))
    with pytest.raises(RuntimeError, match="unavailable"):
        use_triton(_cuda_like(10), "triton")
    monkeypatch.setenv(triton_functions.TRITON_ENV, "0")
    assert use_triton(_cuda_like(10))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(cpu, "triton") and not use_triton(cpu)  # "auto" never picks it on CPU


def test_importing_attnkit_needs_no_triton():
    code = (
        "import sys, torch\n"
        "import attnkit.attention\n"
        "from attnkit.attention.kernels import triton_functions as tf\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
        "sys.modules['triton'] = None  # as if it were not installed\n"
        "cuda = type('T', (), {'device': torch.device('cuda'), 'dtype': torch.float32,"
        " 'shape': (2, 5)})()\n"
        "assert not tf.triton_available() and not tf.use_triton(cuda)\n"
        "from attnkit.attention.sparsemax import sparsemax\n"
        "assert sparsemax(torch.randn(2, 5), backend='torch').sum(-1).allclose(torch.ones(2))\n"
        "try:\n"
        "    tf.use_triton(cuda, 'triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'unavailable' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def _kernel_signatures(want_alpha: bool) -> dict[str, tuple[dict[str, str], dict]]:
    rows = {"n_rows": "i32", "n_cols": "i32"}
    solve = {**rows, "max_iter": "i32", "tol": "fp32"}
    back = {"p_ptr": "*fp32", "g_ptr": "*bf16"}
    return {
        "sparsemax_forward": ({"z_ptr": "*bf16", "p_ptr": "*fp32", **rows, "max_iter": "i32"}, {}),
        "sparsemax_backward": ({**back, "gi_ptr": "*bf16", **rows}, {}),
        "entmax15_forward": ({"z_ptr": "*fp16", "p_ptr": "*fp32", **solve}, {}),
        "entmax15_backward": ({**back, "gi_ptr": "*fp32", **rows}, {}),
        "alpha_entmax_forward": (
            {"z_ptr": "*fp32", "alpha_ptr": "*fp32", "p_ptr": "*fp32", **solve},
            {},
        ),
        "alpha_entmax_backward": (
            {**back, "alpha_ptr": "*fp32", "gi_ptr": "*fp32", "ga_ptr": "*fp32", **rows},
            {"WANT_ALPHA": want_alpha},
        ),
    }


@pytest.mark.parametrize("num_keys", [49, 16384])
def test_kernels_compile_for_sm90(monkeypatch, num_keys):
    """Every kernel compiles to a cubin for an H100 / H200 (no device needed)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        pytest.skip("this triton has no compiler API to target a GPU without one")
    module = triton_functions.kernels()
    block, rows, warps = triton_functions.launch_config(num_keys)
    for name, (signature, constexprs) in _kernel_signatures(num_keys < 100).items():
        constexprs = {**constexprs, "ROWS": rows, "BLOCK": block}
        signature = {**signature, **{key: "constexpr" for key in constexprs}}
        source = ASTSource(fn=getattr(module, name), signature=signature, constexprs=constexprs)
        options = {"num_warps": warps, "enable_fp_fusion": True}
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        assert compiled.asm["cubin"], name

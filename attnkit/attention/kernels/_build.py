"""Build and load the fused kernels (``sparse_rows.cpp``) once per machine, lazily.

The C++ sources are compiled on first use with ``torch.utils.cpp_extension.load`` into
``<cache>/sparse_rows_<digest>``, where the cache is ``$ATTNKIT_KERNEL_CACHE`` or the
``kernels`` folder of attnkit's cache (``$ATTNKIT_CACHE``, else ``~/.cache/attnkit``; the same
rule as ``attnkit.data.synthetic.default_cache_dir``, repeated here because ``attention``
imports nothing else of attnkit). The digest covers the sources, the compiler flags, the torch
and Python versions and, since the code is compiled for the host CPU (``-march=native``), the
CPU model and its instruction sets: a cache shared by different machines keeps one build per
kind of CPU. Concurrent processes serialise on a file lock (``torch``'s own around the build,
and one around the whole load here), so they never collide and the later ones just load.

Each load marks its build as used (its folder's time); builds of other digests (older
sources, another torch) unused for :data:`STALE_DAYS` days are removed then, so the cache
holds what its machines still run and not every version ever built.

If anything fails (no compiler, no ninja, a compile error) the failure is warned about once
and :func:`fused_ops` returns ``None``: the normalizers then use their PyTorch path, which
gives the same results. ``ATTNKIT_NO_FUSED=1`` disables the kernels without trying.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

__all__ = [
    "FUSED_ENV",
    "KERNEL_CACHE_ENV",
    "STALE_DAYS",
    "fused_disabled",
    "fused_ops",
    "kernel_cache_dir",
    "prune_stale_builds",
]

FUSED_ENV = "ATTNKIT_NO_FUSED"
KERNEL_CACHE_ENV = "ATTNKIT_KERNEL_CACHE"
STALE_DAYS = 30  # builds of other digests unused this long are removed
_NAMESPACE = "attnkit_sparse_rows"  # the TORCH_LIBRARY namespace of sparse_rows.cpp
_HERE = Path(__file__).resolve().parent
_SOURCES = ("sparse_rows.cpp",)
_HEADERS = (
    "fastmath.h",
    "lanes.h",
    "simplex_rows.h",
    "entmax_power.h",
    "entmax_steps.h",
    "entmax_rows.h",
    "sparse_rows_backward.h",
)
# -fno-math-errno / -fno-trapping-math let the compiler vectorise sqrt and selects (the code
# never reads errno nor floating-point exception flags); -ffp-contract=fast turns a * b - c
# into the exact fused multiply-add that the float32 alpha-entmax gap correction relies on;
# -fvisibility=hidden keeps the inline helpers' symbols private, so another extension that
# defines the same names (a build of other sources, say) cannot replace them at load time.
_CFLAGS = (
    "-O3",
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-ffp-contract=fast",
    "-fvisibility=hidden",
)
_NATIVE = "-march=native"

_lock = threading.Lock()
_state: dict[str, object] = {}  # "ops": the namespace once loaded, "failed": True after a failure


def fused_disabled() -> bool:
    """True when ``$ATTNKIT_NO_FUSED`` asks for the PyTorch path (any value but '', '0')."""
    return os.environ.get(FUSED_ENV, "") not in ("", "0")


def kernel_cache_dir() -> Path:
    """Where the compiled kernels live (see the module docstring)."""
    explicit = os.environ.get(KERNEL_CACHE_ENV)
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("ATTNKIT_CACHE", Path.home() / ".cache" / "attnkit")) / "kernels"


def _cpu_signature() -> str:
    """The CPU model and feature flags (what -march=native compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keys = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    lines = {line.split(":", 1)[0].strip(): line for line in text.splitlines() if ":" in line}
    return "\n".join(lines[k] for k in keys if k in lines) or platform.machine()


def _digest(flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        h.update(name.encode())
        h.update((_HERE / name).read_bytes())
    parts = (" ".join(flags), torch.__version__, sys.version, _cpu_signature())
    h.update("\n".join(parts).encode())
    return h.hexdigest()[:16]


def _build(flags: tuple[str, ...]) -> object:
    # Importing cpp_extension logs a warning about CUDA on machines without it: not our concern.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)

    # The ninja of the environment (the `ninja` package) may not be on PATH outside an
    # activated venv: torch's build looks it up there.
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    digest = _digest(flags)
    build_dir = kernel_cache_dir() / f"sparse_rows_{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    with _FileLock(build_dir / "attnkit.lock"):
        cpp_extension.load(
            name=f"{_NAMESPACE}_{digest}",
            sources=[str(_HERE / s) for s in _SOURCES],
            extra_cflags=list(flags),
            extra_ldflags=["-fopenmp"],
            extra_include_paths=[str(_HERE)],
            build_directory=str(build_dir),
            is_python_module=False,
            verbose=False,
        )
    ops = getattr(torch.ops, _NAMESPACE)
    ops.sparsemax_forward  # noqa: B018  (raises if the library did not register its ops)
    os.utime(build_dir)  # used now
    prune_stale_builds(build_dir)
    return ops


def prune_stale_builds(keep: Path, days: float = STALE_DAYS) -> list[Path]:
    """Remove the other ``sparse_rows_*`` builds beside ``keep`` unused for ``days`` days;
    returns them. A process still running one keeps its loaded copy (Linux unlinks lazily)."""
    cutoff = time.time() - days * 86400
    removed = []
    for folder in keep.parent.glob("sparse_rows_*"):
        try:
            stale = folder != keep and folder.is_dir() and folder.stat().st_mtime < cutoff
        except OSError:
            continue
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def fused_ops() -> object | None:
    """``torch.ops.attnkit_sparse_rows`` (built and loaded on first call), or ``None``.

    ``None`` when ``$ATTNKIT_NO_FUSED`` is set or when the build failed (warned once per process).
    """
    if fused_disabled():
        return None
    ops = _state.get("ops")
    if ops is not None or _state.get("failed"):
        return ops
    with _lock:
        if "ops" in _state or _state.get("failed"):
            return _state.get("ops")
        errors = []
        for flags in (_CFLAGS + (_NATIVE,), _CFLAGS):  # without -march=native if it fails
            try:
                _state["ops"] = _build(flags)
                return _state["ops"]
            except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
                errors.append(f"{type(exc).__name__}: {str(exc).strip()[-600:]}")
        _state["failed"] = True
        warnings.warn(
            "attnkit: the fused CPU kernels of sparsemax / entmax could not be built, so the "
            "(slower, equal) PyTorch path is used. Set ATTNKIT_NO_FUSED=1 to silence this. "
            "Cause: " + errors[-1],
            RuntimeWarning,
            stacklevel=2,
        )
        return None


class _FileLock:
    """An advisory lock on a file (released by the OS if the holder dies); no-op without fcntl."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> _FileLock:
        try:
            import fcntl
        except ImportError:  # Windows: rely on torch's own lock
            return self
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

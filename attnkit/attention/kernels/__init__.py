"""Fused CPU kernels of the sparse normalizers (sparsemax, entmax-1.5, alpha-entmax).

``sparse_rows.cpp`` solves each row of the scores in one or two passes held in cache, forward
and backward; it is compiled on first use and cached (see ``_build``). The normalizer modules
call it through the autograd functions of ``functions`` for CPU tensors and keep their
PyTorch path for ``ATTNKIT_NO_FUSED=1`` and when the kernels cannot be built.

``triton_rows`` holds Triton kernels of the same maps for CUDA tensors, run through the
autograd functions of ``triton_functions`` (triton imported lazily, on first use; the PyTorch
path without triton, for ``ATTNKIT_NO_TRITON=1`` and for rows longer than ``MAX_KEYS``).
"""

from attnkit.attention.kernels._build import FUSED_ENV as FUSED_ENV
from attnkit.attention.kernels._build import KERNEL_CACHE_ENV as KERNEL_CACHE_ENV
from attnkit.attention.kernels._build import fused_disabled as fused_disabled
from attnkit.attention.kernels._build import fused_ops as fused_ops
from attnkit.attention.kernels._build import kernel_cache_dir as kernel_cache_dir
from attnkit.attention.kernels.functions import BACKENDS as BACKENDS
from attnkit.attention.kernels.functions import use_fused as use_fused
from attnkit.attention.kernels.triton_functions import MAX_KEYS as MAX_KEYS
from attnkit.attention.kernels.triton_functions import TRITON_ENV as TRITON_ENV
from attnkit.attention.kernels.triton_functions import use_triton as use_triton

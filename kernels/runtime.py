"""Where the kernels run: compiled on a CUDA GPU, or under Triton's interpreter on CPU.

This module must not import triton at module level: :func:`set_interpret_mode_if_no_gpu` has to
run before the first ``import triton`` so that ``TRITON_INTERPRET=1`` is seen.
"""
from __future__ import annotations

import functools
import os
import sys

import torch

__all__ = ["has_cuda_gpu", "interpreting", "set_interpret_mode_if_no_gpu", "kernel_device", "num_sms"]


def has_cuda_gpu() -> bool:
    """True when torch sees a CUDA device (the only accelerator the kernels are built for)."""
    return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def set_interpret_mode_if_no_gpu() -> bool:
    """Without a CUDA GPU, set ``TRITON_INTERPRET=1`` before triton is imported (unless the
    variable is set explicitly, e.g. to 0 for compiling kernels for a GPU target on CPU).

    Returns whether the interpreter is in use. Raises RuntimeError when there is no GPU and
    triton was already imported in a way that cannot see the variable any more.
    """
    if has_cuda_gpu() or interpreting():
        return interpreting()
    if os.environ.get("TRITON_INTERPRET", "").strip():
        return False  # explicitly off (e.g. "0"): compile-only use, such as an sm_90 build check
    already = "triton" in sys.modules
    os.environ["TRITON_INTERPRET"] = "1"
    if already:
        # Triton >= 3.4 reads the variable through knobs at each @jit; older ones read it once.
        try:
            from triton import knobs
            ok = bool(knobs.runtime.interpret)
        except Exception:  # pragma: no cover - depends on the installed triton
            ok = False
        if not ok:
            raise RuntimeError(
                "flashproof.kernels: no CUDA GPU, and triton was imported before TRITON_INTERPRET=1 "
                "was set; set TRITON_INTERPRET=1 in the environment (or import flashproof.kernels "
                "before triton)")
    return True


def kernel_device() -> torch.device:
    """The device the kernels expect their tensors on: cuda when compiled, cpu when interpreted."""
    return torch.device("cpu") if interpreting() else torch.device("cuda")


@functools.lru_cache(maxsize=None)
def num_sms(device) -> int:
    """Streaming multiprocessors of a CUDA device (132 on an H100 or H200 SXM)."""
    return torch.cuda.get_device_properties(device).multi_processor_count

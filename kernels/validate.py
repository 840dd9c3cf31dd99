"""Argument checks shared by the launchers: every bad input is refused before any kernel runs.

Semantics (shapes, GQA, mask, scale, softcap) come from flashproof.spec; this module only adds
what the kernels themselves need (dtype, device, head-dim and grid limits).
"""
from __future__ import annotations

import math

import torch

from flashproof import spec

from .runtime import interpreting
from .tiles import MAX_HEAD_DIM

__all__ = ["DTYPES", "MAX_LEN", "MAX_GRID_YZ", "check_tensor", "check_qkv", "mask_args", "logit_scales"]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Row and key indices are int32 in the kernels, with headroom for i + diagonal + window.
MAX_LEN = 2**30
#: CUDA's limit on grid dims y and z, which carry heads and batch.
MAX_GRID_YZ = 65535


def check_tensor(x, name, *, dtypes=DTYPES, device=True, interp=None):
    """Type and dtype of x, and (device=True) that it is where the kernels run; device=False leaves
    the device to the caller (decode's metadata may also live on the host). ``interp``:
    interpreting(), when the caller knows it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {x.dtype}; supported: {', '.join(map(str, dtypes))}")
    if not device:
        return
    if interpreting() if interp is None else interp:
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}, but Triton runs interpreted on CPU here "
                             f"(TRITON_INTERPRET=1): pass CPU tensors")
    elif x.device.type != "cuda":
        raise ValueError(f"{name} is on {x.device}; the compiled kernels need CUDA tensors")


def check_qkv(q, k, v, *, names=("query", "key", "value")) -> spec.Dims:
    """Types, dtypes, devices and (B, H, L, E) shapes of q, k, v; returns spec.Dims."""
    interp = interpreting()
    for x, n in zip((q, k, v), names):
        check_tensor(x, n, interp=interp)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{names[0]}, {names[1]}, {names[2]} must share a dtype; got "
                        f"{q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{names[0]}, {names[1]}, {names[2]} must be on one device; got "
                         f"{q.device}, {k.device}, {v.device}")
    dims = spec.check_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    for n, e in ((f"{names[0]}/{names[1]} head dim E", dims.e), (f"{names[2]} head dim Ev", dims.ev)):
        if e > MAX_HEAD_DIM:
            raise ValueError(f"{n} = {e} is not supported (at most {MAX_HEAD_DIM})")
    for n, l in (("query length Lq", dims.lq), ("key length Lk", dims.lk)):
        if l >= MAX_LEN:
            raise ValueError(f"{n} = {l} is too long (below {MAX_LEN})")
    if dims.heads > MAX_GRID_YZ or dims.batch > MAX_GRID_YZ:
        raise ValueError(f"batch ({dims.batch}) and heads ({dims.heads}) must each be <= {MAX_GRID_YZ}")
    return dims


def mask_args(mask: spec.Mask, lq: int, lk: int):
    """(diag, left, right, has_left, has_right) for the kernels, from spec.Mask.

    A window side >= lq + lk allows the same keys as an unbounded one (|i + diag| <= lq + lk),
    so it is clamped there to keep the kernels' int32 arithmetic far from overflow.
    """
    diag = mask.diagonal(lq, lk)
    cap = lq + lk + 1
    left, right = mask.left, mask.right  # right already capped by causal (spec.Mask.right)
    has_left, has_right = left != spec.UNBOUNDED, right != spec.UNBOUNDED
    return diag, (min(left, cap) if has_left else 0), (min(right, cap) if has_right else 0), has_left, has_right


_FP32_MAX = 3.4028234663852886e38
_LOG2E = 1.4426950408889634


def logit_scales(scale: float, cap):
    """(qk_scale, out_scale) the kernels multiply by, in float32: scale*log2(e) and 1 without
    softcap; scale/c and c*log2(e) with softcap c (tanh acts on natural logits, log2(e) is
    folded in after it). A finite scale or softcap whose factor overflows float32 is refused:
    the kernels compute logits in float32 and would return NaN rows."""
    if cap is None:
        qk, out = scale * _LOG2E, 1.0
    else:
        qk, out = scale / cap, cap * _LOG2E
    if abs(qk) > _FP32_MAX:
        name = "scale" if cap is None else "scale / softcap"
        raise ValueError(f"{name} = {qk:g} (times log2 e) overflows float32, the kernels' logit precision; "
                         f"use |scale| <= {_FP32_MAX / _LOG2E:.3g}")
    if abs(out) > _FP32_MAX:
        raise ValueError(f"softcap = {cap:g} overflows float32 (times log2 e); a softcap this large equals no "
                         f"softcap for every float32 logit: pass softcap=None")
    assert math.isfinite(qk) and math.isfinite(out)
    return qk, out

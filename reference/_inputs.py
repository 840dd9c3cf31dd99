"""Input handling shared by every reference: exact conversion and option validation.

Every reference takes q (B,H,Lq,E), k (B,Hkv,Lk,E), v (B,Hkv,Lk,Ev) as torch tensors (any float
dtype, any device) or numpy arrays, and the common keyword options of spec. Values are
converted to float64 EXACTLY (fp16/bf16/fp32 and fp8 values are all representable in fp64), so
that mpmath and arb see exactly the numbers the kernel saw. All checks run before heavy work.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

from flashproof import spec

__all__ = ["Prepared", "prepare", "to_float64", "check_do", "mpf_to_float", "row_chunk"]

#: numpy dtypes whose every value is exactly a float64.
_EXACT_NUMPY = (np.float16, np.float32, np.float64)


def _torch():
    """torch if it is already imported (a tensor can only exist then), else None."""
    return sys.modules.get("torch")


def _is_tensor(x) -> bool:
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def _device(x) -> str:
    return str(x.device) if _is_tensor(x) else "cpu"


def to_float64(x, name: str) -> np.ndarray:
    """``x`` as a float64 numpy array, bit-exactly (no rounding on the way in)."""
    if _is_tensor(x):
        torch = _torch()
        if not (x.dtype.is_floating_point):
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.device.type == "meta":  # meta tensors have shapes but no values to compare against
            raise ValueError(f"{name} is on the meta device: a reference needs real values")
        # Every real torch float dtype (fp8/fp16/bf16/fp32/fp64) is a subset of float64.
        return x.detach().to(device="cpu", dtype=torch.float64).numpy().copy()
    if isinstance(x, np.ndarray):
        if x.dtype.type not in _EXACT_NUMPY:
            raise TypeError(f"{name} must be a float16/float32/float64 array, got dtype {x.dtype}")
        return np.array(x, dtype=np.float64)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _mask_to_numpy(m, shape):
    """attn_mask as (bool array or None, float64 bias or None), broadcast to ``shape``."""
    if _is_tensor(m):
        torch = _torch()
        if m.dtype == torch.bool:
            arr = m.detach().cpu().numpy()
        elif m.dtype.is_floating_point:
            arr = m.detach().to(device="cpu", dtype=torch.float64).numpy()
        else:
            raise TypeError(f"attn_mask must be bool or floating point, got dtype {m.dtype}")
    elif isinstance(m, np.ndarray):
        if m.dtype == np.bool_:
            arr = m
        elif m.dtype.type in _EXACT_NUMPY:
            arr = m.astype(np.float64)
        else:
            raise TypeError(f"attn_mask must be bool or float16/32/64, got dtype {m.dtype}")
    else:
        raise TypeError(f"attn_mask must be None, a torch.Tensor or a numpy.ndarray, got {type(m).__name__}")
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"attn_mask of shape {tuple(arr.shape)} does not broadcast to (B,H,Lq,Lk) = {shape}") from None
    return (arr, None) if arr.dtype == np.bool_ else (None, arr)


@dataclass(frozen=True)
class Prepared:
    """Validated inputs in float64, plus the resolved options (spec semantics)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    dims: spec.Dims
    mask: spec.Mask
    #: the caller's scale (an exact binary fraction), or None for the exact real 1/sqrt(E)
    scale: float | None
    #: the scale as a float64 (1/sqrt(E) rounded when the caller gave none)
    scale64: float
    softcap: float | None
    mask_bool: np.ndarray | None
    mask_bias: np.ndarray | None
    device: str
    dtype: object

    def kv(self, h: int) -> int:
        return int(spec.kv_head(h, self.dims.heads, self.dims.kv_heads))

    def allowed(self, b: int, h: int, r0: int = 0, r1: int | None = None, c0: int = 0, c1: int | None = None):
        """(rows, keys) bool: structural mask, boolean attn_mask and additive -inf combined."""
        d = self.dims
        r1 = d.lq if r1 is None else r1
        c1 = d.lk if c1 is None else c1
        ok = self.mask.allowed(np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :], d.lq, d.lk)
        ok = np.broadcast_to(ok, (r1 - r0, c1 - c0))
        if self.mask_bool is not None:
            ok = ok & self.mask_bool[b, h, r0:r1, c0:c1]
        if self.mask_bias is not None:
            ok = ok & ~np.isneginf(self.mask_bias[b, h, r0:r1, c0:c1])
        return np.array(ok)

    def bias(self, b: int, h: int, r0: int = 0, r1: int | None = None, c0: int = 0, c1: int | None = None):
        if self.mask_bias is None:
            return None
        return self.mask_bias[b, h, r0:r1, c0:c1]

    def key_span(self, r0: int, r1: int):
        """[lo, hi) covering every key any row in [r0, r1) may attend (structural mask only)."""
        d = self.dims
        if r1 <= r0:
            return 0, 0
        lo, hi = self.mask.key_range(np.arange(r0, r1), d.lq, d.lk)
        lo, hi = int(np.min(lo)), int(np.max(hi))
        return (lo, hi) if hi > lo else (0, 0)


def prepare(q, k, v, *, attn_mask=None, causal=False, alignment=None, window=None, scale=None,
            softcap=None, extra=()) -> Prepared:
    """Validate everything (cheap checks first) and convert the tensors exactly to float64.

    ``extra`` is a sequence of (name, tensor) whose device must match too (e.g. ``do``).
    """
    named = [("query", q), ("key", k), ("value", v)] + list(extra)
    for name, x in named:
        if not (_is_tensor(x) or isinstance(x, np.ndarray)):
            raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    devices = {name: _device(x) for name, x in named}
    if attn_mask is not None and (_is_tensor(attn_mask) or isinstance(attn_mask, np.ndarray)):
        devices["attn_mask"] = _device(attn_mask)
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors are on different devices: {devices}")
    dims = spec.check_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    scale64 = spec.resolve_scale(scale, dims.e)
    user_scale = None if scale is None else float(scale)
    cap = spec.normalize_softcap(softcap)
    shape = (dims.batch, dims.heads, dims.lq, dims.lk)
    mb, bias = (None, None) if attn_mask is None else _mask_to_numpy(attn_mask, shape)
    qa, ka, va = to_float64(q, "query"), to_float64(k, "key"), to_float64(v, "value")
    return Prepared(qa, ka, va, dims, mask, user_scale, scale64, cap, mb, bias, devices["query"], q.dtype)


def check_do(do, dims: spec.Dims) -> np.ndarray:
    """The output gradient dO (B,H,Lq,Ev), exactly in float64."""
    want = (dims.batch, dims.heads, dims.lq, dims.ev)
    if tuple(do.shape) != want:
        raise ValueError(f"do (grad of the output) must have shape (B,H,Lq,Ev) = {want}, got {tuple(do.shape)}")
    return to_float64(do, "do")


def row_chunk(lk: int, budget: int = 1 << 21) -> int:
    """Query rows per chunk so that one (rows, Lk) float64 block stays near 16 MiB."""
    return max(1, min(4096, budget // max(1, lk)))


def mpf_to_float(x) -> float:
    """Correctly round an mpmath mpf to the nearest float64 (ties to even), subnormals included.

    ``float(mpf)`` rounds twice near the subnormal range (to 53 bits, then by ldexp).
    """
    from mpmath.libmp import libmpf

    raw = x._mpf_
    sign, man, exp, bc = raw
    if not man:
        return libmpf.to_float(raw)  # zero, +-inf, nan
    if exp + bc > 1024:
        return -math.inf if sign else math.inf
    if exp + bc <= -1022:
        # Subnormal range: the quantum is 2**-1074, so round the scaled value to an integer.
        n = libmpf.to_int(libmpf.mpf_shift(raw, 1074), rnd="n")
        return math.ldexp(n, -1074)
    return libmpf.to_float(raw, rnd="n")

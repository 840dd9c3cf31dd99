"""ULPs: what one ULP of an output dtype is (``spacing``, ``ulp_error``, the audit's definition),
and the exhaustive ULP audit of the exp primitives the kernels use (GPU only).

``ulp_error``: |got - want| / spacing(max(|want|, ULP_FLOOR x the row's max |want|)) in the
output dtype, so an element far below its row's magnitude (whose error the row's rounding
sets, not its own) is measured against the ULP at 1/16 of the row's largest value.

Exp audit: every fp32 input x in [-150, 0] (the range the kernels feed to exp2: logits minus a running max,
times log2(e)) goes through ``tl.exp2`` and ``tl.exp``, and every x in [1, 2^24] (row sums) through
``tl.log2``; the result is compared with the fp64
libdevice value (error far below one fp32 ULP). Results in the normal range are measured in fp32
ULPs; results the hardware flushes to zero from the subnormal range are counted apart, since the
error model (proofs/) covers them with the absolute underflow term eta = 2^-126.
"""
from __future__ import annotations

import struct

import numpy as np

__all__ = ["exp_ulp_audit", "spacing", "ulp_error", "ULP_FLOOR"]

#: ulp_error measures an element against the ULP at max(|want|, ULP_FLOOR x its row's max |want|)
ULP_FLOOR = 2.0 ** -4


def spacing(x, dtype: str) -> np.ndarray:
    """One ULP of ``dtype`` (a torch dtype name) at each |x|: 2^floor(log2 |x|) x eps, and the
    subnormal spacing (eps x the smallest normal) below the normal range (torch.finfo's constants)."""
    import torch

    fi = torch.finfo(getattr(torch, dtype))
    a = np.maximum(np.abs(np.asarray(x, dtype=np.float64)), fi.tiny)
    with np.errstate(invalid="ignore"):
        return np.exp2(np.floor(np.log2(a))) * fi.eps


def ulp_error(got, want, dtype: str, *, floor=ULP_FLOOR) -> np.ndarray:
    """|got - want| in ULPs of ``dtype`` at max(|want|, floor x the row's max |want|) (rows: the last
    axis); NaN where got or want is not finite."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    fin = np.isfinite(want)
    mag = np.where(fin, np.abs(want), 0.0)
    row = mag.max(axis=-1, keepdims=True, initial=0.0) if mag.ndim else mag
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - want)
        return np.where(fin & np.isfinite(got), err / spacing(np.maximum(mag, floor * row), dtype), np.nan)


def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _probe(START, MAXU, SUMU, NFLUSH, NUM, FN: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        # [BLOCK] fp32 bit patterns; int64 so START + offsets never wraps
        bits = START + pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        valid = bits < START + NUM
        x = bits.to(tl.uint32).to(tl.float32, bitcast=True)
        x = tl.where(valid, x, 0.0)
        if FN == 0:
            y = tl.exp2(x)
            ref = tl.exp2(x.to(tl.float64))
        elif FN == 1:
            y = tl.exp(x)
            ref = tl.exp(x.to(tl.float64))
        else:
            y = tl.log2(x)
            ref = tl.log2(x.to(tl.float64))
        # ulps of the fp32 result; log2 near x = 1 has results near 0, measured against 2^-126 at least
        normal = tl.abs(ref) >= 1.1754943508222875e-38
        e = tl.floor(tl.log2(tl.where(normal, tl.abs(ref), 1.0)))
        ulp = tl.exp2(e - 23.0)
        u = tl.where(valid & normal, tl.abs(y.to(tl.float64) - ref) / ulp, 0.0)
        tl.store(MAXU + pid, tl.max(u, axis=0))
        tl.store(SUMU + pid, tl.sum(u, axis=0))
        flushed = valid & (~normal) & (y == 0.0) & (tl.abs(ref) >= 1.401298464324817e-45)
        tl.store(NFLUSH + pid, tl.sum(flushed.to(tl.int64), axis=0))

    return _probe


def exp_ulp_audit(lo: float = -150.0, chunk: int = 1 << 26):
    """Return one row per primitive: inputs tested, max and mean ULP error, flush count."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("the exp ULP audit needs a CUDA GPU (it measures the hardware's exp2)")
    probe = _kernels()
    bits = lambda f: struct.unpack("<I", struct.pack("<f", f))[0]
    block = 1024
    rows = []
    try:
        from flashproof.proofs.bounds import precision_for

        c_model = precision_for(torch.float16).c_exp
    except Exception:
        c_model = None
    # exp2/exp: every fp32 in [lo, 0] (negative floats: bit patterns 0x80000000 .. bits(lo));
    # log2: every fp32 in [1, 2^24] (the row sums l the kernels take log2 of)
    cases = (("tl.exp2", 0, 0x80000000, bits(lo), f"[{lo}, 0]"), ("tl.exp", 1, 0x80000000, bits(lo), f"[{lo}, 0]"),
             ("tl.log2", 2, bits(1.0), bits(2.0 ** 24), "[1, 2^24]"))
    for name, fn, first, last, rng in cases:
        total = last - first + 1
        mx, sm, fl = 0.0, 0.0, 0
        done = 0
        while done < total:
            n = min(chunk, total - done)
            grid = (n + block - 1) // block
            maxu = torch.empty(grid, dtype=torch.float64, device="cuda")
            sumu = torch.empty(grid, dtype=torch.float64, device="cuda")
            nfl = torch.empty(grid, dtype=torch.int64, device="cuda")
            probe[(grid,)](first + done, maxu, sumu, nfl, n, FN=fn, BLOCK=block)
            mx = max(mx, float(maxu.max()))
            sm += float(sumu.sum())
            fl += int(nfl.sum())
            done += n
        rows.append(dict(primitive=name, count=int(total), range=rng, max_ulp=mx, mean_ulp=sm / total,
                         flushed=fl, c_exp_model=c_model))
    return rows

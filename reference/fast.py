"""The fast float64 reference (numpy, vectorised, chunked over query rows) and the naive
same-precision baseline in torch.

``forward_fp64`` runs spec.block_state / spec.finalize with numpy ops over a chunk of query
rows at a time, one key block per chunk, so memory stays near 16 MiB per chunk whatever L.
"""
from __future__ import annotations

import numpy as np

from flashproof.spec import NumpyOps, block_state, finalize

from ._inputs import Prepared, prepare, row_chunk

__all__ = ["forward_fp64", "forward_naive", "Fp64Ops", "FP64", "masked_matmul", "logits_np"]


def masked_matmul(w, keep, x):
    """``sum_j [keep_ij] w_ij x_j`` (rows i), dropping unkept terms instead of multiplying by 0.

    A NaN/inf in ``x`` at an unkept position never leaks; at a kept one it propagates by IEEE
    rules (0 * inf = NaN included). ``w`` (n, m), ``keep`` (n, m) bool, ``x`` (m, e).
    """
    w = np.asarray(w)
    x = np.asarray(x)
    finite = np.isfinite(x)
    w0 = np.where(keep, w, 0)
    out = w0 @ np.where(finite, x, 0).astype(x.dtype, copy=False)
    if not finite.all():
        # Kept non-finite terms: redo the affected rows with IEEE semantics on the kept set only.
        bad_keys = ~finite.all(axis=1)
        rows = np.nonzero((keep[:, bad_keys]).any(axis=1))[0]
        for i in rows:
            ki = keep[i]
            out[i] = np.sum(w[i, ki][:, None] * x[ki], axis=0, dtype=out.dtype)
    return out


class Fp64Ops(NumpyOps):
    """spec's numpy ops, with the weighted sum as one gemm when v is a single (n, E) matrix."""

    def weighted_sum(self, s, p, v, dim):
        s = np.asarray(s)
        if np.ndim(v) == 2 and s.ndim == 2:
            return masked_matmul(p, ~np.isneginf(s), v)
        return super().weighted_sum(s, p, v, dim)


FP64 = Fp64Ops()


def logits_np(pb: Prepared, b: int, h: int, r0: int, r1: int, c0: int, c1: int, *, dtype=np.float64):
    """Masked logits (rows r0:r1, keys c0:c1) in ``dtype`` arithmetic: -inf where not allowed.

    Returns (s, keep, x) with x = scale * q.k before softcap (needed by the backward).
    """
    q = pb.q[b, h, r0:r1].astype(dtype, copy=False)
    k = pb.k[b, pb.kv(h), c0:c1].astype(dtype, copy=False)
    sc = dtype(pb.scale64)
    with np.errstate(invalid="ignore", over="ignore"):
        x = (q @ k.T) * sc
        s = x
        if pb.softcap is not None:
            c = dtype(pb.softcap)
            s = c * np.tanh(x / c)
        bias = pb.bias(b, h, r0, r1, c0, c1)
        if bias is not None:
            s = s + bias.astype(dtype)
    keep = pb.allowed(b, h, r0, r1, c0, c1)
    s = np.where(keep, s, dtype(-np.inf)).astype(dtype, copy=False)
    return s, keep, x


def forward_fp64(q, k, v, *, attn_mask=None, causal=False, alignment=None, window=None, scale=None,
                 softcap=None):
    """Attention in float64: ``(o (B,H,Lq,Ev), lse (B,H,Lq))`` as numpy float64.

    Fully-masked rows give o = 0, lse = -inf. The scale is 1/sqrt(E) rounded to fp64 when not
    given. Error vs the exact result: tests/test_reference_bounds.py derives its bound, and
    tests/test_reference_agreement.py checks it against the certified reference.
    """
    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap)
    return _forward_fp64(pb)


def _forward_fp64(pb: Prepared):
    d = pb.dims
    o = np.zeros((d.batch, d.heads, d.lq, d.ev))
    lse = np.full((d.batch, d.heads, d.lq), -np.inf)
    step = row_chunk(d.lk)
    for b in range(d.batch):
        for h in range(d.heads):
            vv = pb.v[b, pb.kv(h)]
            for r0 in range(0, d.lq, step):
                r1 = min(d.lq, r0 + step)
                c0, c1 = pb.key_span(r0, r1)  # keys outside the span are masked for every row
                if c1 <= c0:
                    continue
                s, _, _ = logits_np(pb, b, h, r0, r1, c0, c1)
                with np.errstate(invalid="ignore", over="ignore"):
                    st = block_state(s, vv[c0:c1], d.ev, FP64)
                    o[b, h, r0:r1], lse[b, h, r0:r1] = finalize(st, FP64)
    return o, lse


def forward_naive(q, k, v, *, attn_mask=None, causal=False, alignment=None, window=None, scale=None,
                  softcap=None):
    """The same-precision naive baseline: softmax(scale*q@k^T [softcap] + masks) @ v in torch,
    every op in the input dtype, as torch's math SDPA path does (fully-masked rows -> 0).

    Returns torch tensors (o, lse) in the input dtype on the input device. Like torch's math
    path it multiplies masked probabilities (0) by v, so a NaN/inf in a masked v DOES leak here;
    it is an error baseline, not a spec-conforming reference.
    """
    import torch

    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap)
    tq, tk, tv = (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)) for x in (q, k, v))
    if not (tq.dtype == tk.dtype == tv.dtype):
        raise TypeError(f"forward_naive needs one dtype: query {tq.dtype}, key {tk.dtype}, value {tv.dtype}")
    d = pb.dims
    dt = tq.dtype
    rep = d.heads // d.kv_heads
    tk = tk.repeat_interleave(rep, dim=1)
    tv = tv.repeat_interleave(rep, dim=1)
    s = torch.matmul(tq, tk.transpose(-1, -2)) * torch.tensor(pb.scale64, dtype=dt)
    if pb.softcap is not None:
        c = torch.tensor(pb.softcap, dtype=dt)
        s = c * torch.tanh(s / c)
    if pb.mask_bias is not None:
        s = s + torch.from_numpy(np.array(pb.mask_bias)).to(dtype=dt, device=s.device)
    allowed = np.ones((d.batch, d.heads, d.lq, d.lk), dtype=bool)
    allowed &= pb.mask.matrix(d.lq, d.lk)
    if pb.mask_bool is not None:
        allowed &= pb.mask_bool
    if pb.mask_bias is not None:
        allowed &= ~np.isneginf(pb.mask_bias)  # spec: an additive -inf masks (NaN + -inf must not leak)
    keep = torch.from_numpy(allowed).to(s.device)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.softmax(s, dim=-1)
    p = torch.where(torch.isneginf(s).all(dim=-1, keepdim=True), torch.zeros((), dtype=dt), p)
    o = torch.matmul(p, tv)
    return o, lse

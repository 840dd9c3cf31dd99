"""A kernel-like fp32 simulation of flash attention, for the tightness experiment of theorem 6.

It runs spec's own ``block_state`` / ``merge`` / ``finalize`` with :class:`KernelOps`, a numpy
ops whose arithmetic is what a flash-attention kernel does: logits t = fl(fl(q.k) fl(scale
log2 e)) in fp32, exp2 in fp32, l summing the unrounded P, P rounded to the storage dtype before
an fp32 P@V, fp32 rescales, o = acc / l in fp32 then rounded to the storage dtype, and the LSE
(m + log2 l) ln 2 in fp32. Optional split-KV: each split is finalised and the splits are combined
by spec.merge of the renormalised states (lse_s, 1, o_s). It is a *correct kernel of that
precision*, so the bounds of flashproof.proofs.bounds must hold for it.
"""
from __future__ import annotations

import math

import numpy as np

from flashproof import spec
from flashproof.spec import Float32Ops, block_state, fold, merge, partial_state, round_to

__all__ = ["KernelOps", "simulate", "exact_fp64"]

_F32 = np.float32
_LOG2E = _F32(1.0 / math.log(2.0))
_LN2 = _F32(math.log(2.0))


class KernelOps(Float32Ops):
    """fp32 flash-attention arithmetic in base 2 (scores are already multiplied by log2 e); P is
    rounded to the storage dtype ``store`` before P@V (spec.Float32Ops' p_dtype)."""

    ln_base = _LN2

    def __init__(self, store: str):
        super().__init__(p_dtype=store)

    def exp(self, x):
        return np.exp2(np.asarray(x, dtype=_F32))

    def log(self, x):
        with np.errstate(divide="ignore"):
            return np.log2(np.asarray(x, dtype=_F32))


def _logits(q, k, *, scale, mask):
    """Base-2 fp32 logits, masked keys -inf: fl(fl(q.k) * fl(scale * log2 e))."""
    c = _F32(scale * (1.0 / math.log(2.0)))
    t = (q.astype(_F32) @ np.swapaxes(k.astype(_F32), -1, -2)).astype(_F32) * c
    return np.where(mask, t, _F32(-np.inf)).astype(_F32)


def simulate(q, k, v, *, store: str, boundaries=None, splits=1, causal=False, window=None,
             alignment=None, scale=None, rng=None):
    """Kernel-like forward on numpy inputs (B, H, L, E) already in the storage dtype's values.

    ``boundaries``: key tile edges (default: one tile); ``splits``: number of split-KV groups of
    tiles (each finalised, then combined by merging renormalised states); ``rng`` shuffles the
    merge order of the splits. Returns (o float64 of storage-dtype values, lse float64 of fp32)."""
    b_, h_, lq, e = q.shape
    hk, lk, ev = k.shape[1], k.shape[2], v.shape[3]
    sigma = spec.resolve_scale(scale, e)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment).matrix(lq, lk)
    edges = [0, lk] if boundaries is None else list(boundaries)
    blocks = [(a, c) for a, c in zip(edges[:-1], edges[1:])]
    groups = np.array_split(np.arange(len(blocks)), max(1, min(splits, len(blocks))))
    ops = KernelOps(store)
    o = np.zeros((b_, h_, lq, ev))
    lse = np.zeros((b_, h_, lq))
    for bi in range(b_):
        for hi in range(h_):
            kh = spec.kv_head(hi, h_, hk)
            t = _logits(q[bi, hi], k[bi, kh], scale=sigma, mask=mask)
            vv = v[bi, kh].astype(_F32)
            parts = []
            for g in groups:
                st = None
                for idx in g:
                    a, c = blocks[idx]
                    bs = block_state(t[:, a:c], vv[a:c], ev, ops)
                    st = bs if st is None else merge(st, bs, ops)
                parts.append(st)
            if len(parts) == 1:
                ob, lb = ops.finalize(parts[0])
            else:  # split-KV: finalise each split, combine renormalised states (lse2_s, 1, o_s)
                ren = []
                for st in parts:
                    os_, ls_ = ops.finalize(st)
                    ren.append(partial_state(os_, (ls_ * _LOG2E).astype(_F32), ops))
                order = list(range(len(ren)))
                if rng is not None:
                    rng.shuffle(order)
                ob, lb = ops.finalize(fold([ren[i] for i in order], ev, ops))
            o[bi, hi] = round_to(ob, store)
            lse[bi, hi] = lb
    return o, lse


def exact_fp64(q, k, v, *, causal=False, window=None, alignment=None, scale=None):
    """fp64 softmax attention (its error, ~1e-16 relative, is far below every bound compared)."""
    b_, h_, lq, e = q.shape
    hk, lk = k.shape[1], k.shape[2]
    sigma = spec.resolve_scale(scale, e)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment).matrix(lq, lk)
    kk = np.repeat(k.astype(np.float64), h_ // hk, axis=1)
    vv = np.repeat(v.astype(np.float64), h_ // hk, axis=1)
    s = sigma * (q.astype(np.float64) @ np.swapaxes(kk, -1, -2))
    s = np.where(mask, s, -np.inf)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    w = np.exp(s - m)
    tot = w.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.where(tot > 0, (w @ vv) / np.where(tot > 0, tot, 1.0), 0.0)
        lse = np.where(tot[..., 0] > 0, m[..., 0] + np.log(np.where(tot[..., 0] > 0, tot[..., 0], 1.0)), -np.inf)
    return o, lse

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

__all__ = ["KernelOps", "simulate", "exact_fp64", "simulate_backward", "exact_backward_fp64",
           "block_fma", "simulate_block_fma"]

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


def simulate_backward(q, k, v, do, *, store: str, boundaries=None, causal=False, window=None, alignment=None,
                      scale=None):
    """The FlashAttention-2 backward in a kernel's fp32 arithmetic, on numpy inputs (B, H, L, E) already
    in the storage dtype's values: the forward (tiles ``boundaries``, spec's merge) gives the stored O
    and the base-2 LSE; then P = exp2(t - lse2) recomputed, D = rowsum(dO o O) in fp32, dP = dO V^T,
    dS = fl_in(P (dP - D)), dV = fl_in(P)^T dO, dK = scale dS^T Q, dQ = scale dS K (fp32 sums),
    stored in the storage dtype. Returns (dq, dk, dv) float64."""
    b_, h_, lq, e = q.shape
    hk, lk, ev = k.shape[1], k.shape[2], v.shape[3]
    sigma = spec.resolve_scale(scale, e)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment).matrix(lq, lk)
    edges = [0, lk] if boundaries is None else list(boundaries)
    ops = KernelOps(store)
    dq = np.zeros((b_, h_, lq, e))
    dk = np.zeros((b_, hk, lk, e), dtype=_F32)
    dv = np.zeros((b_, hk, lk, ev), dtype=_F32)
    sc = _F32(sigma)
    for bi in range(b_):
        for hi in range(h_):
            kh = spec.kv_head(hi, h_, hk)
            t = _logits(q[bi, hi], k[bi, kh], scale=sigma, mask=mask)
            vv = v[bi, kh].astype(_F32)
            st = None
            for a, c in zip(edges[:-1], edges[1:]):
                bs = block_state(t[:, a:c], vv[a:c], ev, ops)
                st = bs if st is None else merge(st, bs, ops)
            o, _ = ops.finalize(st)
            o = round_to(o, store)
            l = np.asarray(st.l, dtype=_F32)
            empty = l == 0
            with np.errstate(divide="ignore"):
                lse2 = np.where(empty, -np.inf, (np.asarray(st.m, dtype=_F32) + np.log2(np.where(empty, 1, l))).astype(_F32))
            with np.errstate(invalid="ignore", over="ignore"):
                p = np.where(np.isneginf(t) | empty[:, None], _F32(0),
                             np.exp2((t - np.where(empty, 0, lse2)[:, None]).astype(_F32))).astype(_F32)
            g = do[bi, hi].astype(_F32)
            d = np.sum((g * o).astype(_F32), axis=1, dtype=_F32)
            dp = (g @ vv.T).astype(_F32)
            ds = round_to((p * (dp - d[:, None]).astype(_F32)).astype(_F32), store)
            dv[bi, kh] += (round_to(p, store).T @ g).astype(_F32)
            dk[bi, kh] += (ds.T @ q[bi, hi].astype(_F32)).astype(_F32)
            dq[bi, hi] = round_to(((ds @ k[bi, kh].astype(_F32)).astype(_F32) * sc).astype(_F32), store)
    dk = round_to((dk * sc).astype(_F32), store).astype(np.float64)
    return dq, dk, round_to(dv, store).astype(np.float64)


def exact_backward_fp64(q, k, v, do, *, causal=False, window=None, alignment=None, scale=None):
    """fp64 gradients of softmax attention (its error, ~1e-15 relative, is far below every bound compared)."""
    b_, h_, lq, e = q.shape
    hk, lk = k.shape[1], k.shape[2]
    sigma = spec.resolve_scale(scale, e)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment).matrix(lq, lk)
    dq = np.zeros(q.shape)
    dk = np.zeros(k.shape)
    dv = np.zeros(v.shape)
    for bi in range(b_):
        for hi in range(h_):
            kh = spec.kv_head(hi, h_, hk)
            s = np.where(mask, sigma * (q[bi, hi] @ k[bi, kh].T), -np.inf)
            m = s.max(axis=1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            w = np.exp(s - m)
            tot = w.sum(axis=1, keepdims=True)
            p = np.where(tot > 0, w / np.where(tot > 0, tot, 1.0), 0.0)
            o = p @ v[bi, kh]
            g = do[bi, hi]
            ds = p * (g @ v[bi, kh].T - np.sum(g * o, axis=1, keepdims=True))
            dq[bi, hi] = sigma * ds @ k[bi, kh]
            dk[bi, kh] += sigma * ds.T @ q[bi, hi]
            dv[bi, kh] += p.T @ g
    return dq, dk, dv


def _round32(s, final: str):
    """float64 values rounded to float32: "rn" nearest-even, "rz" toward zero."""
    y = s.astype(_F32)
    if final == "rz":
        over = np.abs(y.astype(np.float64)) > np.abs(s)
        y = np.where(over, np.nextafter(y, _F32(0)), y)
    return y


def block_fma(acc, a, b, *, k_blk: int, extra_bits: int, final: str):
    """acc + sum_e a_e b_e on a block-FMA matrix unit (proofs/accumulation.py), vectorised: acc (...,)
    float32, a and b (..., m) exact in float64 (storage values: their products are exact in float64).
    Each block of ``k_blk`` products and the accumulator are aligned to the largest exponent keeping
    24 + ``extra_bits`` bits by truncation, summed exactly (< 53 bits), and normalised rn/rz."""
    acc = np.asarray(acc, dtype=_F32)
    m = a.shape[-1]
    for s0 in range(0, m, k_blk):
        terms = np.concatenate([acc.astype(np.float64)[..., None], a[..., s0:s0 + k_blk] * b[..., s0:s0 + k_blk]], -1)
        _, ex = np.frexp(np.abs(terms).max(axis=-1))
        q = np.ldexp(1.0, ex - 1 - 24 - extra_bits + 1)[..., None]
        with np.errstate(invalid="ignore"):
            total = np.where(q > 0, np.trunc(terms / q) * q, 0.0).sum(axis=-1)
        acc = _round32(total, final)
    return acc


def simulate_block_fma(q, k, v, *, store: str, k_blk: int, extra_bits: int, final: str, boundaries=None,
                       scale=None):
    """A flash-attention forward whose two matmuls (q.k and P@V into the rescaled accumulator) run on a
    block-FMA matrix unit, the rest IEEE fp32 (exp2, l sums, rescales, division), P rounded to the
    storage dtype before P@V, the output stored in it. (B, H, L, E) numpy inputs in the storage
    dtype's values; no masks. Returns (o, lse) float64."""
    b_, h_, lq, e = q.shape
    hk, lk, ev = k.shape[1], k.shape[2], v.shape[3]
    sigma = spec.resolve_scale(scale, e)
    c = _F32(sigma * (1.0 / math.log(2.0)))
    edges = [0, lk] if boundaries is None else list(boundaries)
    fma = dict(k_blk=k_blk, extra_bits=extra_bits, final=final)
    o = np.zeros((b_, h_, lq, ev))
    lse = np.zeros((b_, h_, lq))
    for bi in range(b_):
        for hi in range(h_):
            kh = spec.kv_head(hi, h_, hk)
            qq, kk, vv = q[bi, hi].astype(np.float64), k[bi, kh].astype(np.float64), v[bi, kh].astype(np.float64)
            t = block_fma(np.zeros((lq, lk), _F32), qq[:, None, :], kk[None, :, :], **fma) * c
            m = np.full(lq, -np.inf, dtype=_F32)
            l = np.zeros(lq, dtype=_F32)
            acc = np.zeros((lq, ev), dtype=_F32)
            for a0, a1 in zip(edges[:-1], edges[1:]):
                mn = np.maximum(m, t[:, a0:a1].max(axis=1)).astype(_F32)
                alpha = np.exp2((m - mn).astype(_F32)).astype(_F32)
                p = np.exp2((t[:, a0:a1] - mn[:, None]).astype(_F32)).astype(_F32)
                l = (l * alpha + p.sum(axis=1, dtype=_F32)).astype(_F32)
                pr = round_to(p, store).astype(np.float64)
                acc = block_fma((acc * alpha[:, None]).astype(_F32), pr[:, None, :], vv[a0:a1].T[None, :, :], **fma)
                m = mn
            o[bi, hi] = round_to((acc / l[:, None]).astype(_F32), store)
            lse[bi, hi] = ((m + np.log2(l)).astype(_F32) * _LN2).astype(_F32)
    return o, lse

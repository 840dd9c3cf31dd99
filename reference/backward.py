"""Backward references: (dq, dk, dv) given dO, in float64 (numpy) and in mpmath.

With s = c*tanh(x/c) + bias, x = scale * q.k, P = exp(s - lse) over the allowed keys:
    dP = dO v^T,  D = rowsum(dO * O),  dS = P * (dP - D),  dX = dS * (1 - tanh(x/c)^2)
    dq = scale * dX k,  dk = scale * dX^T q,  dv = P^T dO
dk and dv are summed over the query heads sharing a KV head (GQA). Masked pairs are dropped
(never 0 * NaN), so empty rows give zero gradients and masked garbage never leaks.
"""
from __future__ import annotations

import mpmath
import numpy as np

from ._inputs import check_do, prepare, row_chunk
from .fast import _forward_fp64, logits_np, masked_matmul
from .mp import MpPrepared, to_float_array

__all__ = ["backward_fp64", "backward_mp"]


def backward_fp64(q, k, v, do, *, attn_mask=None, causal=False, alignment=None, window=None,
                  scale=None, softcap=None):
    """Gradients in float64: (dq (B,H,Lq,E), dk (B,Hkv,Lk,E), dv (B,Hkv,Lk,Ev)) numpy float64."""
    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap, extra=[("do", do)])
    d = pb.dims
    g = check_do(do, d)
    o, lse = _forward_fp64(pb)
    dq = np.zeros_like(pb.q)
    dk = np.zeros_like(pb.k)
    dv = np.zeros_like(pb.v)
    step = row_chunk(d.lk)
    for b in range(d.batch):
        for h in range(d.heads):
            hk = pb.kv(h)
            for r0 in range(0, d.lq, step):
                r1 = min(d.lq, r0 + step)
                c0, c1 = pb.key_span(r0, r1)
                if c1 <= c0:
                    continue
                s, keep, x = logits_np(pb, b, h, r0, r1, c0, c1)
                kk, vv = pb.k[b, hk, c0:c1], pb.v[b, hk, c0:c1]
                dor, qr = g[b, h, r0:r1], pb.q[b, h, r0:r1]
                with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                    p = np.where(keep, np.exp(s - lse[b, h, r0:r1, None]), 0.0)
                    dp = dor @ vv.T  # used only where kept (np.where selects, never multiplies)
                    dd = np.sum(dor * o[b, h, r0:r1], axis=-1)
                    ds = np.where(keep, p * (dp - dd[:, None]), 0.0)
                    if pb.softcap is not None:
                        t = np.tanh(x / pb.softcap)
                        ds = np.where(keep, ds * (1.0 - t * t), 0.0)
                    dq[b, h, r0:r1] = pb.scale64 * masked_matmul(ds, keep, kk)
                    dk[b, hk, c0:c1] += pb.scale64 * masked_matmul(ds.T, keep.T, qr)
                    dv[b, hk, c0:c1] += masked_matmul(p.T, keep.T, dor)
    return dq, dk, dv


def backward_mp(q, k, v, do, *, prec=128, as_mpf=False, attn_mask=None, causal=False, alignment=None,
                window=None, scale=None, softcap=None):
    """Gradients in mpmath at ``prec`` bits, from the mp forward (O, LSE) at the same precision.

    Every sum is an exact dot product rounded once (mpmath.fdot); returns float64 arrays
    correctly rounded, or raw mpf object arrays with ``as_mpf=True``. For small problems.
    """
    if isinstance(prec, bool) or not isinstance(prec, int) or prec < 2:
        raise ValueError(f"prec must be an int >= 2 (bits), got {prec!r}")
    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap, extra=[("do", do)])
    d = pb.dims
    g = check_do(do, d)
    mq = MpPrepared(pb, prec)
    o, lse = mq.forward_rows()
    with mpmath.mp.workprec(max(prec, 53)), np.errstate(invalid="ignore"):
        gm = np.frompyfunc(mpmath.mpf, 1, 1)(g).tolist() if g.size else np.empty(g.shape, object).tolist()
    dq = np.empty(pb.q.shape, dtype=object)
    dk = np.empty(pb.k.shape, dtype=object)
    dv = np.empty(pb.v.shape, dtype=object)
    rep = d.heads // d.kv_heads
    with mpmath.mp.workprec(prec):
        zero = mpmath.mpf(0)
        for b in range(d.batch):
            for hk in range(d.kv_heads):
                # Terms of dk_j and dv_j over every (head, row) of the group that attends key j.
                dk_terms = [([], []) for _ in range(d.lk)]
                dv_terms = [([], []) for _ in range(d.lk)]
                for h in range(hk * rep, (hk + 1) * rep):
                    keep = pb.allowed(b, h)
                    kh, vh, qh, gh = mq.k[b][hk], mq.v[b][hk], mq.q[b][h], gm[b][h]
                    for i in range(d.lq):
                        js = np.nonzero(keep[i])[0].tolist()
                        if not js:
                            dq[b, h, i, :] = [zero] * d.e
                            continue
                        di = mpmath.fdot(gh[i], o[b, h, i].tolist())
                        bias = pb.bias(b, h, i, i + 1)
                        dx = []
                        for j in js:
                            x = mq.raw_logit(b, h, i, j)
                            s = mq.capped(x)
                            if bias is not None:
                                s = s + mpmath.mpf(float(bias[0, j]))
                            p = mpmath.exp(s - lse[b, h, i])
                            dsij = p * (mpmath.fdot(gh[i], vh[j]) - di)
                            if mq.cap is not None:
                                dsij = dsij * (1 - mpmath.tanh(x / mq.cap) ** 2)
                            dx.append(dsij)
                            dk_terms[j][0].append(dsij)
                            dk_terms[j][1].append(qh[i])
                            dv_terms[j][0].append(p)
                            dv_terms[j][1].append(gh[i])
                        dq[b, h, i, :] = [mq.scale * mpmath.fdot(dx, [kh[j][e] for j in js]) for e in range(d.e)]
                for j in range(d.lk):
                    cs, vs = dk_terms[j]
                    dk[b, hk, j, :] = [mq.scale * mpmath.fdot(cs, [x[e] for x in vs]) for e in range(d.e)]
                    cs, vs = dv_terms[j]
                    dv[b, hk, j, :] = [mpmath.fdot(cs, [x[e] for x in vs]) for e in range(d.ev)]
    if as_mpf:
        return dq, dk, dv
    return to_float_array(dq), to_float_array(dk), to_float_array(dv)

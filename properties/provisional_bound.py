"""PROVISIONAL running error bound, used only until flashproof.proofs.bounds lands.

properties/oracle.py calls ``flashproof.proofs.bounds.running_forward_bound`` when it exists and
falls back to this module otherwise (and says so in every report). Same signature and meaning:
a per-element upper bound on |computed - exact| for ANY correct kernel of the given precision.

Derivation (standard model fl(a op b) = (a op b)(1 + d) + e, |d| <= u, |e| <= eta):

1. Logits. Each s_ij = scale * q_i.k_j is computed in the accumulator from n_ij nonzero exact
   products: |err| <= gamma(n_ij + 1, 2 u_acc) * scale * sum|q_ie k_je| (2u: tensor cores may
   truncate instead of rounding), plus u_acc |s_ij| for the scale multiply, plus the softcap's
   division, tanh (c_exp ulps) and multiply, plus u_acc |s| for adding a bias. Call it delta_ij.
   A further relative error theta <= 3 u_acc common to the whole row (the rounded scale
   constant, a log2(e) fold) shifts every logit by theta * s_ij.
2. Softmax weights. Shifting all logits of a row by a constant changes nothing, so only
   per-term perturbations count: the weight of key j is exp(s_ij + a_j) / Z with
   |a_j| <= Lambda_j = delta_j + 5 u_acc |x_j| + 2 u_acc (delta_j + max_k delta_ik), x_j = s_j - m
   (theta on x_j, and the rounding of the exp arguments s - m and of the tile rescales
   m_old - m_new, which telescope to at most |x_j|). With p the exact softmax,
   |p'_j - p_j| <= max(p_j e^{Lambda_j} / Z_lo - p_j, p_j - p_j e^{-Lambda_j} / Z_hi) and
   o' - o = sum_j (p'_j - p_j)(v_j - o).
3. Relative rounding on top: every term of the row sum sees (T + 1) exps of c_exp ulps, 2T
   rescale multiplies and a sum of at most Lk terms: rho_D; P@V adds the rounding of P to the
   storage dtype and the product: rho_N. N/D with such per-term errors moves by at most
   (rho_N sum p'|v| + rho_D |o'|) / (1 - rho_D).
4. Absolute underflow: each P rounded to storage loses <= eta_in, each fp32 exp flushed <= 2^-126,
   in units where the row's largest weight is 1 (so the row sum is >= 1 - rho_D).
5. Final division (u_acc) and the store to the storage dtype (u_in |o| + eta_in).

The LSE bound is the same perturbation without the shift cancellation (theta |s_j|), plus log
(c_exp ulps), the add m + log l, a base conversion and the fp32 store.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flashproof import spec

__all__ = ["Precision", "precision_for", "running_forward_bound", "PROVISIONAL"]

#: Marker the oracle reports while this module is the bound in use.
PROVISIONAL = True

_FORMATS = {
    # name: (unit roundoff, half the smallest subnormal, largest finite)
    "float16": (2.0 ** -11, 2.0 ** -25, 65504.0),
    "bfloat16": (2.0 ** -8, 2.0 ** -134, 3.3895313892515355e38),
    "float32": (2.0 ** -24, 2.0 ** -150, 3.4028234663852886e38),
    "float64": (2.0 ** -53, 2.0 ** -1075, 1.7976931348623157e308),
}


@dataclass(frozen=True)
class Precision:
    """Unit roundoffs of storage (u_in) and accumulator (u_acc), exp error in ulps, and the
    absolute underflow eta of a rounding to the storage dtype."""

    u_in: float
    u_acc: float
    c_exp: float
    eta: float
    name: str
    eta_acc: float = 2.0 ** -126  # fp32 flush-to-zero of subnormal exps
    acc_max: float = 3.4028234663852886e38


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    if name in ("half",):
        name = "float16"
    if name not in _FORMATS:
        raise ValueError(f"dtype must be one of {tuple(_FORMATS)}, got {dtype!r}")
    return name


def precision_for(dtype, *, accumulator="fp32", c_exp=4.0) -> Precision:
    """Precision of a kernel storing ``dtype`` with fp32 (or ``same``) accumulators."""
    name = _dtype_name(dtype)
    if accumulator not in ("fp32", "same"):
        raise ValueError(f"accumulator must be 'fp32' or 'same', got {accumulator!r}")
    if not (isinstance(c_exp, (int, float)) and c_exp >= 0):
        raise ValueError(f"c_exp must be a non-negative number of ulps, got {c_exp!r}")
    u_in, eta, _ = _FORMATS[name]
    acc = "float32" if accumulator == "fp32" and name != "float64" else name
    u_acc, eta_acc, acc_max = _FORMATS[acc]
    if acc == "float32":
        eta_acc = 2.0 ** -126  # FTZ: a flushed subnormal loses up to the smallest normal
    return Precision(u_in=u_in, u_acc=u_acc, c_exp=float(c_exp), eta=eta, name=f"{name}/{acc}",
                     eta_acc=eta_acc, acc_max=acc_max)


def _gamma(n, u):
    nu = np.asarray(n, dtype=np.float64) * u
    return np.where(nu < 0.5, nu / (1.0 - nu), np.inf)


def _np(x):
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    import torch

    return x.detach().to("cpu", torch.float64).numpy()


def running_forward_bound(q, k, v, *, precision: Precision, n_tiles=None, attn_mask=None, causal=False,
                          alignment=None, window=None, scale=None, softcap=None):
    """(o_bound (B,H,Lq,Ev), lse_bound (B,H,Lq)): per-element bounds on |computed - exact|."""
    if not isinstance(precision, Precision):
        raise TypeError(f"precision must be a Precision, got {type(precision).__name__}")
    d = spec.check_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    sc = spec.resolve_scale(scale, d.e)
    cap = spec.normalize_softcap(softcap)
    if n_tiles is not None and (isinstance(n_tiles, bool) or not isinstance(n_tiles, int) or n_tiles < 1):
        raise ValueError(f"n_tiles must be a positive int or None, got {n_tiles!r}")
    q64, k64, v64 = _np(q), _np(k), _np(v)
    shape = (d.batch, d.heads, d.lq, d.lk)
    keep = np.broadcast_to(mask.matrix(d.lq, d.lk), shape).copy()
    bias = None
    if attn_mask is not None:
        am = _np(attn_mask) if not _is_bool(attn_mask) else _bool_np(attn_mask)
        am = np.broadcast_to(am, shape)
        if am.dtype == np.bool_:
            keep &= am
        else:
            keep &= ~np.isneginf(am)
            bias = np.where(np.isneginf(am), 0.0, am)
    u, ui, ce = precision.u_acc, precision.u_in, precision.c_exp
    T = d.lk if n_tiles is None else n_tiles
    rho_d = math.expm1((T + 1) * math.log1p(ce * u) + 2 * T * math.log1p(u)
                       + math.log1p(float(_gamma(d.lk + 1, 2 * u))))
    rho_n = (1 + rho_d) * (1 + ui) * (1 + u) - 1
    o_b = np.zeros((d.batch, d.heads, d.lq, d.ev))
    l_b = np.zeros((d.batch, d.heads, d.lq))
    rep = d.heads // d.kv_heads
    g64 = float(_gamma(d.e + 2, 2.0 ** -53))  # our own float64 evaluation of the logits
    for b in range(d.batch):
        for h in range(d.heads):
            qb, kb, vb = q64[b, h], k64[b, h // rep], v64[b, h // rep]
            kp = keep[b, h]
            with np.errstate(all="ignore"):
                dot = qb @ kb.T
                absdot = np.abs(qb) @ np.abs(kb).T
                nnz = (qb != 0).astype(np.float64) @ (kb != 0).astype(np.float64).T
                s = sc * dot
                a_abs = sc * absdot
                delta = _gamma(nnz + 1, 2 * u) * a_abs + nnz * precision.eta_acc * sc + u * np.abs(s) + g64 * a_abs
                over = absdot > precision.acc_max / 4  # the accumulator may overflow: no bound
                if cap is not None:
                    t = s / cap
                    sc_ = cap * np.tanh(t)
                    delta = delta + u * np.abs(s) + cap * ce * u * np.abs(np.tanh(t)) + u * np.abs(sc_)
                    s = sc_
                if bias is not None:
                    s = s + bias[b, h]
                    delta = delta + u * np.abs(s) + u * np.abs(bias[b, h])
            o_b[b, h], l_b[b, h] = _rows(s, delta, kp, over, vb, precision, rho_d, rho_n)
    return o_b, l_b


def _is_bool(x) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype == np.bool_
    import torch

    return x.dtype == torch.bool


def _bool_np(x):
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def _rows(s, delta, keep, over, v, prec: Precision, rho_d, rho_n):
    """Bounds for one (b, h): s, delta, keep, over are (Lq, Lk); v is (Lk, Ev)."""
    u, ui = prec.u_acc, prec.u_in
    lq, lk = s.shape
    ev = v.shape[1]
    o_b = np.zeros((lq, ev))
    l_b = np.zeros(lq)
    nonempty = keep.any(axis=1)
    if not nonempty.any():
        return o_b, l_b
    with np.errstate(all="ignore"):
        sm = np.where(keep, s, -np.inf)
        m = sm.max(axis=1)
        m = np.where(nonempty, m, 0.0)
        x = np.where(keep, s - m[:, None], -np.inf)
        dmax = np.where(keep, delta, 0.0).max(axis=1)
        lam = delta + 5 * u * np.abs(np.where(keep, x, 0.0)) + 2 * u * (delta + dmax[:, None])
        lam = np.where(keep, lam, 0.0)
        logl = np.log(np.sum(np.where(keep, np.exp(x), 0.0), axis=1))
        lp = np.where(keep, x - logl[:, None], -np.inf)
        p = np.exp(lp)
        up = np.exp(lp + lam)
        dn = np.exp(lp - lam)
        z_hi = up.sum(axis=1)
        z_lo = dn.sum(axis=1)
        p1 = np.maximum(up / z_lo[:, None] - p, p - dn / z_hi[:, None])
        cap = np.maximum(p, 1.0 - p)  # a weight in [0, 1] moves by at most this, whatever Lambda
        p1 = np.where(np.isnan(p1), cap, np.minimum(p1, cap))
        p1 = np.where(keep, p1, 0.0)
        vfin = np.isfinite(v).all(axis=1)
        bad_row = (keep & ~vfin[None, :]).any(axis=1) | ~np.isfinite(np.where(keep, s, 0.0)).all(axis=1)
        bad_row |= (keep & over).any(axis=1) | ~np.isfinite(delta).all(axis=1) & nonempty
        v0 = np.where(vfin[:, None], v, 0.0)
        absv = np.abs(v0)
        o = p @ v0
        # sum_j p1_ij |v_jc - o_ic|, in row chunks to bound memory
        dev = np.empty((lq, ev))
        step = max(1, (1 << 22) // max(1, lk * ev))
        for r0 in range(0, lq, step):
            r1 = min(lq, r0 + step)
            dev[r0:r1] = np.einsum("ij,ijc->ic", p1[r0:r1], np.abs(v0[None, :, :] - o[r0:r1, None, :]))
        pv = p @ absv + p1 @ absv
        rnd = (rho_n * pv + rho_d * (np.abs(o) + dev)) / (1 - rho_d)
        n = keep.sum(axis=1)[:, None].astype(np.float64)
        vrow = absv.max(axis=1, initial=0.0) if ev else np.zeros(lk)
        vmax = np.max(np.where(keep, vrow[None, :], 0.0), axis=1, initial=0.0)[:, None]
        absn = n * prec.eta * vmax + n * prec.eta_acc * vmax
        absd = n * prec.eta_acc
        mag = np.abs(o) + dev + rnd
        ab = (absn + mag * absd) / (1 - rho_d)
        pre = dev + rnd + ab
        pre = pre + u * (np.abs(o) + pre)  # the final division
        ob = pre + ui * (np.abs(o) + pre) + prec.eta  # the store to the storage dtype
        ob = ob * (1 + 2.0 ** -40)  # our own float64 evaluation of this formula
        # LSE: no cancellation of the common relative error theta on the logits.
        lam2 = delta + 3 * u * np.abs(np.where(keep, s, 0.0)) + 2 * u * (np.abs(np.where(keep, x, 0.0)) + delta + dmax[:, None])
        lam2 = np.where(keep, lam2, 0.0)
        pert = np.maximum(np.log(np.sum(np.exp(lp + lam2), axis=1)), -np.log(np.sum(np.exp(lp - lam2), axis=1)))
        lse = m + logl
        lrnd = -math.log1p(-rho_d) + n[:, 0] * prec.eta_acc / (1 - rho_d)
        lfin = u * (2 * (np.abs(m) + np.abs(logl)) + prec.c_exp * np.abs(logl) + 3 * np.abs(lse))
        lb = (pert + lrnd + lfin) * (1 + 2.0 ** -40) + 2.0 ** -1000
        ob = np.where(bad_row[:, None], np.inf, ob)
        lb = np.where(bad_row, np.inf, lb)
        o_b = np.where(nonempty[:, None], ob, 0.0)
        l_b = np.where(nonempty, lb, 0.0)
    return o_b, l_b

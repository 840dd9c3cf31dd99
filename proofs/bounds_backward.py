"""Executable error bound of the attention backward (theorem 4b), generated from the SymPy derivation.

:func:`running_backward_bound` bounds |computed - exact| per element of dQ, dK and dV for ANY kernel
of the given precision that computes the FlashAttention-2 backward: D from its forward's stored O,
P recomputed from its forward's stored LSE, dP on the matrix unit, dS rounded to the storage dtype
before the matmuls, P rounded to the storage dtype for dV, any summation order (Kahan included),
the scale applied after the sums, the results stored in the storage dtype. The forward's O and LSE
errors are theorem 6's bounds (``running_forward_bound`` with the same precision and ``n_tiles``,
no LSE combine), or given explicitly (``o_error``, ``lse_error``). The exact gradient is that of
the stored q, k, v and dO. Masks, GQA, softcap, additive masks and a gradient reaching the LSE
(``dlse``) follow running_forward_bound's conventions.
"""
from __future__ import annotations

import numpy as np

from flashproof import spec

from .bounds import _check_on_unbounded, _check_precision, _pos_int, _raise_unbounded, running_forward_bound
from .bounds_eval import U64 as _U64
from .bounds_eval import as_f64 as _as_f64
from .bounds_eval import kv_groups, lambdify_golden, logit_terms, rowwise
from .bounds_eval import mask_arg as _mask_arg
from .bounds_eval import mma_args as _mma
from .precision import Precision

__all__ = ["running_backward_bound"]


def _load():
    try:
        from . import bounds_backward_gen as g
    except ImportError:  # first generation: lambdify the golden file
        from .golden_paths import BACKWARD_GOLDEN_PATH

        return lambdify_golden(BACKWARD_GOLDEN_PATH)[0]
    return dict(g.FUNCTIONS)


_FB = _load()


def _gam(n, u=_U64):
    n = np.asarray(n, dtype=np.float64)
    return n * u / (1 - n * u)


def running_backward_bound(q, k, v, do, *, precision: Precision, n_tiles=None, attn_mask=None, causal=False,
                           alignment=None, window=None, scale=None, softcap=None, dlse=None, o_error=None,
                           lse_error=None, on_unbounded="inf"):
    """Per-element bounds (dq_bound (B,H,Lq,E), dk_bound (B,Hkv,Lk,E), dv_bound (B,Hkv,Lk,Ev)), float64.

    ``n_tiles``: the forward's key tiles (None: any tiling), used for the forward errors of the O
    and LSE the backward consumed. ``dlse``: the gradient reaching the LSE output (B, H, Lq), if
    any. ``o_error`` (B,H,Lq,Ev) / ``lse_error`` (B,H,Lq): bounds on |O_used - O| and |LSE_used -
    LSE| of the O and LSE the backward consumed, instead of theorem 6's (e.g. a target whose O and
    LSE come from another forward). Empty rows get dq bound 0, keys no row attends dk = dv = 0.
    NaN/inf in an allowed q, k, v, dO or bias: NaN for the gradients it reaches (no claim). Where a
    kernel of the model may overflow: inf, or :class:`~flashproof.proofs.bounds.Unbounded` with
    ``on_unbounded="raise"``.
    """
    _check_precision(precision)
    _check_on_unbounded(on_unbounded)
    qn, kn, vn, gn = _as_f64("query", q), _as_f64("key", k), _as_f64("value", v), _as_f64("grad_out", do)
    dims = spec.check_dims(qn.shape, kn.shape, vn.shape)
    b_, h_, hk, lq, lk, e, ev = dims.batch, dims.heads, dims.kv_heads, dims.lq, dims.lk, dims.e, dims.ev
    if gn.shape != (b_, h_, lq, ev):
        raise ValueError(f"grad_out must have shape {(b_, h_, lq, ev)} (B, H, Lq, Ev), got {gn.shape}")
    dl = None
    if dlse is not None:
        dl = _as_f64("dlse", dlse)
        if dl.shape != (b_, h_, lq):
            raise ValueError(f"dlse must have shape {(b_, h_, lq)} (B, H, Lq), got {dl.shape}")
    if n_tiles is not None:
        n_tiles = _pos_int("n_tiles", n_tiles)
    opts = dict(attn_mask=attn_mask, causal=causal, alignment=alignment, window=window, scale=scale, softcap=softcap)
    if o_error is None or lse_error is None:
        ob, lb = running_forward_bound(q, k, v, precision=precision, n_tiles=n_tiles, lse_combine=False, **opts)
    om = ob if o_error is None else _given("o_error", o_error, (b_, h_, lq, ev))
    la = lb if lse_error is None else _given("lse_error", lse_error, (b_, h_, lq))
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    sigma = spec.resolve_scale(scale, e)
    cap = spec.normalize_softcap(softcap)
    bmask, bias = _mask_arg(attn_mask, (b_, h_, lq, lk))
    dq_b = np.zeros((b_, h_, lq, e))
    dk_b = np.zeros((b_, hk, lk, e))
    dv_b = np.zeros((b_, hk, lk, ev))
    if min(b_, h_, lq, lk) == 0:
        return dq_b, dk_b, dv_b
    grp = h_ // hk
    unbounded = []
    for bi, kh, hs_, allowed, bsl in kv_groups(dims, mask, bmask, bias):
        dls = None if dl is None else dl[bi, hs_].reshape(grp * lq)
        with np.errstate(all="ignore"):
            a, bk, bv, why = _slice(qn[bi, hs_].reshape(grp * lq, e), kn[bi, kh], vn[bi, kh],
                                    gn[bi, hs_].reshape(grp * lq, ev), allowed, bsl, dls,
                                    om[bi, hs_].reshape(grp * lq, ev), la[bi, hs_].reshape(grp * lq),
                                    sigma, cap, precision)
        dq_b[bi, hs_] = a.reshape(grp, lq, e)
        dk_b[bi, kh], dv_b[bi, kh] = bk, bv
        unbounded += [((bi, kh * grp + r // lq, r % lq), w_) for r, w_ in why]
    if unbounded and on_unbounded == "raise":
        _raise_unbounded(unbounded, "backward bound")
    return dq_b, dk_b, dv_b


def _given(name, x, shape):
    a = _as_f64(name, x)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if (a < 0).any():
        raise ValueError(f"{name} must be >= 0 (a bound on an absolute error)")
    return a


def _slice(qs, ks, vs, gs, allowed, bias, dls, om, la, sigma, cap, p):
    """Bounds of one (batch, kv-head) slice: rows R = its query rows of every head of the group.
    Every quantity below is evaluated in float64 with its own evaluation error carried (``io``:
    relative error of the computed P; ``ea``: of the P argument; gamma_n(2^-53) for the sums)."""
    r, e = qs.shape
    lk, ev = vs.shape
    lt = logit_terms(qs, ks, allowed, bias, sigma, cap, p, fast=False)
    ok = lt.ok
    vfin = np.isfinite(vs).all(axis=1)
    gfin = np.isfinite(gs).all(axis=1)
    dfin = np.ones(r, dtype=bool) if dls is None else np.isfinite(dls)
    row_bad = lt.bad_row | ~gfin | ~dfin | ~np.isfinite(la) & ~np.isinf(la) | np.isnan(om).any(axis=1)
    pair_bad = allowed & (row_bad[:, None] | ~vfin[None, :])
    row_bad |= pair_bad.any(axis=1)
    ok &= ~row_bad[:, None]
    n_i = ok.sum(axis=1)
    v0 = np.where(vfin[:, None], vs, 0.0)
    g0 = np.where(gfin[:, None], gs, 0.0)
    lam = np.where(ok.any(axis=1), la, 0.0)
    om0 = np.where(ok.any(axis=1)[:, None], om, 0.0)
    # exact-ish quantities (fp64) and their evaluation errors
    s = np.where(ok, lt.s, -np.inf)
    mx = s.max(axis=1, initial=-np.inf)
    mx = np.where(np.isfinite(mx), mx, 0.0)
    lse = mx + np.log(np.maximum(np.where(ok, np.exp(s - mx[:, None]), 0.0).sum(axis=1), 1.0))
    a_l = np.where(ok, lse[:, None] - s, 0.0)
    P = np.where(ok, np.exp(-a_l), 0.0)
    nn = np.maximum(n_i, 1)
    ea = 2 * lt.evmax + 2.0 ** -50 * (np.abs(lse) + lt.sa.max(axis=1, initial=0.0) + np.log(nn) + 1)
    io = np.expm1(ea) + 2.0 ** -50                       # |P_exact - P| <= io P
    g_lk, g_ev, g_r = _gam(lk + 2), _gam(ev + 2), _gam(r + 2)
    av = np.abs(v0)
    ag = np.abs(g0)
    pv = rowwise(P, av)                                  # sum_j P |v|
    o64 = rowwise(P, v0)
    e_o = (io + g_lk)[:, None] * (1 + io[:, None]) * pv
    A = rowwise(ag, av.T)                                # sum_e |dO||v|, per pair
    dp = rowwise(g0, v0.T)
    e_dp = g_ev * A
    d64 = (g0 * o64).sum(axis=1) - (0.0 if dls is None else np.where(ok.any(axis=1), dls, 0.0))
    e_d = (ag * e_o).sum(axis=1) + g_ev * (ag * np.abs(o64)).sum(axis=1) + _U64 * np.abs(d64)
    bexp = dp - d64[:, None]
    eb = e_dp + e_d[:, None]
    B_up = np.where(ok, np.abs(bexp) + eb, 0.0)
    P_up = P * (1 + io[:, None])
    # softcap: c' = 1 - tanh^2 of the pre-cap logit, its value and the kernel's error on it
    if cap:
        t = np.tanh(lt.xs / cap)
        cp = np.where(ok, 1 - t * t, 0.0)
        ecp = 4.0 * (lt.evk / cap + 2.0 ** -50) * np.abs(t) + 2.0 ** -50  # fp64 evaluation of c'
        dt = _FB["dt"](lt.dcore, np.where(ok, np.abs(lt.xs), 0.0) + lt.evk, cap, p.u_acc, p.tanh_ulps)
        dcp = np.where(ok, _FB["dcp"](np.abs(t), dt, cp, p.u_acc), 0.0) + ecp
        cp_up, hflag = cp + ecp, 1.0
    else:
        cp = cp_up = np.where(ok, 1.0, 0.0)
        ecp = dcp = np.zeros_like(P)
        hflag = 0.0
    # the kernel's errors
    m = dict(_mma(p), u_dot=p.u_dot)
    pe = _FB["p_err"](np.where(ok, a_l, 0.0), lt.delta + ea[:, None], lam[:, None], p.u_acc, p.c_exp, p.eta)
    pe = np.where(ok, pe + P * np.expm1(ea)[:, None], 0.0)
    th_ev = _FB["theta_mma"](float(ev), **m)
    eP = th_ev * A * (1 + g_ev)
    w1 = (ag * om0).sum(axis=1) * (1 + g_ev)
    w2 = (ag * (np.abs(o64) + e_o)).sum(axis=1) * (1 + g_ev)
    eD = _FB["d_err"](w1, w2, np.abs(d64) + e_d, float(ev), p.u_acc, 0.0 if dls is None else 1.0)
    es = _FB["ds_err"](P_up, pe, B_up, eP, eD[:, None], cp_up, dcp, hflag, p.u_acc, p.u_in, p.eta_in)
    es = np.where(ok, es, 0.0) * (1 + 2.0 ** -46)
    ds64 = np.where(ok, P * bexp * cp, 0.0)
    dsa = np.where(ok, P_up * B_up * cp_up, 0.0)         # >= |dS_exact|
    e_ds = np.where(ok, P * (io[:, None] * B_up * cp_up + eb * cp_up + np.abs(bexp) * ecp), 0.0)
    # dQ: sums over the row's allowed keys
    ak, aq = np.abs(ks), np.abs(qs)
    k0 = np.where(np.isfinite(ks), ks, 0.0)
    q0 = np.where(np.isfinite(qs), qs, 0.0)
    s2q = rowwise(dsa, np.abs(k0)) * (1 + g_lk)
    dq64 = sigma * rowwise(ds64, k0)
    gq = np.abs(dq64) + sigma * (rowwise(e_ds, np.abs(k0)) + g_lk * s2q)
    dq_b = _FB["grad_err"](rowwise(es, np.abs(k0)) * (1 + g_lk), s2q, gq, sigma, np.maximum(n_i, 1)[:, None],
                           1.0, p.u_acc, p.u_in, p.eta_in, **m) * (1 + 2.0 ** -40)
    # dK, dV: sums over the (row, head) pairs that attend each key
    m_j = ok.sum(axis=0)
    s2k = rowwise(dsa.T, np.abs(q0)) * (1 + g_r)
    dk64 = sigma * rowwise(ds64.T, q0)
    gk = np.abs(dk64) + sigma * (rowwise(e_ds.T, np.abs(q0)) + g_r * s2k)
    dk_b = _FB["grad_err"](rowwise(es.T, np.abs(q0)) * (1 + g_r), s2k, gk, sigma, np.maximum(m_j, 1)[:, None],
                           1.0, p.u_acc, p.u_in, p.eta_in, **m) * (1 + 2.0 ** -40)
    ept = np.where(ok, _FB["pt_err"](P_up, pe, p.u_in, p.eta_in), 0.0)
    s2v = rowwise(P_up.T, ag) * (1 + g_r)
    dv64 = rowwise(P.T, g0)
    gv = np.abs(dv64) + rowwise((P * io[:, None]).T, ag) + g_r * s2v
    dv_b = _FB["grad_err"](rowwise(ept.T, ag) * (1 + g_r), s2v, gv, 1.0, np.maximum(m_j, 1)[:, None], 0.0,
                           p.u_acc, p.u_in, p.eta_in, **m) * (1 + 2.0 ** -40)
    # no claim where an input is not finite; nothing where nothing is attended; inf where the model may overflow
    over = (~np.isfinite(lam) | ~np.isfinite(om0).all(axis=1) | (np.where(ok, lt.delta, 0.0).max(axis=1, initial=0.0)
                                                                 + lam > 80.0))
    over_j = (ok & over[:, None]).any(axis=0)
    dq_b = np.where(over[:, None], np.inf, dq_b)
    dk_b = np.where(over_j[:, None], np.inf, dk_b)
    dv_b = np.where(over_j[:, None], np.inf, dv_b)
    dq_b = np.where((n_i > 0)[:, None], dq_b, 0.0)
    dk_b = np.where((m_j > 0)[:, None], dk_b, 0.0)
    dv_b = np.where((m_j > 0)[:, None], dv_b, 0.0)
    dq_b = np.where(row_bad[:, None], np.nan, dq_b)
    col_bad = pair_bad.any(axis=0)
    dk_b = np.where(col_bad[:, None], np.nan, dk_b)
    dv_b = np.where(col_bad[:, None], np.nan, dv_b)
    why = [(int(i), "the forward bound is infinite for this row, or its logit and LSE errors exceed 80 "
                    "(the recomputed P may overflow)") for i in np.flatnonzero(over & (n_i > 0) & ~row_bad)]
    return dq_b, dk_b, dv_b, why

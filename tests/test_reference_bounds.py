"""Error bounds of the float64 (and true-fp32 tiled) reference paths, used by the other
tests/test_reference_*.py files, and the measured elementary-function accuracies they assume.

Derivation (standard model fl(a op b) = (a op b)(1 + d), |d| <= u, gamma_n = n u / (1 - n u);
Higham, "Accuracy and Stability of Numerical Algorithms", ch. 3), for one row i, per column e:

  logits   x^_j = fl(fl(q.k_j) * sc^): |x^_j - x_j| <= gamma_{E+3} * sc * sum_e |q_e k_je|
           (dot product in any order, FMA or not: gamma_E; sc^ = fl(1/fl(sqrt E)): gamma_2; product: u)
  softcap  c*tanh(x/c) is 1-Lipschitz in x; its own roundings add (3 + 2 c_tanh) u |x^_j|
  bias     + u |s^_j|;  shift z_j = fl(s^_j - m): + u |s^_j - m|   => tau_j bounds all of it
  exp      p^_j = exp(s_j - m) e^{tau_j} (1 + 2 c_exp u)   => relative error eta = e^tau (1+2 c_exp u) - 1
           (a depth-d merge tree multiplies each p by d rescale factors: tau += d*(...), see fp32 use)
  sums     acc and l by gemm / pairwise sum over n keys: gamma_n each; division: u
  => |o^ - o| <= [2 eta/(1-eta) + 2 gamma_n/(1-gamma_n)] (1 + u) V + u V,   V = max_j |v_je|
     |lse^ - lse| <= -log(1-eta) - log(1-gamma_n) + 2 c_log u |log l^| + u |lse^|
  (the weighted mean moves by at most eta/(1-eta) * max_j |v_j - o| <= 2 eta/(1-eta) V.)
Exp results below 2**-1022 lose the relative model: n * 2**-1073 is added to eta (l >= 1).
"""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from flashproof.reference._inputs import prepare
from flashproof.reference.fast import _forward_fp64, logits_np

__all__ = ["C_EXP64", "C_LOG64", "C_TANH64", "C_EXP32", "C_LOG32", "C_TANH32", "gamma",
           "forward_bound", "backward_bound_fp64"]

# Declared worst-case ulp errors of numpy's elementary functions on this platform; the test
# below measures them (measured on the dev machine: exp64 0.64, log64 0.49, tanh64 1.08,
# exp32 2.04, log32 1.33, tanh32 1.31 ulp), and each constant is about 2x the measurement.
C_EXP64, C_LOG64, C_TANH64 = 2.0, 2.0, 2.0
C_EXP32, C_LOG32, C_TANH32 = 4.0, 4.0, 4.0

U64 = 2.0 ** -53
U32 = 2.0 ** -24


def gamma(n, u=U64):
    n = np.asarray(n, dtype=np.float64)
    return n * u / (1.0 - n * u)


def _logit_err(pb, b, h, s_hat, x_hat, keep, u, c_tanh):
    """tau before the shift: |s^ - s| per (row, key) (see the module docstring)."""
    qa = np.abs(pb.q[b, h])
    ka = np.abs(pb.k[b, pb.kv(h)])
    err = gamma(pb.dims.e + 3, u) * abs(pb.scale64) * (qa @ ka.T)
    if pb.softcap is not None:
        err = err + (3 + 2 * c_tanh) * u * np.abs(x_hat)
    if pb.mask_bias is not None:
        err = err + u * np.abs(np.where(keep, s_hat, 0.0))
    return err


def forward_bound(pb, *, u=U64, c_exp=C_EXP64, c_log=C_LOG64, c_tanh=C_TANH64, depth=0, dtype=np.float64):
    """(B_o, B_lse, tau) bounding |computed - exact| of the float reference in precision ``u``.

    ``depth`` is the merge-tree depth of a tiled evaluation: each level rescales p by a
    computed exp(m_a - m) (argument rounding u*range, exp 2 c_exp u) and a product and an
    addition (2u), and acc/l pass through one more addition (n = Lk + depth terms).
    """
    d = pb.dims
    bo = np.zeros((d.batch, d.heads, d.lq, d.ev))
    bl = np.zeros((d.batch, d.heads, d.lq))
    taus = []
    n = d.lk + depth
    gn = gamma(n, u)
    tiny = 2.0 * np.finfo(dtype).tiny  # per-term absolute error once exp leaves the normal range
    for b in range(d.batch):
        for h in range(d.heads):
            s, keep, x = logits_np(pb, b, h, 0, d.lq, 0, d.lk, dtype=dtype)
            s = s.astype(np.float64)
            x = x.astype(np.float64)
            err = _logit_err(pb, b, h, s, x, keep, u, c_tanh)
            m = np.max(np.where(keep, s, -np.inf), axis=1, initial=-np.inf)
            mm = np.where(np.isfinite(m), m, 0.0)
            spread = np.where(keep, np.abs(s - mm[:, None]), 0.0)
            tau = np.where(keep, err + u * spread, 0.0)
            rng_ = spread.max(axis=1, initial=0.0)
            tmax = tau.max(axis=1, initial=0.0) + depth * ((2 * c_exp + 3) * u + u * rng_)
            eta = np.exp(tmax) * (1 + 2 * c_exp * u) - 1 + n * tiny
            vmax = np.where(keep[:, :, None], np.abs(pb.v[b, pb.kv(h)])[None], 0.0).max(axis=1, initial=0.0)
            t = 2 * eta / (1 - eta) + 2 * gn / (1 - gn)
            bo[b, h] = ((t * (1 + u) + u)[:, None]) * vmax
            # |log l^| <= log(n) + eta + gamma_n: l^ is within (1 +- eta)(1 +- gamma_n) of l in [1, n].
            logl = math.log(max(n, 1)) + eta + gn
            lse_abs = np.abs(mm) + logl
            bl[b, h] = -np.log1p(-eta) - np.log1p(-gn) + 2 * c_log * u * logl + u * lse_abs
            taus.append(tau)
    return bo, bl, taus


def backward_bound_fp64(pb, do, *, d_terms=None, u=U64, c_exp=C_EXP64, c_tanh=C_TANH64, scale_sqrt=False):
    """First-order bound on |grad^ - grad| of backward_fp64 (see the derivation inline).

    ``d_terms``: number of terms of the computed D (Ev for dO.O; Lk for torch's sum_j P dP).
    ``scale_sqrt``: the scale was applied as sqrt(scale) on q and k (torch's math path): the
    sqrt and two products, 4u more in each logit. Second-order terms are O(eta^2) relative, below 1e-13 here.
    """
    d = pb.dims
    g = np.asarray(do, dtype=np.float64)
    o, lse = _forward_fp64(pb)
    bo, bl, _ = forward_bound(pb, u=u, c_exp=c_exp, c_tanh=c_tanh)
    nt = d.ev if d_terms is None else d_terms
    rep = d.heads // d.kv_heads
    sc = abs(pb.scale64)
    bq = np.zeros_like(pb.q)
    bk = np.zeros_like(pb.k)
    bv = np.zeros_like(pb.v)
    for b in range(d.batch):
        for h in range(d.heads):
            hk = pb.kv(h)
            s, keep, x = logits_np(pb, b, h, 0, d.lq, 0, d.lk)
            dls = _logit_err(pb, b, h, s, x, keep, u, c_tanh) + (4 * u * sc * (np.abs(pb.q[b, h]) @ np.abs(pb.k[b, hk]).T) if scale_sqrt else 0)
            row = np.where(np.isfinite(lse[b, h]), lse[b, h], 0.0)[:, None]
            with np.errstate(over="ignore", invalid="ignore"):
                p = np.where(keep, np.exp(s - row), 0.0)
            # P^ relative error: logit error, LSE error, the subtraction and exp.
            rho = np.where(keep, np.exp(dls + bl[b, h][:, None] + u * np.abs(s - row)) * (1 + 2 * c_exp * u) - 1, 0.0)
            vv, kk, qq, gg = pb.v[b, hk], pb.k[b, hk], pb.q[b, h], g[b, h]
            dp = gg @ vv.T
            e1 = gamma(d.ev, u) * (np.abs(gg) @ np.abs(vv).T)
            dd = np.sum(gg * o[b, h], axis=1)
            if d_terms is None:  # D = dO . O^ over Ev terms, O^ within the forward bound
                e2 = gamma(d.ev, u) * np.sum(np.abs(gg * o[b, h]), axis=1) + np.sum(np.abs(gg) * bo[b, h], axis=1)
            else:  # D = sum_j P dP over Lk terms (torch): the P and dP errors enter through it
                e2 = gamma(nt, u) * np.sum(p * np.abs(dp), axis=1) + np.sum(p * (rho * np.abs(dp) + e1), axis=1)
            z = np.abs(dp - dd[:, None])
            eds = p * (1 + rho) * (rho * z + e1 + e2[:, None] + 2 * u * z)
            ds = p * z
            if pb.softcap is not None:
                t = np.tanh(x / pb.softcap)
                dt = (dls + u * np.abs(x)) / pb.softcap + 2 * c_tanh * u * np.abs(t)
                f = 1 - t * t
                edf = 2 * np.abs(t) * dt + dt * dt + 2 * u
                eds = eds * f + ds * edf + u * ds * f
                ds = ds * f
            eds = np.where(keep, eds, 0.0)
            ds = np.where(keep, ds, 0.0)
            bq[b, h] = sc * (eds @ np.abs(kk) + gamma(d.lk + 3, u) * (ds @ np.abs(kk)))
            bk[b, hk] += sc * (eds.T @ np.abs(qq) + gamma(d.lq * rep + 3, u) * (ds.T @ np.abs(qq)))
            bv[b, hk] += (rho * p).T @ np.abs(gg) + gamma(d.lq * rep, u) * (p.T @ np.abs(gg))
    return bq, bk, bv


def _ulp_error(f, mf, x, dt):
    y = f(x.astype(dt))
    worst = 0.0
    with mpmath.mp.workprec(120):
        for xi, yi in zip(x.astype(dt).tolist(), y.tolist()):
            ex = mf(mpmath.mpf(xi))
            if ex == 0:
                continue
            worst = max(worst, float(abs(mpmath.mpf(yi) - ex)) / float(np.spacing(dt(abs(float(ex))))))
    return worst


@pytest.mark.parametrize("dt,ce,cl,ct", [(np.float64, C_EXP64, C_LOG64, C_TANH64),
                                         (np.float32, C_EXP32, C_LOG32, C_TANH32)])
def test_declared_elementary_function_ulps_hold(dt, ce, cl, ct):
    rng = np.random.default_rng(7)
    lo = -745.0 if dt is np.float64 else -87.0
    x = np.concatenate([rng.uniform(lo, 0, 1500), rng.uniform(-1, 1, 500), rng.uniform(-30, 0, 500)])
    assert _ulp_error(np.exp, mpmath.exp, x, dt) <= ce
    assert _ulp_error(np.log, mpmath.log, np.exp(rng.uniform(-50, 50, 1500)), dt) <= cl
    assert _ulp_error(np.tanh, mpmath.tanh, rng.uniform(-6, 6, 1500), dt) <= ct


def test_forward_bound_is_not_vacuous():
    # The bound must be small enough to catch a real error: ~1e-13 relative at L=64, E=32.
    rng = np.random.default_rng(0)
    pb = prepare(rng.standard_normal((1, 1, 64, 32)), rng.standard_normal((1, 1, 64, 32)),
                 rng.standard_normal((1, 1, 64, 32)))
    bo, bl, _ = forward_bound(pb)
    assert bo.max() < 1e-12 and bl.max() < 1e-12

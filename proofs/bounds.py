"""Executable error bounds of the attention forward, generated from the SymPy derivation.

The expressions live in proofs/golden/fp_error.json, written by flashproof.proofs.fp_error
(theorem 6) and re-derived and compared by the tests; SymPy's NumPyPrinter turns them into
proofs/bounds_gen.py (also checked against a fresh generation), which this module evaluates:

- :func:`apriori_forward_bound` / :func:`apriori_lse_bound`: closed forms from a few scalars.
- :func:`running_forward_bound`: per element of O and of the LSE, along the actual data.

Both are rigorous upper bounds on |computed - exact| for ANY kernel of the given precision that
computes the spec's online-softmax recurrence in floating point: any tiling, any merge tree,
optionally one split-KV LSE-combine level (``lse_combine``), the declared scalar and matrix-unit
accumulation (``precision_for(accumulator=...)``), P rounded to the storage dtype before P@V
while l sums the unrounded P, the output rounded to the storage dtype on store, exp with
``c_exp`` ulps and flush-to-zero, GQA, masks, softcap and additive masks. The exact result is
the one of the stored (already rounded) q, k, v. A TF32 kernel is NOT an fp32 kernel: use
``precision_for(torch.float32, tf32=True)`` for it.

Finite wherever a claim is possible: the LSE bound holds at any logit magnitude, and so does the
output's convexity cap without an LSE combine. An element is ``inf`` only where a kernel of the
model may overflow (dot products, sums or the store beyond the format, or an LSE combine whose
weights may overflow); ``on_unbounded="raise"`` turns that into an :class:`Unbounded` error that
names the rows and the reason. NaN/inf in an allowed q, k, v or bias: NaN (no claim).

Evaluation: float64, row by row. A row's bounds depend only on that row's q, its mask, and the k, v
of its allowed keys (bitwise: every product over keys or head dims is a matrix-vector product of
fixed shape and layout per row, every reduction runs along the row), never on the rest of the batch.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from flashproof import spec

from .bounds_eval import FN as _FN
from .bounds_eval import RND as _RND
from .bounds_eval import TANH_EXTRA as _TANH_EXTRA  # noqa: F401  (tests compare it with the golden file)
from .bounds_eval import TINY as _TINY
from .bounds_eval import U64 as _U64
from .bounds_eval import affine as _affine
from .bounds_eval import as_f64 as _as_f64
from .bounds_eval import lambdify_golden as _lambdify_golden  # noqa: F401  (tests lambdify the golden file)
from .bounds_eval import kv_groups, logit_terms, rowwise
from .bounds_eval import mask_arg as _mask_arg
from .bounds_eval import mma_args as _mma
from .bounds_eval import row_value_stats as _row_value_stats
from .golden_paths import GOLDEN_PATH
from .precision import C_EXP_MEASURED, FORMATS, Precision, precision_for

__all__ = [
    "Precision",
    "precision_for",
    "C_EXP_MEASURED",
    "FORMATS",
    "Unbounded",
    "apriori_forward_bound",
    "apriori_lse_bound",
    "running_forward_bound",
    "GOLDEN_PATH",
]


class Unbounded(ArithmeticError):
    """Some rows admit no finite bound (a kernel of the model may overflow there); ``rows`` lists
    (batch, head, query) indices, ``reason`` says which assumption fails."""

    def __init__(self, message, rows=(), reason=""):
        super().__init__(message)
        self.rows, self.reason = list(rows), reason


# ---------------------------------------------------------------------------------------------
# The generated expressions (loaded once).

def _check_precision(precision):
    if not isinstance(precision, Precision):
        raise TypeError(f"precision must be a flashproof.proofs.Precision (see precision_for), got {type(precision).__name__}")


def _pos_int(name, x):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{name} must be a positive int, got {x!r}")
    return int(x)


def _nonneg(name, x):
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (0 <= x < math.inf):
        raise ValueError(f"{name} must be a finite real >= 0, got {x!r}")
    return float(x)


def _flag(name, x):
    if not isinstance(x, bool):
        raise TypeError(f"{name} must be a bool, got {type(x).__name__}")
    return 1.0 if x else 0.0


def _finite_or_inf(val) -> float:
    val = float(val)
    return val if (val >= 0 and math.isfinite(val)) else math.inf


def apriori_forward_bound(*, precision, e, lk, n_tiles, max_logit, max_v, softcap=None, lse_combine=True) -> float:
    """Closed-form bound on |o_computed - o_exact| per output element.

    ``max_logit`` bounds ``scale * sum_e |q_e| |k_e|`` over allowed pairs (hence also every
    |logit|; the dot-product error scales with the absolute products, not with their sum);
    ``max_v`` bounds |v|; ``lk`` bounds the number of allowed keys of a row; ``n_tiles`` the
    number of key tiles (leaves of the merge tree, all splits together); ``lse_combine``: the
    kernel may combine splits through their LSEs (one level). Always finite without an LSE
    combine: the convexity cap holds whatever the logit errors."""
    _check_precision(precision)
    e, lk, n_tiles = _pos_int("e", e), _pos_int("lk", lk), _pos_int("n_tiles", n_tiles)
    gm, vm = _nonneg("max_logit", max_logit), _nonneg("max_v", max_v)
    hs = _flag("lse_combine", lse_combine)
    cap = spec.normalize_softcap(softcap)
    p = precision
    m = _mma(p)
    args = (p.u_in, p.u_acc, p.u_dot, p.c_exp, p.tanh_ulps, p.eta, p.eta_in, e, lk, n_tiles, gm, vm,
            cap or 0.0, 1.0 if cap else 0.0, hs, m["u_mma"], m["k_mma"])
    with np.errstate(all="ignore"):
        budget = float(_FN["apriori_budget"](*(args[:11] + args[12:])))
        first = _finite_or_inf(_FN["o_apriori"](*args)) if budget < 1 else math.inf
        cap_b = _finite_or_inf(_FN["o_cap_apriori"](*args))  # convexity cap: any logit errors
    return min(first, cap_b)


def apriori_lse_bound(*, precision, e, lk, n_tiles, max_logit, softcap=None, lse_combine=True) -> float:
    """Closed-form bound on |lse_computed - lse_exact| (natural log), same arguments as
    :func:`apriori_forward_bound`; finite at any ``max_logit``."""
    _check_precision(precision)
    e, lk, n_tiles = _pos_int("e", e), _pos_int("lk", lk), _pos_int("n_tiles", n_tiles)
    gm = _nonneg("max_logit", max_logit)
    hs = _flag("lse_combine", lse_combine)
    cap = spec.normalize_softcap(softcap)
    p = precision
    m = _mma(p)
    args = (p.u_in, p.u_acc, p.u_dot, p.c_exp, p.tanh_ulps, p.eta, p.eta_in, e, lk, n_tiles, gm,
            cap or 0.0, 1.0 if cap else 0.0, hs, m["u_mma"], m["k_mma"])
    with np.errstate(all="ignore"):
        first = math.inf
        if float(_FN["apriori_budget"](*args)) < 1:
            first = _finite_or_inf(_FN["lse_apriori"](*args))
        anyb = _finite_or_inf(_FN["lse_any_apriori"](p.u_acc, p.u_dot, p.c_exp, p.tanh_ulps, p.eta, e, lk, n_tiles,
                                                      gm, cap or 0.0, 1.0 if cap else 0.0, hs, m["u_mma"], m["k_mma"]))
    return min(first, anyb)


# ---------------------------------------------------------------------------------------------
# Running bound.

def running_forward_bound(q, k, v, *, precision, n_tiles=None, attn_mask=None, causal=False,
                          alignment=None, window=None, scale=None, softcap=None, lse_combine=True,
                          on_unbounded="inf"):
    """Per-element bounds (o_bound (B,H,Lq,Ev), lse_bound (B,H,Lq)), numpy float64.

    ``n_tiles``: the number of key tiles of the kernel (leaves of its merge tree, all splits
    together); None means any tiling (n_tiles = Lk). ``lse_combine``: the kernel may combine
    split-KV partial results through their LSEs (flash-decoding; one level); False for kernels
    whose every merge combines raw (m, l, acc) states (spec.merge), which gives finite output
    bounds at any logit magnitude. Empty rows get bound 0 (their output must be exactly 0 and
    their LSE -inf). Elements whose exact value is not finite (NaN/inf in an allowed q, k, v or
    bias) get NaN: no claim. Where a kernel of the model may overflow the element is inf, or,
    with ``on_unbounded="raise"``, :class:`Unbounded` is raised naming the rows and the reason.
    """
    _check_precision(precision)
    _check_on_unbounded(on_unbounded)
    hs = _flag("lse_combine", lse_combine)
    q, k, v = _as_f64("query", q), _as_f64("key", k), _as_f64("value", v)
    dims = spec.check_dims(q.shape, k.shape, v.shape)
    b_, h_, hk, lq, lk, e, ev = dims.batch, dims.heads, dims.kv_heads, dims.lq, dims.lk, dims.e, dims.ev
    if n_tiles is None:
        n_tiles = max(lk, 1)
    n_tiles = _pos_int("n_tiles", n_tiles)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    sigma = spec.resolve_scale(scale, e)
    cap = spec.normalize_softcap(softcap)
    bmask, bias = _mask_arg(attn_mask, (b_, h_, lq, lk))
    o_bound = np.zeros((b_, h_, lq, ev))
    lse_bound = np.zeros((b_, h_, lq))
    if min(b_, h_, lq, lk) == 0:
        return o_bound, lse_bound
    grp = h_ // hk
    unbounded = []
    for bi, kh, hs_, allowed, bsl in kv_groups(dims, mask, bmask, bias):
        with np.errstate(all="ignore"):  # inf/NaN are handled explicitly
            ob, lb, why = _slice_bound(q[bi, hs_].reshape(grp * lq, e), k[bi, kh], v[bi, kh], allowed, bsl, sigma,
                                       cap, precision, n_tiles, hs)
        o_bound[bi, hs_] = ob.reshape(grp, lq, ev)
        lse_bound[bi, hs_] = lb.reshape(grp, lq)
        for r, reason in why:
            unbounded.append(((bi, kh * grp + r // lq, r % lq), reason))
    if unbounded and on_unbounded == "raise":
        _raise_unbounded(unbounded, "bound")
    return o_bound, lse_bound


def _check_on_unbounded(on_unbounded):
    if on_unbounded not in ("inf", "raise"):
        raise ValueError(f"on_unbounded must be 'inf' or 'raise', got {on_unbounded!r}")


def _raise_unbounded(unbounded, what: str):
    """Raise :class:`Unbounded` for ``unbounded``: [((batch, head, query), reason)], naming the
    first rows and every reason (``what``: "bound", "backward bound")."""
    reasons = sorted({w_ for _, w_ in unbounded})
    raise Unbounded(f"no finite {what} for {len(unbounded)} row(s), e.g. (batch, head, query) "
                    f"{[r for r, _ in unbounded[:5]]}: {'; '.join(reasons)}",
                    rows=[r for r, _ in unbounded], reason="; ".join(reasons))


def _weights(pi, y, delta, c, infl):
    """pi * infl * (c0 + c_gap y + (c_Delta - c_gap) Delta) per key, y >= gap + Delta (upper bounds)."""
    w = y * (c["gap"] * infl)[:, None]
    w += (c["0"] * infl)[:, None]
    extra = (c["Delta"] - c["gap"]) * infl
    if np.any(extra != 0):
        w += extra[:, None] * delta
    w *= pi
    w *= _RND
    return w


def _slice_bound(qs, ks, vs, allowed, bias, sigma, cap, p, n_tiles, hs):
    """Bounds for the rows of one (batch, kv-head) slice: qs (R, E), ks (Lk, E), vs (Lk, Ev).
    Returns (o_bound (R, Ev), lse_bound (R,), [(row, reason) for unbounded rows]).

    The bound's own evaluation is rigorous: the fp64 logits carry an evaluation error <= ``ev``
    (gamma_{E+2} sigma sum|q||k| plus the scaling/softcap roundings), so the exact weights are
    within exp(2 ev) of the computed ones and the exact gaps within 2 ev; every other quantity is
    a short chain of fp64 operations on non-negative numbers, covered by _RND and gamma_{Lk+2}."""
    r, e = qs.shape
    lk, ev_dim = vs.shape
    lt = logit_terms(qs, ks, allowed, bias, sigma, cap, p, fast=p.u_acc >= 2.0 ** -30)
    ok, bad_row, G, gap, sa, delta, evmax = lt.ok, lt.bad_row, lt.G, lt.gap, lt.sa, lt.delta, lt.evmax
    n_i = ok.sum(axis=1)
    nonempty = (n_i > 0) & ~bad_row
    nn = np.maximum(n_i, 1).astype(np.float64)
    w = np.where(ok, np.exp(-gap), 0.0)
    pi = w * (1.0 / np.maximum(w.sum(axis=1), 1.0))[:, None]
    gapmax = gap.max(axis=1, initial=0.0)
    infl = np.exp(2 * evmax) * _RND  # exact weights <= computed ones * infl
    dmax = delta.max(axis=1, initial=0.0)
    ga, g_e = lt.ga, lt.g_e
    smax = sa.max(axis=1, initial=0.0) + evmax
    logn = np.log(nn) * _RND
    rho = _FN["rho"](smax, dmax, logn, p.u_acc, p.c_exp) * _RND
    row = dict(Dmax=dmax, logn=logn, rho=rho, n=nn, N=n_tiles, u_in=p.u_in, u_acc=p.u_acc, c_exp=p.c_exp, hs=hs,
               **_mma(p))
    gmax_true = gapmax + 2 * evmax
    maxes = {}
    for name, key in (("common", "Kmax"), ("den", "Sdmax"), ("num", "Snmax")):
        c = _affine(name, **row)
        maxes[key] = (c["0"] + c["gap"] * gmax_true + c["Delta"] * dmax) * _RND
    row.update(maxes)
    cb, cd = _affine("wB", **row), _affine("wD", **row)
    y = gap + 2 * evmax[:, None] + delta
    wd = _weights(pi, y, delta, cd, infl)
    wb = _weights(pi, y, delta, cb, infl)
    abs_key = _FN["abs_key"](maxes["Kmax"], maxes["Snmax"], p.eta, p.eta_in)
    wd += np.where(ok, abs_key[:, None], 0.0)  # per-key underflow
    abs_num = _FN["abs_num"](maxes["Kmax"], maxes["Snmax"], nn, n_tiles, p.eta)
    abs_den = _FN["abs_den"](maxes["Kmax"], maxes["Sdmax"], nn, n_tiles, p.eta)

    # values: per-row statistics over the row's own allowed keys (masked keys never count)
    vhi, vlo, vbad = _row_value_stats(vs, ok)
    has = np.isfinite(vhi)
    vmax = np.where(has, np.maximum(np.abs(vhi), np.abs(vlo)), 0.0)
    wcol = np.where(has, vhi - vlo, 0.0)
    center = np.where(has, 0.5 * (vhi + vlo), 0.0)
    v0 = np.where(np.isfinite(vs), vs, 0.0)
    # sums over keys: fp32 for kernels of fp32-class accumulators (relative gamma_{Lk+2}(2^-24) on
    # non-negative sums, weights below fp32's range lost: Lk 2^-126 max|v|), fp64 otherwise
    fast = p.u_acc >= 2.0 ** -30 and v0.dtype == np.float64 and np.all(np.abs(v0) <= 2.0 ** 100)
    ft = np.float32 if fast else np.float64
    u_s = 2.0 ** -24 if fast else _U64
    g_l = (lk + 2) * u_s / (1 - (lk + 2) * u_s)
    lost = (lk * 2.0 ** -126 if fast else 0.0) * vmax + _TINY
    av = np.abs(v0).astype(ft)
    o = rowwise(pi.astype(ft), v0.astype(ft)).astype(np.float64)
    o_err = (infl * np.expm1(2 * evmax) + g_l + 2 * u_s)[:, None] * vmax + lost
    sd = rowwise(wd.astype(ft), av).astype(np.float64) * (1 + g_l) + lost
    absv = rowwise(wb.astype(ft), av).astype(np.float64) * (1 + g_l) + lost
    sbl = wb.sum(axis=1) * (1 + _U64 * (lk + 2)) + _TINY
    sb = np.minimum(absv + np.abs(o) * sbl[:, None], (0.5 * wcol + np.abs(o - center)) * sbl[:, None] * (1 + g_l))
    sb = sb + o_err * sbl[:, None] + _TINY
    o_abs = np.abs(o) + o_err
    beta = _FN["b_max"](maxes["Kmax"], maxes["Sdmax"]) + abs_den
    ob = _FN["o_total"](sb, sd, abs_num[:, None], abs_den[:, None], o_abs, beta[:, None], rho[:, None], p.u_in,
                        p.u_acc, n_tiles, p.eta, p.eta_in, hs) * (1 + 2.0 ** -40)
    lb = _FN["lse_total"](sbl, abs_den, rho) * (1 + 2.0 ** -40)
    first_ok = (beta < 1) & (maxes["Kmax"] + maxes["Sdmax"] < 1) & (maxes["Snmax"] < 1)
    ob = np.where(first_ok[:, None] & np.isfinite(ob) & (ob >= 0), ob, np.inf)
    lb = np.where(first_ok & np.isfinite(lb) & (lb >= 0), lb, np.inf)
    # LSE at any logit magnitude (theorem 6, lse_any) and the convexity cap (any logit errors)
    l_any = _FN["lse_any"](dmax, smax, logn, nn, n_tiles, p.u_acc, p.c_exp, p.eta, hs) * (1 + 2.0 ** -40)
    lb = np.minimum(lb, np.where(np.isfinite(l_any) & (l_any >= 0), l_any, np.inf))
    cap_b = _FN["o_cap"](wcol, vmax, nn[:, None], n_tiles, rho[:, None], p.u_in, p.u_acc, p.c_exp, p.eta, p.eta_in,
                         hs, **_mma(p)) * (1 + 2.0 ** -40)
    ob = np.minimum(ob, np.where(np.isfinite(cap_b) & (cap_b >= 0), cap_b, np.inf))
    # where a kernel of the model may overflow: no claim is possible (inf, with the reason)
    gmax = np.maximum(np.where(ok, ga, 0.0).max(axis=1, initial=0.0), 1.5 * G.max(axis=1, initial=0.0))
    vtop = vmax.max(axis=1, initial=0.0)
    why = []
    over_dot = gmax * (1 + g_e[:, 0]) * 2.0 >= p.max_acc           # unscaled q.k, and the scaled logit * log2 e
    over_sum = nn * vtop * 2.0 >= p.max_acc                  # acc sums of P v
    over_store = (vmax + ob >= p.max_in) & np.isfinite(ob)   # the store could round to inf
    ob = np.where(over_dot[:, None] | over_sum[:, None] | over_store, np.inf, ob)
    lb = np.where(over_dot, np.inf, lb)
    ob = np.where(vbad, np.nan, ob)
    ob = np.where(nonempty[:, None], ob, 0.0)
    lb = np.where(nonempty, lb, 0.0)
    ob = np.where(bad_row[:, None], np.nan, ob)  # after the empty-row zeros: a bad row is no claim, not empty
    lb = np.where(bad_row, np.nan, lb)
    for i in np.flatnonzero(nonempty & (np.isinf(lb) | np.isinf(ob).any(axis=1))):
        if over_dot[i]:
            why.append((int(i), "scale * sum|q||k| within a factor 2 of the accumulator's largest value"))
        elif over_sum[i]:
            why.append((int(i), "allowed keys x max|v| within a factor 2 of the accumulator's largest value"))
        elif over_store[i].any():
            why.append((int(i), "max|v| + bound reaches the storage format's largest value"))
        elif hs:
            why.append((int(i), "an LSE combine (lse_combine=True) at logits whose LSE rounding may overflow "
                                "its weights; pass lse_combine=False if the kernel merges raw states"))
        else:
            why.append((int(i), "the accumulation budget (n + N) u_acc reaches 1: the accumulator format is "
                                "too coarse for this many keys"))
    return ob, lb, why

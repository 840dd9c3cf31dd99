"""Evaluation machinery of the running bounds (theorems 6 and 4b): the generated expressions, the
row-by-row products, the per-row value statistics and the logits with their error budgets.

Everything here is per row: a row's results depend only on that row's q, mask, and the k, v of its
allowed keys (one BLAS matrix-vector call per row of fixed shape and layout, reductions along the
row), never on the rest of the batch.
"""
from __future__ import annotations

import numpy as np

from .golden_paths import GOLDEN_PATH
from .precision import Precision

__all__ = ["rowwise", "kv_groups", "logit_terms", "row_value_stats", "FN", "TANH_EXTRA", "affine", "mma_args", "as_f64",
           "mask_arg", "U64", "RND", "TINY", "lambdify_golden"]


def _load():
    try:
        from . import bounds_gen as g  # generated from the golden SymPy expressions (fp_error.py)
    except ImportError:  # first generation (bootstrap): lambdify the golden file instead
        return lambdify_golden()
    fns = dict(g.FUNCTIONS)
    for key, (args, coefs) in g.LINEAR.items():
        fns[key + ".lin"] = coefs
        fns[key + ".args"] = list(args)
    return fns, g.TANH_EXTRA


def lambdify_golden(path=GOLDEN_PATH):
    import json

    import sympy as sp
    from sympy.codegen.cfunctions import expm1, log1p

    data = json.loads(path.read_text())
    names = {s: sp.Symbol(s) for args in data["args"].values() for s in args}
    local = dict(names, expm1=expm1, log1p=log1p, Min=sp.Min, Max=sp.Max)
    mods = [{"expm1": np.expm1, "log1p": np.log1p}, "numpy"]
    fns = {}
    for key, text in data["expressions"].items():
        fns[key] = sp.lambdify([names[a] for a in data["args"][key]], sp.sympify(text, locals=local), modules=mods)
    for key, parts in data.get("linear", {}).items():
        args = [a for a in data["args"][key] if a not in parts]
        fns[key + ".lin"] = {v: sp.lambdify([names[a] for a in args], sp.sympify(t, locals=local), modules=mods)
                             for v, t in parts.items()}
        fns[key + ".args"] = args
    tanh = data.get("counts", {}).get("tanh_default")
    return fns, (float(sp.sympify(tanh, locals={"c_exp": 0})) if tanh else 0.0)


FN, TANH_EXTRA = _load()


def affine(name, **row):
    """Coefficients {"0": c0, var: c_var} of an affine expression, evaluated at ``row`` values."""
    args = [row[a] for a in FN[name + ".args"]]
    return {v: f(*args) for v, f in FN[name + ".lin"].items()}


def mma_args(p: Precision):
    return {"u_mma": p.mma_unit, "k_mma": float(p.k_mma)}


U64 = 2.0 ** -53
# fp64 evaluation of a non-negative per-key weight or budget (< 40 operations): relative 2^-47
RND = 1.0 + 2.0 ** -46
TINY = 2.0 ** -1000


def as_f64(name, x):
    """numpy float64 (exact for every float dtype)."""
    if type(x).__module__.split(".")[0] == "torch":
        return x.detach().to("cpu").double().numpy()
    try:
        a = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 -- report which argument could not be read
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}") from exc
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a floating tensor/array, got dtype {a.dtype}")
    return a.astype(np.float64)


def mask_arg(attn_mask, shape):
    if attn_mask is None:
        return None, None
    if type(attn_mask).__module__.split(".")[0] == "torch":
        is_bool = str(attn_mask.dtype) == "torch.bool"
        a = attn_mask.detach().to("cpu")
        a = a.numpy() if is_bool else a.double().numpy()
    else:
        a = np.asarray(attn_mask)
        is_bool = a.dtype == bool
        if not is_bool:
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"attn_mask must be bool or floating, got dtype {a.dtype}")
            a = a.astype(np.float64)
    try:
        a = np.broadcast_to(a, shape)
    except ValueError:
        raise ValueError(f"attn_mask of shape {a.shape} does not broadcast to (B, H, Lq, Lk) = {shape}") from None
    return (a, None) if is_bool else (None, a)


def kv_groups(dims, mask, bmask, bias):
    """The rows a running bound evaluates together: per batch element ``bi`` and KV head ``kh``,
    ``(bi, kh, heads, allowed, bias)`` for the H / Hkv query heads sharing it (``heads`` a slice),
    ``allowed`` (structural mask and boolean attn_mask) and ``bias`` (None without an additive
    mask) with those heads' rows flattened to (H / Hkv * Lq, Lk)."""
    lq, lk = dims.lq, dims.lk
    grp = dims.heads // dims.kv_heads
    struct = mask.matrix(lq, lk)
    for bi in range(dims.batch):
        for kh in range(dims.kv_heads):
            hs_ = slice(kh * grp, (kh + 1) * grp)
            allowed = np.broadcast_to(struct, (grp, lq, lk))
            if bmask is not None:
                allowed = allowed & bmask[bi, hs_]
            bsl = None if bias is None else bias[bi, hs_].reshape(grp * lq, lk)
            yield bi, kh, hs_, allowed.reshape(grp * lq, lk), bsl


def rowwise(a, b):
    """a @ b with row i computed as its own matrix-vector product: (R, K) @ (K, N) -> (R, N). Each
    row's result depends only on that row and b, never on the other rows: one BLAS call per row,
    of fixed shape, with b in a fixed C-contiguous layout (the layout fixes the summation order)."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        return np.matmul(a[:, None, :], np.ascontiguousarray(b))[:, 0, :]
    return np.matmul(np.ascontiguousarray(b.T), a[:, :, None])[:, :, 0]


def _range_max(x, lo, hi):
    """max of x[lo_i:hi_i] per row i (0 <= lo_i < hi_i <= len(x)), per column: sparse table (exact)."""
    n = x.shape[0]
    out = np.empty((len(lo),) + x.shape[1:])
    span = hi - lo
    lev = np.floor(np.log2(np.maximum(span, 1))).astype(np.int64)
    table = [x]
    while (1 << len(table)) <= n:
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(np.maximum(prev[:-half], prev[half:]))
    for lv in np.unique(lev):
        sel = lev == lv
        t = table[lv]
        out[sel] = np.maximum(t[lo[sel]], t[hi[sel] - (1 << lv)])
    return out


def row_value_stats(vs, ok):
    """Per row, per column, over the row's allowed keys: (max v, min v, any non-finite v), exact."""
    r, lk = ok.shape
    ev = vs.shape[1]
    fin = np.isfinite(vs)
    v_hi = np.where(fin, vs, -np.inf)
    v_lo = np.where(fin, -vs, -np.inf)
    hi = np.full((r, ev), -np.inf)
    lo = np.full((r, ev), -np.inf)
    bad = np.zeros((r, ev), dtype=bool)
    cnt = ok.sum(axis=1)
    if lk == 0 or not cnt.any():
        return hi, -lo, bad
    first = np.argmax(ok, axis=1)
    last = lk - 1 - np.argmax(ok[:, ::-1], axis=1)
    interval = (cnt > 0) & (cnt == last - first + 1)
    if interval.any():  # causal, window and full rows: contiguous keys, range queries
        lo_i, hi_i = first[interval], last[interval] + 1
        hi[interval] = _range_max(v_hi, lo_i, hi_i)
        lo[interval] = _range_max(v_lo, lo_i, hi_i)
        pc = np.concatenate([np.zeros((1, ev), dtype=np.int64), np.cumsum(~fin, axis=0)])
        bad[interval] = (pc[hi_i] - pc[lo_i]) > 0
    rest = np.flatnonzero((cnt > 0) & ~interval)
    step = max(1, (1 << 22) // max(1, lk * ev))
    for s in range(0, len(rest), step):  # arbitrary masks: exact masked reductions
        rows = rest[s:s + step]
        m = ok[rows][:, :, None]
        hi[rows] = np.where(m, v_hi[None], -np.inf).max(axis=1)
        lo[rows] = np.where(m, v_lo[None], -np.inf).max(axis=1)
        bad[rows] = (m & ~fin[None]).any(axis=1)
    return hi, -lo, bad


def _logit_products(qs, ks, sigma, ok, *, fast):
    """(q.k, |q|.|k|, gamma) per (row, key), with |computed - exact| <= gamma * |q|.|k| (+ 2^-1000).
    fp32 first where the kernel is of fp32 class; a row whose fp32 evaluation error would be felt
    (gamma_{E+2}(2^-24) sigma max|q|.|k| > 2^-12: the weights' inflation exp(2 ev) would exceed
    1 + 2^-10) or overflows is recomputed in fp64, decided per row from that row alone."""
    r, e = qs.shape
    g64 = (e + 2) * U64 / (1 - (e + 2) * U64)
    kt = ks.T
    if not fast:
        return rowwise(qs, kt), rowwise(np.abs(qs), np.abs(kt)), np.full(r, g64)
    g32 = (e + 2) * 2.0 ** -24 / (1 - (e + 2) * 2.0 ** -24)
    q32, k32 = qs.astype(np.float32), kt.astype(np.float32)
    x = rowwise(q32, k32).astype(np.float64)
    ga = rowwise(np.abs(q32), np.abs(k32)).astype(np.float64)
    with np.errstate(invalid="ignore"):  # only the row's allowed keys decide (masked garbage never does)
        gmax = np.where(ok, np.where(np.isnan(ga), np.inf, ga), 0.0).max(axis=1, initial=0.0)
    slow = ~(g32 * sigma * gmax <= 2.0 ** -12)
    ge = np.full(r, g32)
    if slow.any():
        rows = np.flatnonzero(slow)
        x[rows] = rowwise(qs[rows], kt)
        ga[rows] = rowwise(np.abs(qs[rows]), np.abs(kt))
        ge[rows] = g64
    return x, ga, ge


class _Logits:
    """Per (row, key) logit quantities of one slice (see :func:`logit_terms`)."""

    __slots__ = ("ok", "bad_row", "s", "xs", "scap", "ga", "g_e", "G", "gap", "sa", "evk", "evmax", "delta", "dcore")


def logit_terms(qs, ks, allowed, bias, sigma, cap, p, *, fast):
    """The logits of one slice and their error budgets, per (row, key): ``ok`` (allowed, finite),
    ``bad_row`` (NaN/inf in an allowed q, k or bias: no claim), ``s`` (logits, -inf where not ok),
    ``xs`` (scale q.k), ``scap`` (softcapped), ``G`` (scale sum|q||k|), ``gap`` (row max - s),
    ``sa`` (|s|), ``evk``/``evmax`` (the fp64/fp32 evaluation error of s, per pair / per row),
    ``delta`` (theorem 6's logit error budget Delta, at upper bounds), ``dcore`` (the same before
    softcap and mask, for the backward's tanh)."""
    lt = _Logits()
    r, e = qs.shape
    ok = np.array(allowed, dtype=bool)
    if bias is not None:
        ok &= ~np.isneginf(bias)  # an additive -inf masks the key
    x, ga, g_e = _logit_products(qs, ks, sigma, ok, fast=fast)
    xs = sigma * x
    if cap:
        scap = cap * np.tanh(xs / cap)
        s = scap + bias if bias is not None else scap
    else:
        scap = xs
        s = xs + bias if bias is not None else xs
    fin = np.isfinite(s) & np.isfinite(ga)
    lt.bad_row = (ok & ~fin).any(axis=1)
    ok &= fin
    G = np.where(ok, sigma * ga, 0.0)
    s = np.where(ok, s, -np.inf)
    m = s.max(axis=1, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)
    gap = np.where(ok, m[:, None] - s, 0.0)
    sa = np.where(ok, np.abs(s), 0.0)
    g_e = g_e[:, None]
    evk = g_e * G + 2.0 ** -51 * (np.where(ok, np.abs(xs) + np.abs(scap), 0.0) + sa) + TINY
    evmax = evk.max(axis=1, initial=0.0) + 2.0 ** -51 * gap.max(axis=1, initial=0.0)
    lc = affine("logit_err", CAP=cap or 0.0, h=1.0 if cap else 0.0, hb=0.0 if bias is None else 1.0, E=e,
                 u_acc=p.u_acc, u_dot=p.u_dot, c_tanh=p.tanh_ulps, **mma_args(p))
    xa = np.where(ok, np.abs(xs), 0.0) + evk
    delta = lc["0"] + lc["G"] * G * (1 + g_e) + lc["X"] * xa
    if cap:
        delta = delta + lc["Y"] * (np.where(ok, np.abs(scap), 0.0) + evk)
    if bias is not None:
        delta = delta + lc["BIAS"] * np.where(ok, np.abs(bias), 0.0) + lc["S"] * (sa + evk)
    lc0 = affine("logit_err", CAP=0.0, h=0.0, hb=0.0, E=e, u_acc=p.u_acc, u_dot=p.u_dot, c_tanh=p.tanh_ulps,
                  **mma_args(p))
    lt.dcore = np.where(ok, (lc0["0"] + lc0["G"] * G * (1 + g_e) + lc0["X"] * xa) * RND, 0.0)
    lt.delta = np.where(ok, delta * RND, 0.0)
    lt.ok, lt.s, lt.xs, lt.scap, lt.ga, lt.g_e, lt.G, lt.gap, lt.sa, lt.evk, lt.evmax = (
        ok, s, xs, scap, ga, g_e, G, gap, sa, evk, evmax)
    return lt

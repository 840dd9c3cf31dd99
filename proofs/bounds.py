"""Executable error bounds of the attention forward, generated from the SymPy derivation.

The expressions live in proofs/golden/fp_error.json, written by flashproof.proofs.fp_error
(theorem 6) and re-derived and compared by the tests; SymPy's NumPyPrinter turns them into
proofs/bounds_gen.py (also checked against a fresh generation), which this module evaluates:

- :func:`apriori_forward_bound`: closed form per output element from a few scalars.
- :func:`running_forward_bound`: per element of O and of the LSE, along the actual data.

Both are rigorous upper bounds on |computed - exact| for ANY kernel of the given precision that
computes the spec's online-softmax recurrence in floating point: any tiling, any merge tree,
split-KV with one LSE-combine level, fp32 (or other) accumulators, P rounded to the storage dtype
before P@V while l sums the unrounded P, the output rounded to the storage dtype on store, exp
with ``c_exp`` ulps and flush-to-zero, GQA, masks, softcap and additive masks. Assumptions
(checked, else the bound is ``inf``): no overflow, and first-order budgets below 1. The exact
result is the one of the stored (already rounded) q, k, v. A TF32 kernel is NOT an fp32 kernel:
use ``precision_for(torch.float32, tf32=True)`` for it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashproof import spec

__all__ = [
    "Precision",
    "precision_for",
    "apriori_forward_bound",
    "apriori_lse_bound",
    "running_forward_bound",
    "GOLDEN_PATH",
]

GOLDEN_PATH = Path(__file__).with_name("golden") / "fp_error.json"

# Unit roundoff, subnormal rounding error (gradual underflow: half the subnormal spacing; FTZ: the
# smallest normal) and largest finite value of each storage format, from spec's dtype table.
_FORMATS = {
    n: (f.u, f.subnormal / 2 if n == "float16" else f.tiny, f.max)  # FTZ covered for bf16/fp32: smallest normal
    for n, f in spec.FORMATS.items()
}


@dataclass(frozen=True)
class Precision:
    """The error model of one kernel precision.

    u_in: unit roundoff of the storage dtype (q, k, v, P before P@V, output store).
    u_acc: unit roundoff of the accumulators (dot products, l, acc, exp arguments).
    c_exp: error of exp/exp2/log/log2 in ulps of the accumulator format (relative 2 c_exp u_acc).
    eta: absolute error of an underflowing accumulator op (flush-to-zero threshold).
    eta_in: absolute error of rounding a tiny value to the storage dtype.
    u_dot: operand rounding inside the matmuls (TF32: 2^-11; 0 for IEEE dots).
    c_tanh: absolute error of tanh in units of u_acc (None: the derived c_exp + 3).
    max_in, max_acc: largest finite values (overflow checks).
    """

    u_in: float
    u_acc: float
    c_exp: float
    eta: float
    name: str
    eta_in: float = 0.0
    u_dot: float = 0.0
    c_tanh: float | None = None
    max_in: float = math.inf
    max_acc: float = math.inf

    def __post_init__(self):
        for f in ("u_in", "u_acc", "u_dot"):
            x = getattr(self, f)
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (0 <= x < 0.5):
                raise ValueError(f"Precision.{f} must be a real in [0, 0.5), got {x!r}")
        for f in ("c_exp", "eta", "eta_in"):
            x = getattr(self, f)
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (0 <= x < math.inf):
                raise ValueError(f"Precision.{f} must be a finite real >= 0, got {x!r}")
        if self.c_tanh is not None and (not isinstance(self.c_tanh, numbers.Real) or not 0 <= self.c_tanh < math.inf):
            raise ValueError(f"Precision.c_tanh must be None or a finite real >= 0, got {self.c_tanh!r}")
        for f in ("max_in", "max_acc"):
            x = getattr(self, f)
            if not isinstance(x, numbers.Real) or not x > 0:
                raise ValueError(f"Precision.{f} must be > 0, got {x!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"Precision.name must be a str, got {type(self.name).__name__}")

    @property
    def tanh_ulps(self) -> float:
        return float(self.c_exp) + _TANH_EXTRA if self.c_tanh is None else float(self.c_tanh)


#: Measured, not assumed: the exhaustive audit of tl.exp2 over all 1,125,515,265 fp32 inputs in
#: [-150, 0] on an H100 (triton 3.6; docs/audits/h100.md) found at most 2.055 ulps, above the 2
#: of ex2.approx's documentation. Rounded up to 2.06 so the model holds for the hardware measured.
C_EXP_MEASURED = 2.06


def precision_for(dtype, *, accumulator="fp32", c_exp=C_EXP_MEASURED, tf32=False) -> Precision:
    """The :class:`Precision` of a kernel whose storage dtype is ``dtype``.

    ``accumulator``: "fp32" (IEEE fp32, round to nearest: u = 2^-24, flush-to-zero 2^-126),
    "fp32_rz" (truncating fp32 accumulation as in tensor cores: u = 2^-23), "same" (accumulate
    in the storage dtype) or "fp64". For float64 inputs every unit roundoff is 2^-53 (the
    accumulator is float64 unless "same", which is the same thing).
    ``c_exp``: ulps of exp/exp2/log/log2 (default :data:`C_EXP_MEASURED`, measured on an H100).
    ``tf32``: the matmul operands are rounded to TF32 (10-bit mantissa); such a kernel does NOT
    meet the fp32 bound (``tf32=False``) on data with large |q||k| products.
    """
    key = spec.dtype_name(dtype)
    if isinstance(c_exp, bool) or not isinstance(c_exp, numbers.Real) or not 0 <= c_exp < math.inf:
        raise ValueError(f"c_exp must be a finite real >= 0, got {c_exp!r}")
    if not isinstance(tf32, bool):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    u_in, eta_in, max_in = _FORMATS[key]
    if accumulator not in ("fp32", "fp32_rz", "same", "fp64"):
        raise ValueError(f"accumulator must be 'fp32', 'fp32_rz', 'same' or 'fp64', got {accumulator!r}")
    if key == "float64" or accumulator == "fp64":
        u_acc, eta, max_acc = _FORMATS["float64"][0], spec.FORMATS["float64"].tiny, _FORMATS["float64"][2]
    elif accumulator == "same":
        u_acc, eta, max_acc = u_in, eta_in, max_in
    else:
        u_acc = spec.FORMATS["float32"].u * (1 if accumulator == "fp32" else 2)
        eta, max_acc = spec.FORMATS["float32"].tiny, _FORMATS["float32"][2]
    u_dot = 2.0 ** -11 if tf32 else 0.0
    name = f"{key}/{accumulator if key != 'float64' else 'float64'}" + ("/tf32" if tf32 else "")
    return Precision(u_in=u_in, u_acc=u_acc, c_exp=float(c_exp), eta=eta, name=name, eta_in=eta_in,
                     u_dot=u_dot, max_in=max_in, max_acc=max_acc)


# ---------------------------------------------------------------------------------------------
# The lambdified expressions (loaded once).

def _load():
    try:
        from . import bounds_gen as g  # generated from the golden SymPy expressions (fp_error.py)
    except ImportError:  # first generation (bootstrap): lambdify the golden file instead
        return _lambdify_golden()
    fns = dict(g.FUNCTIONS)
    for key, (args, coefs) in g.LINEAR.items():
        fns[key + ".lin"] = coefs
        fns[key + ".args"] = list(args)
    return fns, g.TANH_EXTRA


def _lambdify_golden():
    import json

    import sympy as sp
    from sympy.codegen.cfunctions import expm1, log1p

    data = json.loads(GOLDEN_PATH.read_text())
    names = {s: sp.Symbol(s) for args in data["args"].values() for s in args}
    local = dict(names, expm1=expm1, log1p=log1p, Min=sp.Min, Max=sp.Max)
    mods = [{"expm1": np.expm1, "log1p": np.log1p}, "numpy"]
    fns = {}
    for key, text in data["expressions"].items():
        fns[key] = sp.lambdify([names[a] for a in data["args"][key]], sp.sympify(text, locals=local), modules=mods)
    for key, parts in data["linear"].items():
        args = [a for a in data["args"][key] if a not in parts]
        fns[key + ".lin"] = {v: sp.lambdify([names[a] for a in args], sp.sympify(t, locals=local), modules=mods)
                             for v, t in parts.items()}
        fns[key + ".args"] = args
    return fns, float(sp.sympify(data["counts"]["tanh_default"], locals={"c_exp": 0}))


def _affine(name, **row):
    """Coefficients {"0": c0, var: c_var} of an affine expression, evaluated at ``row`` values."""
    args = [row[a] for a in _FN[name + ".args"]]
    return {v: f(*args) for v, f in _FN[name + ".lin"].items()}


_FN, _TANH_EXTRA = _load()


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


def apriori_forward_bound(*, precision, e, lk, n_tiles, max_logit, max_v, softcap=None) -> float:
    """Closed-form bound on |o_computed - o_exact| per output element.

    ``max_logit`` bounds ``scale * sum_e |q_e| |k_e|`` over allowed pairs (hence also every
    |logit|; the dot-product error scales with the absolute products, not with their sum);
    ``max_v`` bounds |v|; ``lk`` bounds the number of allowed keys of a row; ``n_tiles`` the
    number of key tiles (leaves of the merge tree, all splits together). Returns inf when the
    first-order budgets reach 1 (the bound is then vacuous)."""
    _check_precision(precision)
    e, lk, n_tiles = _pos_int("e", e), _pos_int("lk", lk), _pos_int("n_tiles", n_tiles)
    gm, vm = _nonneg("max_logit", max_logit), _nonneg("max_v", max_v)
    cap = spec.normalize_softcap(softcap)
    p = precision
    args = (p.u_in, p.u_acc, p.u_dot, p.c_exp, p.tanh_ulps, p.eta, p.eta_in, e, lk, n_tiles, gm, vm,
            cap or 0.0, 1.0 if cap else 0.0)
    with np.errstate(all="ignore"):
        budget = float(_FN["apriori_budget"](*(args[:11] + args[12:])))
        # the first-order form (with its remainder lemmas) needs every budget below 1
        first = _finite_or_inf(_FN["o_apriori"](*args)) if budget < 1 else math.inf
        cap_b = _finite_or_inf(_FN["o_cap_apriori"](*args))  # convexity cap: any logit errors
    return min(first, cap_b)


def apriori_lse_bound(*, precision, e, lk, n_tiles, max_logit, softcap=None) -> float:
    """Closed-form bound on |lse_computed - lse_exact| (natural log), same arguments as
    :func:`apriori_forward_bound`."""
    _check_precision(precision)
    e, lk, n_tiles = _pos_int("e", e), _pos_int("lk", lk), _pos_int("n_tiles", n_tiles)
    gm = _nonneg("max_logit", max_logit)
    cap = spec.normalize_softcap(softcap)
    p = precision
    args = (p.u_in, p.u_acc, p.u_dot, p.c_exp, p.tanh_ulps, p.eta, p.eta_in, e, lk, n_tiles, gm,
            cap or 0.0, 1.0 if cap else 0.0)
    with np.errstate(all="ignore"):
        if not float(_FN["apriori_budget"](*args)) < 1:
            return math.inf  # budgets >= 1: no claim on the LSE
        return _finite_or_inf(_FN["lse_apriori"](*args))


def _finite_or_inf(val) -> float:
    val = float(val)
    return val if (val >= 0 and math.isfinite(val)) else math.inf


# ---------------------------------------------------------------------------------------------
# Running bound.

_U32 = spec.FORMATS["float32"].u


def _as_f64(name, x, *, keep_f32=False):
    """numpy float64 (exact for every float dtype); with ``keep_f32``, fp16/bf16/fp32 inputs come
    back as float32 (also exact) to skip a conversion."""
    if type(x).__module__.split(".")[0] == "torch":
        if keep_f32 and str(x.dtype) in ("torch.float16", "torch.bfloat16", "torch.float32"):
            return x.detach().to("cpu").float().numpy()
        return x.detach().to("cpu").double().numpy()
    if keep_f32 and isinstance(x, np.ndarray) and x.dtype in (np.float16, np.float32):
        return x.astype(np.float32)
    try:
        a = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 -- report which argument could not be read
        raise TypeError(f"{name} must be a torch tensor or a numpy array, got {type(x).__name__}") from exc
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must be a floating tensor/array, got dtype {a.dtype}")
    return a.astype(np.float64)


def _mask_arg(attn_mask, shape):
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


def _up32(c, nterms):
    """Upper bound on an exact sum of nterms non-negative products from its fp32 evaluation
    (inputs rounded to fp32 and gradual underflow included): Higham's gamma_{n+2}."""
    k = nterms + 2
    g = k * _U32 / (1 - k * _U32)
    return (c + k * 2.0 ** -148) / (1 - g)


def running_forward_bound(q, k, v, *, precision, n_tiles=None, attn_mask=None, causal=False,
                          alignment=None, window=None, scale=None, softcap=None):
    """Per-element bounds (o_bound (B,H,Lq,Ev), lse_bound (B,H,Lq)), numpy float64.

    ``n_tiles``: the number of key tiles of the kernel (leaves of its merge tree, all splits
    together); None means any tiling (n_tiles = Lk). Empty rows get bound 0 (their output must be
    exactly 0 and their LSE -inf). Elements whose exact value is not finite (NaN/inf in an allowed
    q, k, v or bias) get NaN: no claim. Rows where the assumptions fail (overflow possible, or a
    budget >= 1) get inf.
    """
    _check_precision(precision)
    q, k, v = _as_f64("query", q, keep_f32=True), _as_f64("key", k, keep_f32=True), _as_f64("value", v)
    dims = spec.check_dims(q.shape, k.shape, v.shape)
    b_, h_, hk, lq, lk, e, ev = dims.batch, dims.heads, dims.kv_heads, dims.lq, dims.lk, dims.e, dims.ev
    if n_tiles is None:
        n_tiles = max(lk, 1)
    n_tiles = _pos_int("n_tiles", n_tiles)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    sigma = spec.resolve_scale(scale, e)
    cap = spec.normalize_softcap(softcap)
    bmask, bias = _mask_arg(attn_mask, (b_, h_, lq, lk))
    p = precision
    o_bound = np.zeros((b_, h_, lq, ev))
    lse_bound = np.zeros((b_, h_, lq))
    if min(b_, h_, lq, lk) == 0:
        return o_bound, lse_bound
    grp = h_ // hk
    struct = mask.matrix(lq, lk)
    for bi in range(b_):
        for kh in range(hk):
            hs = slice(kh * grp, (kh + 1) * grp)
            allowed = np.broadcast_to(struct, (grp, lq, lk))
            if bmask is not None:
                allowed = allowed & bmask[bi, hs]
            bs = None
            if bias is not None:
                bs = bias[bi, hs].reshape(grp * lq, lk)
            with np.errstate(all="ignore"):  # inf/NaN are handled explicitly below
                ob, lb = _slice_bound(q[bi, hs].reshape(grp * lq, e), k[bi, kh], v[bi, kh],
                                      allowed.reshape(grp * lq, lk), bs, sigma, cap, p, n_tiles)
            o_bound[bi, hs] = ob.reshape(grp, lq, ev)
            lse_bound[bi, hs] = lb.reshape(grp, lq)
    return o_bound, lse_bound


def _weights(pi, y, delta, c, infl_pi, evmax):
    """pi * infl_pi * (c0 + c_gap (gap + 2 evmax) + c_Delta Delta), with y = gap + Delta, in fp32
    (rounded up by _RND32): the per-key weights of an affine budget, at upper bounds."""
    f32 = np.float32
    w = y * ((c["gap"] * infl_pi * _RND32).astype(f32))[:, None]
    w += (((c["0"] + c["gap"] * 2 * evmax) * infl_pi * _RND32).astype(f32))[:, None]
    extra = (c["Delta"] - c["gap"]) * infl_pi * _RND32
    if np.any(extra != 0):
        w += extra.astype(f32)[:, None] * delta
    w *= pi
    return w


# fp32 evaluation of non-negative per-key weights: each is a product/sum of <= 12 fp32 operations,
# so the exact value is <= computed * (1 + 2^-24)^12 < computed * (1 + 2^-20) (gradual underflow
# adds <= 2^-149 per operation, covered by _TINY below).
_RND32 = 1.0 + 2.0 ** -20
_TINY = 2.0 ** -120


def _slice_bound(qs, ks, vs, allowed, bias, sigma, cap, p, n_tiles):
    """Bounds for the rows of one (batch, kv-head) slice: qs (R, E), ks (Lk, E), vs (Lk, Ev).

    The bound's own evaluation is rigorous: the logits come from an fp32 matmul whose error
    (gamma_{E+2} sigma sum|q||k|, Higham) is carried as ``evmax``: the exact weights are within a
    factor exp(2 evmax) of the computed ones and the exact gaps within 2 evmax, which inflates the
    sums; fp32 rounding of the (non-negative) weights is covered by _RND32."""
    f32, f64 = np.float32, np.float64
    r, e = qs.shape
    lk, ev_dim = vs.shape
    allowed = np.array(allowed, dtype=bool)
    if bias is not None:
        allowed &= ~np.isneginf(bias)  # an additive -inf masks the key
    qa, ka = np.abs(qs), np.abs(ks)
    # Logits in fp32 (fast) unless the kernel is fp64-class or the fp32 evaluation error
    # gamma_{E+2} sigma sum|q||k| would be felt (> 2^-16); then in fp64.
    big = max(np.nanmax(qa, initial=0.0), np.nanmax(ka, initial=0.0)) >= 2.0 ** 56
    x = ga = None
    if p.u_acc >= 2.0 ** -30 and not big:
        with np.errstate(all="ignore"):
            x = qs.astype(f32) @ ks.T.astype(f32)
            ga = qa.astype(f32) @ ka.T.astype(f32)
        u_ev = _U32
        if (e + 2) * _U32 * sigma * float(np.nanmax(ga, initial=0.0)) > 2.0 ** -16:
            x = ga = None
    if x is None:
        with np.errstate(all="ignore"):
            x = qs.astype(f64) @ ks.T.astype(f64)
            ga = qa.astype(f64) @ ka.T.astype(f64)
        u_ev = 2.0 ** -53
    g_e = (e + 2) * u_ev / (1 - (e + 2) * u_ev)
    gscale = sigma / (1 - g_e)  # exact sigma*sum|q||k| <= gscale * ga + tiny (gamma_{E+2})
    tiny = sigma * (e + 2) * (2.0 ** -147 if u_ev == _U32 else 2.0 ** -1070)
    inputs_finite = bool(np.isfinite(qs).all() and np.isfinite(ks).all())
    fin = np.ones_like(allowed) if inputs_finite else (np.isfinite(x) & np.isfinite(ga))
    general = bool(cap) or bias is not None
    if general:  # softcap / additive mask: per-pair logits in fp64
        with np.errstate(all="ignore"):
            xs = sigma * x.astype(f64)
            scap = cap * np.tanh(xs / cap) if cap else xs
            s = scap + bias if bias is not None else scap
        fin &= np.isfinite(s)
    else:
        s = x  # unscaled fp32 logits
    bad_row = (allowed & ~fin).any(axis=1)  # NaN/inf in an allowed q, k or bias: no claim
    ok = allowed & fin
    full = bool(ok.all())
    n_i = ok.sum(axis=1) if not full else np.full(r, lk)
    nonempty = (n_i > 0) & ~bad_row
    nn = np.maximum(n_i, 1).astype(f64)
    if not full:
        s = np.where(ok, s, -np.inf)
        ga = np.where(ok, ga, f32(0))
        x = np.where(ok, x, f32(0))
    m = s.max(axis=1, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0).astype(s.dtype)
    gap = m[:, None] - s  # unscaled fp32 (plain) or fp64 (general); +inf at masked keys
    # weights exp(-gap) in fp64 (masked: exp(-inf) = 0)
    w = np.multiply(gap, -sigma if not general else -1.0, dtype=f64)
    np.exp(w, out=w)
    if not full:
        gap[~ok] = 0
    w *= (1.0 / np.maximum(w.sum(axis=1), 1.0))[:, None]
    pi = w.astype(f32)
    gscale_gap = sigma if not general else 1.0
    gapmax = gap.max(axis=1, initial=0).astype(f64) * gscale_gap
    gamax = ga.max(axis=1, initial=0).astype(f64)
    evmax = g_e * gscale * gamax + tiny
    if not general:
        evmax = evmax + u_ev * gapmax  # rounding of the gaps (relative u)
        smax = sigma * np.abs(x).max(axis=1, initial=0).astype(f64) + evmax
    else:
        s_fin = np.where(ok, s, 0.0)
        scap = np.where(ok, scap, 0.0)
        smax = np.abs(s_fin).max(axis=1, initial=0.0) + evmax
        evmax = evmax + 2.0 ** -51 * (2 * smax + np.abs(scap).max(axis=1, initial=0.0))
    evmax = evmax + 2.0 ** -50 * (gapmax + 16)  # fp64 scaling and exp of the weights
    infl_pi = np.exp(2 * evmax)  # exact weights <= computed ones * infl_pi
    # logit error budget Delta (affine in G, |X|, |Y|, |b|, |s|; at upper bounds), in fp32
    lc = _affine("logit_err", CAP=cap or 0.0, h=1.0 if cap else 0.0, hb=0.0 if bias is None else 1.0,
                 E=e, u_acc=p.u_acc, u_dot=p.u_dot, c_tanh=p.tanh_ulps)
    cx = lc["X"] + (lc["Y"] + lc["S"] if general else 0.0)
    delta = np.abs(x)
    delta *= f32(sigma * lc["X"] * _RND32)
    delta += ga * f32((lc["G"] + cx * g_e) * gscale * _RND32)
    delta += f32((lc["0"] + cx * tiny + lc["G"] * tiny) * _RND32)
    if general:
        extra = lc["Y"] * np.abs(scap) + lc["S"] * np.abs(s_fin) + 2.0 ** -51 * cx * (np.abs(scap) + np.abs(s_fin))
        if bias is not None:
            extra += lc["BIAS"] * np.where(ok, np.abs(bias), 0.0)
        delta += (extra * _RND32).astype(f32)
    if not full:
        delta[~ok] = 0
    dmax = delta.max(axis=1, initial=0).astype(f64) * _RND32
    logn = np.log(nn)
    rho = _FN["rho"](smax, dmax, logn, p.u_acc, p.c_exp)
    row = dict(Dmax=dmax, logn=logn, rho=rho, n=nn, N=n_tiles, u_in=p.u_in, u_acc=p.u_acc, c_exp=p.c_exp)
    gmax_true = gapmax / (1 - u_ev) + 2 * evmax
    maxes = {}
    for name, key in (("common", "Kmax"), ("den", "Sdmax"), ("num", "Snmax")):
        c = _affine(name, **row)
        maxes[key] = c["0"] + c["gap"] * gmax_true + c["Delta"] * dmax
    row.update(maxes)
    cb, cd = _affine("wB", **row), _affine("wD", **row)
    # y = exact-gap upper bound (scaled, fp32 rounding of the gap undone) + Delta
    y = gap if not general else gap.astype(f32)
    y *= f32(gscale_gap / (1 - u_ev) * _RND32)
    y += delta
    wd = _weights(pi, y, delta, cd, infl_pi, evmax)
    wb = _weights(pi, y, delta, cb, infl_pi, evmax)
    abs_key = _FN["abs_key"](maxes["Kmax"], maxes["Snmax"], p.eta, p.eta_in)
    wd += (abs_key[:, None] if full else np.where(ok, abs_key[:, None], 0.0)).astype(f32)  # per-key underflow
    abs_num = _FN["abs_num"](maxes["Kmax"], maxes["Snmax"], nn, n_tiles, p.eta)
    abs_den = _FN["abs_den"](maxes["Kmax"], maxes["Sdmax"], nn, n_tiles, p.eta)
    ga = gamax * gscale  # only the row max is used below (overflow check)

    # Values: masked keys never count (0 * NaN must not leak); NaN/inf in an allowed v -> no claim.
    vfin = np.isfinite(vs)
    v0 = np.where(vfin, vs, 0.0)
    used = ok.any(axis=0)
    vabs = np.where(used[:, None], np.abs(v0), 0.0)
    if vabs.max(initial=0.0) >= 2.0 ** 100:
        raise ValueError("value entries beyond 2^100 in magnitude: outside the bound's fp32 evaluation range")
    if used.any():
        center = 0.5 * (np.where(used[:, None], v0, -np.inf).max(axis=0)
                        + np.where(used[:, None], v0, np.inf).min(axis=0))
    else:
        center = np.zeros(ev_dim)
    vdev = np.where(used[:, None], np.abs(v0 - center[None, :]), 0.0)
    o = (pi @ v0.astype(f32)).astype(f64)
    g_l = (lk + 2) * _U32 / (1 - (lk + 2) * _U32)
    # |o - o_fp32| <= (weights' evaluation error + fp32 rounding) * sum pi |v| <= ... * max|v|; it only
    # ever multiplies first-order budgets below
    vmax_col = vabs.max(axis=0, initial=0.0)
    o_err = (infl_pi * (np.expm1(2 * evmax) + g_l + 2 * _U32))[:, None] * vmax_col[None, :] + _TINY
    sd = _up32((wd @ vabs.astype(f32)).astype(f64), lk) + _TINY
    sb = _up32((wb @ vdev.astype(f32)).astype(f64), lk) + _TINY
    sbl = wb.sum(axis=1, dtype=f64) * (1 + g_l) + _TINY
    sb += (np.abs(o - center[None, :]) + o_err) * sbl[:, None]
    o_abs = np.abs(o) + o_err
    beta = _FN["b_max"](maxes["Kmax"], maxes["Sdmax"]) + abs_den
    with np.errstate(all="ignore"):
        ob = _FN["o_total"](sb, sd, abs_num[:, None], abs_den[:, None], o_abs, beta[:, None],
                            rho[:, None], p.u_in, p.u_acc, n_tiles, p.eta, p.eta_in)
        lb = _FN["lse_total"](sbl, abs_den, rho)
    # fp64 evaluation of the formula itself (< 64 operations per chain): relative 2^-40 covers it
    ob = ob * (1 + 2.0 ** -40)
    lb = lb * (1 + 2.0 ** -40)
    # Assumptions: budgets below 1 (the remainder lemmas need x < 2; we ask < 1) and no overflow.
    overflow = (ga * 1.5 >= p.max_acc) | (nn * vmax_col.max(initial=0.0) * 2 >= p.max_acc)
    invalid = (beta >= 1) | (maxes["Kmax"] + maxes["Sdmax"] >= 1) | (maxes["Snmax"] >= 1) | overflow
    invalid |= ~np.isfinite(lb)
    ob = np.where(invalid[:, None] | ~np.isfinite(ob), np.inf, ob)
    lb = np.where(invalid, np.inf, lb)
    # Convexity cap (theorem 6, step_cap): the computed output is a near-convex combination of the
    # allowed values whatever the logit errors, so the bound never exceeds spread + O(u) |v|.
    if used.any():
        w_col = (np.where(used[:, None], v0, -np.inf).max(axis=0) - np.where(used[:, None], v0, np.inf).min(axis=0))
    else:
        w_col = np.zeros(ev_dim)
    cap_b = _FN["o_cap"](w_col[None, :], vmax_col[None, :], nn[:, None], n_tiles, rho[:, None], p.u_in,
                         p.u_acc, p.c_exp, p.eta, p.eta_in) * (1 + 2.0 ** -40)
    cap_b = np.where(np.isfinite(cap_b) & (cap_b >= 0), cap_b, np.inf)
    ob = np.minimum(ob, np.where(overflow[:, None], np.inf, cap_b))
    ob = np.where(vmax_col[None, :] + ob >= p.max_in, np.inf, ob)  # the store could round to inf
    if not vfin.all():
        ob = np.where((ok.astype(np.float64) @ (~vfin).astype(np.float64)) > 0, np.nan, ob)
    ob = np.where(bad_row[:, None], np.nan, ob)
    lb = np.where(bad_row, np.nan, lb)
    ob = np.where(nonempty[:, None], ob, 0.0)
    lb = np.where(nonempty, lb, 0.0)
    return ob, lb

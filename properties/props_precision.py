"""Precision properties: fp16 dot products past 65504, fp32 inputs within the fp32 bound, and the
fp32 weight ratios (the exponent's base, log2(e) constant and scale, to a few ulps)."""
from __future__ import annotations

import math

import hypothesis
import numpy as np
from hypothesis import strategies as st

from flashproof import spec
from flashproof.proofs.bounds_eval import RND
from flashproof.proofs.fp_model import gam

from . import oracle
from .cases import Case, MaskSpec, Problem, Regime, Shape
from .domain import conform
from .gen import admit, case_strategy, corner, domain, head_dim_at_least, judge_rows, problem_strategy, prop, sample, \
    small_tiles
from .inputs import build, logits_exact, torch_dtype
from .oracle import Violation, to_np
from .registry import not_applicable

__all__ = ["ratio_inputs", "weight_ratio_budget", "assert_weight_ratios"]


# ============================================================================ precision
def _fp16_large_strategy(ctx):
    # logit std M with M / scale > 65504 / 2: the unscaled dot products pass 65504
    es = tuple(e for e in ctx.limits.head_dims if e >= 16) or ctx.limits.head_dims
    pr = problem_strategy(ctx, dtype=st.just("float16"), regimes=("large",), values=("normal",),
                          e=st.sampled_from(es), softcap=st.none(), scale=st.just(None))
    reg = st.sampled_from((3e4, 1e5))
    pr = st.tuples(pr, reg).map(lambda x: Problem(**{**x[0].__dict__, "regime": Regime("large", 0.0, x[1])}))
    return case_strategy(ctx, pr)


@prop("fp16_large_dot_products_finite",
      asserts="fp16 inputs whose unscaled q.k exceeds 65504 give finite O (and LSE) within the bound",
      classes=(9,), strategy=_fp16_large_strategy,
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 1, 1, 5, 17, 64, 64), dtype="float16",
                                  regime=Regime("large", 0.0, 1e5), seed=91)],
      needs=lambda t: None if "float16" in t.dtypes else "the target declares no float16",
      bound="running_forward_bound (fp32 accumulators hold the dot products)")
def fp16_large_dot_products_finite(ctx, case):
    inp = build(case.problem, device=ctx.device)
    scv = spec.resolve_scale(inp.scale, inp.q.shape[-1])
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    for _ in range(4):  # a few unlucky draws stay below 65504: scale q by powers of two (exact)
        s, allowed = logits_exact(oracle.take_rows(inp, rows))  # the judged rows reach the regime
        big = np.abs(np.where(allowed, s, 0.0)).max(initial=0.0) / scv
        qmax = float(inp.q.abs().max())
        if big > 65504 * 1.01 or qmax * 2 > 16384 or big == 0:
            break
        inp = inp.with_(q=inp.q * 2.0 ** min(math.ceil(math.log2(65504 * 2 / big)), int(math.log2(16384 / qmax))))
    if big == 0:  # every row empty (e.g. a bool mask drew none allowed): no logit can reach the regime
        hypothesis.reject()
    if big <= 65504:
        raise AssertionError(f"flashproof: the fp16 overflow regime reached only |q.k| = {big:g}")
    o, lse = ctx.call(inp, tile=case.tile_dict)
    some = oracle.allowed_mask(inp).any(axis=-1)  # every row with a key, judged or not, must be finite
    oracle.assert_finite("O", to_np(o), where=np.broadcast_to(some[..., None], o.shape),
                         context=f" (unscaled |q.k| up to {big:.3g} > 65504)")
    if lse is not None:
        oracle.assert_finite("LSE", to_np(lse), where=some, context=f" (unscaled |q.k| up to {big:.3g})")
    ctx.judge(*sample(ctx, inp, o, lse, rows=rows), tile=case.tile_dict, fa=False)


def _fp32_strategy(ctx):
    regs = st.sampled_from((Regime("standard", 0.0, 3.0), Regime("large", 0.0, 30.0), Regime("rising", 0.0, 30.0),
                            Regime("spread", 0.0, 30.0)))
    pr = problem_strategy(ctx, dtype=st.just("float32"), values=("normal",),
                          e=st.sampled_from(tuple(e for e in ctx.limits.head_dims if e >= 40) or ctx.limits.head_dims))
    pr = st.tuples(pr, regs).map(lambda x: Problem(**{**x[0].__dict__, "regime": x[1]}))
    return case_strategy(ctx, pr)


@prop("fp32_stays_within_fp32_bound",
      asserts="fp32 inputs stay within the fp32-accumulator bound (TF32 or bf16 accumulation exceeds it)",
      classes=(9,), strategy=_fp32_strategy,
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 2, 2, 16, 32, 64, 64), dtype="float32",
                                  regime=Regime("standard", 0.0, 3.0), seed=101)],
      needs=lambda t: None if "float32" in t.dtypes else "the target declares no float32",
      bound="running_forward_bound at fp32 (u = 2^-24)")
def fp32_stays_within_fp32_bound(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    ctx.judge(*sample(ctx, inp, o, lse, tile=case.tile_dict), tile=case.tile_dict, fa=False)


# ============================================================================ fp32 weight ratios
#: Logit widths W of the weight-ratio rows. A relative error r in every exponent moves
#: ln(O_a / O_b) by r (s_a - s_b), up to r W; the correct budget grows by about 7 u W plus
#: per-merge terms (docs/properties.md, "The weight-ratio budget"), so wide rows separate them.
RATIO_WIDTHS = (24.0, 32.0, 40.0)
#: Row offsets are drawn in [-RATIO_OFFSET, RATIO_OFFSET] (the budget grows with |s|).
RATIO_OFFSET = 8.0
#: Dtypes with a weight-ratio claim: where fp16/bf16 rounding of P or O (~2^-11 .. 2^-8) hides any
#: error of a few ulps of fp32 in the exponents, fp32 (and fp64) must show it.
RATIO_DTYPES = ("float32", "float64")


def _ratio_dtypes(t):
    return tuple(d for d in RATIO_DTYPES if d in t.dtypes)


def _ratio_lengths(t, lk_cap):
    """Key counts covering 2-3 key tiles of size t (t + 1 .. 3t - 1), within ``lk_cap``."""
    return tuple(n for n in sorted({t + 1, 2 * t - 1, 2 * t + 1, 3 * t - 1}) if 2 <= n <= lk_cap)


def _ratio_key_counts(ctx, bn, lk_cap):
    """The key counts of a weight-ratio case for tiles of bn keys: _ratio_lengths, moved into the declared
    lengths (those then need a declared Ev >= Lk + 2 beyond the profile's head dims)."""
    dom = domain(ctx)
    if dom.default:
        return _ratio_lengths(bn, lk_cap)
    want = _ratio_lengths(bn, 1 << 20)
    fitted = sorted({dom.fit(n, "k") for n in want})
    return tuple(n for n in fitted if head_dim_at_least(ctx, n + 2) is not None)


def _ratio_strategy(ctx):
    t, dom = ctx.target, domain(ctx)
    if not dom.default and not any(_ratio_key_counts(ctx, int(c.get("block_n", 16)), 0)
                                   for c in (t.tile_configs or [{}])):
        not_applicable(f"one-hot value columns need Ev >= Lk + 2, and no declared head dim reaches the declared "
                       f"lengths (multiples of {dom.multiple} from {dom.span('k')[0]})")
    return _ratio_cases(ctx)


@st.composite
def _ratio_cases(draw, ctx):
    t, lim, dom = ctx.target, ctx.limits, domain(ctx)
    hd = tuple(sorted(lim.head_dims))
    lk_cap = max(hd) - 2  # one-hot columns need Ev >= Lk (+ a ramp and a noise column)
    cfgs = [c for c in t.tile_configs if _ratio_key_counts(ctx, int(c.get("block_n", 16)), lk_cap)] or [None]
    tile = draw(st.sampled_from([None if c is None else tuple(sorted(c.items())) for c in cfgs]))
    bn = int(dict(tile or {}).get("block_n", 16))
    lk = draw(st.sampled_from(_ratio_key_counts(ctx, bn, lk_cap) or (min(lk_cap, 40),)))
    ev = min((e for e in hd if e >= lk + 2), default=max(hd))
    if ev < lk + 2:  # the declared lengths exceed the profile's head dims: a declared one that fits
        ev = head_dim_at_least(ctx, lk + 2)
    e = ev if not t.value_dim else draw(st.sampled_from(tuple(x for x in hd if x <= 16) or hd[:1]))
    hkv, ratio = draw(st.sampled_from(((1, 1), (2, 1)) + (((1, 2), (2, 2), (1, 3)) if t.gqa else ())))
    b = draw(st.integers(1, max(1, min(2, lim.max_heads // (hkv * ratio)))))
    masks = [m for m in [MaskSpec()] + [MaskSpec(causal=a) for a in t.alignments] if dom.allows(m.causal)]
    if t.attn_mask:
        masks.append(MaskSpec(causal=dom.causal[0] if dom.causal_only else False, attn_mask="bool", density=0.8))
    mask = draw(st.sampled_from(masks))
    # top-left rows i < Lk see keys 0..i only; a target with equal lengths takes them square
    lq = lk if mask.causal == "top_left" or dom.square(mask.causal) else draw(st.integers(1, 6))
    pr = conform(t, Problem(shape=Shape(b, hkv * ratio, hkv, lq, lk, e, ev),
                            dtype=draw(st.sampled_from(_ratio_dtypes(t))),
                            regime=Regime("spread", 0.0, draw(st.sampled_from(RATIO_WIDTHS))), mask=mask,
                            values="onehot", scale=draw(st.sampled_from((None, 1.0, 0.3))),
                            seed=draw(st.integers(0, 2 ** 16))))
    hypothesis.assume(admit(ctx, pr))
    return Case(problem=pr, tile=tile)


def _ratio_corners(ctx):
    t = ctx.target
    dt = _ratio_dtypes(t)
    if not dt:
        return []
    cfgs = [c for c in small_tiles(ctx) if int(c.get("block_n", 16)) <= 16]
    tile = tuple(sorted(cfgs[0].items())) if cfgs else None
    dom = domain(ctx)
    causal = "top_left" if "top_left" in t.alignments else False if dom.allows(False) else dom.causal[0]
    lk = dom.fit_pair(17, 17, causal)[1]
    ev = head_dim_at_least(ctx, max(24, lk + 2)) or (24 if lk <= 22 else None)
    if ev is None:
        return []
    e = 8 if t.value_dim else ev
    # the shrunk counterexample of tests/mutants Log2eRounded4 (exp2 with log2(e) = 1.4427; deep profile)
    return [Case(problem=conform(t, Problem(shape=Shape(1, 1, 1, 17, 17, e, ev), dtype=dt[0],
                                            regime=Regime("spread", 0.0, 24.0), mask=MaskSpec(causal=causal),
                                            values="onehot", seed=0)), tile=tile)]


def ratio_inputs(case, *, device="cpu"):
    """The tensors of a weight-ratio case (its regime's spread is the logit width W; its values are
    "onehot" in this sense): logits s_ij = scale (o_i - W' u_j), |o_i| <= 8, u_j in [0, 1], exact in fp32
    for any summation order (two non-zero channels of <= 11 significant bits each, TF32-exact); one-hot
    value columns v_jj = 1 (j < Lk: column j of O is key j's weight, summed with exact zeros), then a
    ramp column v = u_j correlated with the logits, then noise columns."""
    import torch

    pr = case.problem
    sh = pr.shape
    inp = build(pr, device=device)  # the mask (and nothing else) comes from the problem's builder
    rng = np.random.default_rng(pr.seed)
    scv = pr.scale_value
    width = float(pr.regime.spread)
    w_int = float(max(1, round(width / scv)))  # integer W' < 2^11
    q = np.zeros((sh.batch, sh.heads, sh.lq, sh.e))
    q[..., 0] = np.round(rng.uniform(-RATIO_OFFSET, RATIO_OFFSET, q.shape[:-1]) / scv * 4) / 4  # grid 2^-2
    q[..., 1] = -w_int
    k = np.zeros((sh.batch, sh.kv_heads, sh.lk, sh.e))
    k[..., 0] = 1.0
    u = rng.integers(0, 257, (sh.batch, sh.kv_heads, sh.lk)) / 256.0  # grid 2^-8 in [0, 1]
    if sh.lk >= 2:  # both extremes present, at random keys (the row max may sit in any tile)
        ends = rng.choice(sh.lk, size=2, replace=False)
        u[..., ends[0]], u[..., ends[1]] = 0.0, 1.0
    k[..., 1] = u
    v = np.zeros((sh.batch, sh.kv_heads, sh.lk, sh.ev))
    n1 = min(sh.lk, sh.ev)
    v[:, :, np.arange(n1), np.arange(n1)] = 1.0
    if sh.ev > sh.lk:
        v[..., sh.lk] = u
    if sh.ev > sh.lk + 1:
        v[..., sh.lk + 1:] = np.round(rng.standard_normal(v[..., sh.lk + 1:].shape) * 256) / 256
    dt = torch_dtype(pr.dtype)
    t = lambda a: torch.from_numpy(a).to(dt).to(device)  # noqa: E731  (every entry is exact in the dtype)
    return inp.with_(q=t(q), k=t(k), v=t(v))


def weight_ratio_budget(s, allowed, *, u_acc, u_in, c_exp, n_tiles):
    """Per key: beta_j (B,H,Lq,Lk) and the common factor kappa, such that a correct kernel of that precision
    (theorem 6's model: proofs.precision_for's u_acc, u_in, c_exp) meets |ln(O_a / O_b) - (s_a - s_b)| <=
    beta_a + beta_b + kappa |s_a - s_b| on one-hot value columns with exact logits s (docs/properties.md,
    "The weight-ratio budget", derives each term). Every rounding is counted in log space, |ln(1 + d)| <=
    gamma_1(u) for |d| <= u; an argument error is relative to the computed argument, whose magnitude is
    within gamma_2(u) of the exact one (the scale and product roundings): the magnitudes below carry it."""
    g1, g2, g3 = gam(1, u_acc), gam(2, u_acc), gam(3, u_acc)
    ex = gam(1, 2 * c_exp * u_acc)  # |ln(1 + d)| for one exp/log of c_exp ulps (relative 2 c_exp u)
    ui = gam(1, u_in)
    with np.errstate(invalid="ignore"):
        sa = np.where(allowed, s, np.nan)
        m = np.nanmax(np.where(allowed.any(-1, keepdims=True), sa, 0.0), axis=-1, keepdims=True)
        lo = np.nanmin(np.where(allowed.any(-1, keepdims=True), sa, 0.0), axis=-1, keepdims=True)
        smax = np.nanmax(np.abs(np.where(allowed.any(-1, keepdims=True), sa, 0.0)), axis=-1, keepdims=True)
    n = np.maximum(allowed.sum(-1, keepdims=True), 1)
    lnn = np.log(n)
    t = n_tiles - 1  # merges a key's accumulator can pass through
    big = 1 + g2  # computed magnitudes within gamma_2 of the exact ones
    # one LSE-combine level: the log, the add m + log l, the subtraction lse_p - lse (each possibly with a
    # ln/log2 conversion), the exp and the product
    combine = ex * (lnn + 1) + g2 * big * (smax + lnn) + g2 * big * ((m - lo) + lnn + g2 * 2 * smax) + g1
    # the logit's rounding (scale product and a log2 e fold), the telescoped shifts (two roundings each, on
    # the computed gap), the exps and rescales of up to t merges, the division, P and O to the storage dtype
    gap = (m - s) + g2 * (np.abs(m) + np.abs(s))
    beta = g2 * big * np.abs(s) + g2 * gap + (1 + t) * ex + t * g1 + g1 + 2 * ui + combine
    return np.where(allowed, beta, 0.0), g3


def assert_weight_ratios(name, o, s, allowed, beta, kappa):
    """Every pair of allowed keys (a, b) of a row: |ln(O_a / O_b) - (s_a - s_b)| within the budget; every
    allowed key's weight O_a positive and finite; every masked key's column exactly 0."""
    lk = s.shape[-1]
    w = np.asarray(o, dtype=np.float64)[..., :lk]
    stray = ~allowed & (w != 0)
    if stray.any():
        idx = np.argwhere(stray)[:5]
        raise Violation(f"{name}: {int(stray.sum())} masked key(s) carry weight (one-hot column not exactly 0), "
                        "first at (b, h, i, key) " + ", ".join(f"{oracle.fmt_idx(i)} = {w[tuple(i)]:.4g}" for i in idx))
    lost = allowed & ~(np.isfinite(w) & (w > 0))
    if lost.any():
        lines = [f"{name}: {int(lost.sum())} allowed key(s) have a weight that is not positive and finite"]
        lines += oracle._nonfinite_report(name, w, allowed)
        zero = lost & np.isfinite(w)
        if zero.any():
            lines.append(f"  {int(zero.sum())} <= 0 (weight lost), first at (b, h, i, key) "
                         + ", ".join(f"{oracle.fmt_idx(i)} = {w[tuple(i)]:.4g}" for i in np.argwhere(zero)[:5]))
        raise Violation("\n".join(lines))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(allowed, np.log(np.where(allowed, w, 1.0)) - s, 0.0)
    pair = allowed[..., :, None] & allowed[..., None, :] & np.triu(np.ones((lk, lk), dtype=bool), 1)  # a < b
    d = s[..., :, None] - s[..., None, :]
    err = np.abs(r[..., :, None] - r[..., None, :])
    # the check's own float64 evaluation: each r = ln(w) - s carries its log's 2c u64 |ln w| <= 2c u64 (|r| + |s|)
    # (c = oracle.REFERENCE_C_EXP), the logit's rounding u64 |s| and the subtraction's u64 |r|, and the
    # difference of two r one more rounding: gamma_(2c+4)(u64) of the magnitudes
    mag = np.abs(r) + np.abs(s)
    ev = gam(2 * oracle.REFERENCE_C_EXP + 4, spec.FORMATS["float64"].u)
    tol = (beta[..., :, None] + beta[..., None, :] + kappa * np.abs(d)) * RND + ev * (mag[..., :, None] + mag[..., None, :])
    bad = pair & (err > tol)
    if not bad.any():
        return
    ratio = np.divide(err, tol, out=np.zeros_like(err), where=bad)
    order = np.argsort(ratio, axis=None)[::-1][:5]
    lines = [f"{name} violates the weight-ratio budget: ln(O_a / O_b) must equal s_a - s_b (the exact logit "
             f"difference) within the derived fp budget; {int(bad.sum())} key pair(s) exceed it, worst "
             f"|err|/budget = {ratio.flat[order[0]]:.4g}; worst (b, h, i, a, b):"]
    rel = []
    for flat in order:
        if ratio.flat[flat] <= 0:
            break
        i = np.unravel_index(flat, bad.shape)
        sd = d[i]
        got = (r[i[:4]] - r[i[:3] + (i[4],)]) + sd
        rel.append((got - sd) / sd if sd else 0.0)
        lines.append(f"    {oracle.fmt_idx(i)}: s_a - s_b = {sd:.6g}, ln(O_a / O_b) = {got:.9g}, |err| {err[i]:.4g} > "
                     f"budget {tol[i]:.4g}")
    if rel and all(x != 0 for x in rel):
        lines.append(f"  the error is {rel[0]:+.3g} relative to the logit difference: every exponent scaled by "
                     f"1 {rel[0]:+.3g} points to a wrong exp base, log2(e) constant or scale")
    raise Violation("\n".join(lines))


@prop("fp32_weight_ratios_exact",
      asserts="fp32 inputs with exact logits of width 24..40 and one-hot value columns: every pair of allowed keys "
              "has ln(O_a / O_b) = s_a - s_b within a derived fp32 budget (a wrong exp base, log2(e) constant, "
              "rounded scale or any relative exponent error above ~16-40 ulps fails), masked keys weigh exactly 0, "
              "and O (with a ramp and a noise column) meets the running bound and the FA criterion",
      classes=(9, 20), strategy=_ratio_strategy, corners=_ratio_corners,
      needs=lambda t: None if _ratio_dtypes(t) else "the target declares no float32",
      bound="weight-ratio budget (docs/properties.md; ~7 u_fp32 per unit of s_a - s_b plus 5 u per merge); "
            "running_forward_bound; FA criterion")
def fp32_weight_ratios_exact(ctx, case):
    inp = ratio_inputs(case, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    inp, o, lse = sample(ctx, inp, o, lse, tile=case.tile_dict)
    s, allowed = logits_exact(inp)
    tile = case.tile_dict if ctx.tile_fits(case.tile_dict, inp.q, inp.v) else None
    n_tiles = ctx.n_tiles(tile, inp.k.shape[2]) or max(1, inp.k.shape[2])  # no declared tiling: any tiling
    prec = ctx.precision(inp)
    beta, kappa = weight_ratio_budget(s, allowed, u_acc=prec.u_acc, u_in=prec.u_in, c_exp=prec.c_exp,
                                      n_tiles=n_tiles)
    # the ratios first: where both fail, their message names the exponent error (base, scale, log2 e)
    assert_weight_ratios("O (one-hot value columns: the attention weights)", to_np(o), s, allowed, beta, kappa)
    ctx.judge(inp, o, lse, tile=case.tile_dict)

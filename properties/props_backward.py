"""Gradient properties (targets that declare backward)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flashproof import spec

from . import oracle
from .cases import MaskSpec, Regime, Shape
from .gen import case_strategy, corner, empty_row_cases, empty_row_mechanisms, prop
from .inputs import build, logits_exact
from .oracle import Violation, to_np
from .registry import TargetError

__all__ = []

_REGIMES = ("standard", "spread", "very_negative", "rising", "ties")


def _needs_bwd(t):
    return None if t.backward else "the target declares no backward"


def _grads(ctx, inp, do, *, tile=None):
    """(dq, dk, dv) of the target by autograd, and O."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (inp.q, inp.k, inp.v))
    o, _ = ctx.call(inp.with_(q=q, k=k, v=v), tile=tile, return_lse=False)
    try:
        o.backward(do)
    except Exception as exc:
        raise TargetError(f"target {ctx.target.name!r} backward raised {type(exc).__name__}: {exc}") from exc
    for name, x in (("dq", q), ("dk", k), ("dv", v)):
        if x.grad is None:
            raise Violation(f"{name} is None: the target's output does not carry a gradient to {name[1:]}")
    return q.grad, k.grad, v.grad, o


def _naive_grads(inp, do):
    from flashproof import reference

    q, k, v = (x.detach().clone().requires_grad_(True) for x in (inp.q, inp.k, inp.v))
    o, _ = reference.forward_naive(q, k, v, **inp.opts())
    o.backward(do)
    return q.grad, k.grad, v.grad


def _do(inp, seed):
    import torch

    g = torch.Generator().manual_seed(int(seed))
    b, h, lq, ev = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.v.shape[-1]
    return torch.randn(b, h, lq, ev, generator=g).to(inp.q.dtype).to(inp.q.device)


def _magnitudes(inp, do):
    """Condition magnitudes of each gradient (float64), for the derived epsilons:
    M_dv_j = sum_i P_ij |dO_i|, M_dq_i = scale sum_j P_ij A_ij |k_j|, M_dk_j = scale sum_i P_ij A_ij |q_i|
    (dk, dv summed over the query heads of a KV head), with A_ij = |dO_i| . |v_j| + |dO_i| . |O_i| >=
    |dP_ij| + |D_i|: dP_ij - D_i cancels (exactly 0 for a single key), but a kernel computes dP and D
    as separate length-Ev dot products whose rounding is gamma_Ev of the absolute sums A_ij."""
    s, allowed = logits_exact(inp)
    q, k, v, dO = to_np(inp.q), to_np(inp.k), to_np(inp.v), to_np(do)
    b, h, lq, e = q.shape
    hkv = k.shape[1]
    rep = h // hkv
    kk, vv = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    with np.errstate(all="ignore"):
        sm = np.where(allowed, s, -np.inf)
        m = sm.max(axis=-1, keepdims=True, initial=-np.inf)
        p = np.where(allowed, np.exp(sm - np.where(np.isfinite(m), m, 0.0)), 0.0)
        l = p.sum(axis=-1, keepdims=True)
        p = np.where(l > 0, p / np.where(l > 0, l, 1.0), 0.0)
        o = p @ vv
        dp = dO @ np.swapaxes(vv, -1, -2)
        D = (dO * o).sum(axis=-1, keepdims=True)
        w = p * (np.abs(dO) @ np.swapaxes(np.abs(vv), -1, -2) + (np.abs(dO) * np.abs(o)).sum(axis=-1, keepdims=True))
    sc = spec.resolve_scale(inp.scale, e)
    if inp.softcap is not None and spec.normalize_softcap(inp.softcap) is not None:
        w = w * 1.0  # |d softcap/ds| <= 1
    m_dq = sc * (w @ np.abs(kk))
    m_dk = sc * (np.swapaxes(w, -1, -2) @ np.abs(q))
    m_dv = np.swapaxes(p, -1, -2) @ np.abs(dO)
    m_dk = m_dk.reshape(b, hkv, rep, *m_dk.shape[2:]).sum(axis=2)
    m_dv = m_dv.reshape(b, hkv, rep, *m_dv.shape[2:]).sum(axis=2)
    return dict(dq=m_dq, dk=m_dk, dv=m_dv, p=p, dp=dp, D=D, o=o, allowed=allowed, s=s)


def _grad_strategy(ctx, **kw):
    # the gradient references run on the whole problem (no row sample): lengths <= 512 keep them < 1 s
    return case_strategy(ctx, regimes=_REGIMES, values=("normal", "offset"), max_len=min(ctx.limits.max_len, 512),
                         extra=st.integers(0, 10 ** 6).map(lambda s: (("do_seed", s),)), **kw)


def _grad_corners(ctx):
    al = ctx.target.alignments
    out = [corner(ctx, shape=Shape(1, 2, 1 if ctx.target.gqa else 2, 9, 21, 40, 40), seed=1300,
                  mask=MaskSpec(causal=al[0]) if al else MaskSpec(), extra=(("do_seed", 0),)),
           corner(ctx, shape=Shape(1, 1, 1, 5, 17, 16, 16), regime=Regime("very_negative", -1e4, 1.0), seed=1301,
                  extra=(("do_seed", 1),))]
    if len(al) > 1:
        # every declared alignment with Lq < Lk, where they differ: a backward that recomputes P
        # under another alignment than the forward's (bug class 6) fails here whatever the draws
        out += [corner(ctx, shape=Shape(1, 2, 2, 6, 15, 8, 8), seed=1302 + i, mask=MaskSpec(causal=a),
                       extra=(("do_seed", 2),)) for i, a in enumerate(al[1:])]
    return out


@prop("gradients_match_reference",
      asserts="dQ, dK, dV (autograd through the target) satisfy the FlashAttention criterion against the exact "
              "backward: max error per head <= 2x the naive same-precision baseline's + eps; finite wherever the "
              "exact gradient is",
      classes=(11, 6, 15), strategy=_grad_strategy, corners=_grad_corners, needs=_needs_bwd,
      bound="FA criterion; eps = (4 u_in + gamma_(Lq+Lk+Ev+4)(u_acc) + rho) M with M the gradient's condition "
            "magnitude (absolute sums of the dP and D dot products) and rho the recomputed P's relative error")
def gradients_match_reference(ctx, case):
    from flashproof import reference

    inp = build(case.problem, device=ctx.device)
    do = _do(inp, case.get("do_seed"))
    dq, dk, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    ref = reference.backward_fp64(inp.q, inp.k, inp.v, do, **inp.opts())
    naive = _naive_grads(inp, do)
    mags = _magnitudes(inp, do)
    u_in = ctx.u_in(inp)
    u_acc = oracle.precision(inp.dtype_name, accumulator=ctx.target.accumulator).u_acc
    n = inp.q.shape[2] + inp.k.shape[2] + inp.v.shape[-1] + 4  # dS sums over keys or rows; dP, D over Ev
    gam = n * u_acc / (1 - n * u_acc)
    top = spec.FORMATS[inp.dtype_name].max / 2
    # a FlashAttention backward recomputes P = exp(s - lse) from the stored LSE: its relative error
    # rho grows with |s| (u_acc |s| at |s| ~ 1e6 in fp32 is 6%); it multiplies every magnitude M
    rho = _p_rel_err(ctx, inp, mags)
    hkv = inp.k.shape[1]
    rho_q = rho.max(axis=(-1, -2), initial=0.0)                                          # (b, h)
    rho_kv = rho_q.reshape(rho_q.shape[0], hkv, -1).max(axis=-1)                          # (b, hkv)
    for name, got, want, nv in zip(("dQ", "dK", "dV"), (dq, dk, dv), ref, naive):
        g, w, nn = to_np(got), np.asarray(want, dtype=np.float64), to_np(nv)
        # a gradient beyond the storage dtype's range legitimately overflows on store: no claim there
        fin = np.isfinite(w) & (np.abs(w) < top)
        oracle.assert_finite(name, g, where=fin)
        err = np.where(fin, np.abs(g - w), 0.0).max(axis=(-1, -2), initial=0.0)
        nerr = np.where(fin, np.abs(nn - w), 0.0)
        nerr = np.where(np.isnan(nerr), np.inf, nerr).max(axis=(-1, -2), initial=0.0)
        M = mags[name.lower()]
        r = rho_q if name == "dQ" else rho_kv
        # the fp64 reference's own error is ~1e-15 relative to M, included in the 2^-40 M term
        with np.errstate(invalid="ignore"):
            eps = (4 * u_in + gam + 2.0 ** -40 + r) * M.max(axis=(-1, -2), initial=0.0) + 4 * u_in * np.abs(w).max(
                axis=(-1, -2), initial=0.0)
        eps = np.where(np.isnan(eps), np.inf, eps)  # rho = inf (logits beyond the model) times M = 0
        bad = err > 2 * nerr + eps
        if bad.any():
            lines = [f"{name} fails the FlashAttention criterion (max error per head <= 2 x the naive "
                     f"same-precision baseline's + eps):"]
            for i in np.argwhere(bad)[:5]:
                i = tuple(i)
                lines.append(f"    head {oracle.fmt_idx(i)}: max |err| {err[i]:.4g} > 2 x {nerr[i]:.4g} + eps {eps[i]:.4g}")
            pos = np.unravel_index(np.argmax(np.where(fin, np.abs(g - w), 0.0)), w.shape)
            lines.append(f"  worst element {oracle.fmt_idx(pos)}: got {g[pos]:.6g}, exact {w[pos]:.6g}")
            raise Violation("\n".join(lines))


def _p_rel_err(ctx, inp, mags):
    """(B, H, Lq, Lk) bound on the relative error of a recomputed P_ij = exp(s_ij - lse_i) (0 where
    masked): the logit's fp32 dot product (gamma_(E+2) of scale |q||k|, twice), 6 u |s| for the
    scaling and subtraction, the stored LSE's error (the forward bound's LSE part), the exp's
    c_exp ulps (+4 for the exp2 fold), and the rounding of P to the storage dtype."""
    q = to_np(inp.q)
    e = q.shape[-1]
    rep = q.shape[1] // inp.k.shape[1]
    prec = oracle.precision(inp.dtype_name, accumulator=ctx.target.accumulator)
    u = prec.u_acc
    _, l_b = ctx.bound(inp)
    s, allowed = mags["s"], mags["allowed"]
    sc = spec.resolve_scale(inp.scale, e)
    kk = np.repeat(to_np(inp.k), rep, axis=1)
    A = sc * (np.abs(q) @ np.swapaxes(np.abs(kk), -1, -2))
    with np.errstate(all="ignore"):
        rho = np.expm1(2 * (e + 2) * 2 * u * A + 6 * u * np.abs(np.where(allowed, s, 0.0)) + l_b[..., None]
                       + (prec.c_exp + 4) * u) + ctx.u_in(inp)
    return np.where(allowed, np.where(np.isnan(rho), np.inf, rho), 0.0)


def _sum_bounds(ctx, inp, do, mags, dk, dv):
    """Derived bounds on |sum_j dK_j| and |sum_j dV_j - sum_i dO_i| per (b, kv head, column).

    sum_j dS_ij = dO_i . (O_true - O_stored) - sum_j (dP-D) (P_hat - P): the first term is the D_i computed
    from the stored (rounded) O, <= 2 u_in sum_c |dO_ic O_ic|; the second is the relative error rho of the
    recomputed P (logit and lse errors, exp ulps) times sum_j P (|dP| + |D|); storing dK and rounding dS
    add u_in per term; the accumulations add gamma_(Lq+Lk+Ev+4)(u_acc) of the magnitude (the dP and D dot
    products' absolute sums, _magnitudes)."""
    q = to_np(inp.q)
    b, h, lq, e = q.shape
    hkv = inp.k.shape[1]
    rep = h // hkv
    u_in = ctx.u_in(inp)
    prec = oracle.precision(inp.dtype_name, accumulator=ctx.target.accumulator)
    u = prec.u_acc
    n = lq + inp.k.shape[2] + inp.v.shape[-1] + 4  # the dP and D dot products (length Ev) too
    gam = n * u / (1 - n * u)
    allowed, p, dp, D, o = mags["allowed"], mags["p"], mags["dp"], mags["D"], mags["o"]
    sc = spec.resolve_scale(inp.scale, e)
    rho = _p_rel_err(ctx, inp, mags)
    with np.errstate(all="ignore"):
        dO = to_np(do)
        term = np.where(p > 0, rho * p * (np.abs(dp) + np.abs(D)), 0.0)  # p = 0 contributes 0, even at rho = inf
        eps_row = 2 * u_in * np.abs(dO * o).sum(axis=-1) + term.sum(axis=-1)
        eps_row = np.where(allowed.any(axis=-1), eps_row, 0.0)
    with np.errstate(all="ignore"):
        dkb = sc * np.einsum("bhie,bhi->bhe", np.abs(q), eps_row)                     # (b, h, e)
        dkb = np.where(np.isnan(dkb), np.inf, dkb)
    dkb = dkb.reshape(b, hkv, rep, e).sum(axis=2)
    dkb = dkb + u_in * np.abs(to_np(dk)).sum(axis=2) + (gam + u_in) * mags["dk"].sum(axis=2)
    rho_row = np.where(allowed, rho, 0.0).max(axis=-1)                                # (b, h, i)
    nonempty = allowed.any(axis=-1)
    dvb = (np.abs(dO) * (rho_row + u_in)[..., None] * nonempty[..., None]).sum(axis=2)  # (b, h, ev)
    dvb = dvb.reshape(b, hkv, rep, -1).sum(axis=2)
    dvb = dvb + u_in * np.abs(to_np(dv)).sum(axis=2) + gam * mags["dv"].sum(axis=2)
    return dkb * (1 + 2.0 ** -30), dvb * (1 + 2.0 ** -30)


@prop("grad_dk_sums_to_zero",
      asserts="sum_j dK_j = 0 for every (batch, KV head) without softcap: softmax weights sum to 1, so "
              "sum_j dS_ij = 0 exactly (softcap's tanh' differs per key and breaks the identity)",
      classes=(11,), strategy=lambda ctx: _grad_strategy(ctx, softcap=st.none()), corners=_grad_corners,
      needs=_needs_bwd,
      bound="derived in _sum_bounds: D from the stored O, recomputed-P relative error, storage and accumulation")
def grad_dk_sums_to_zero(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(inp, case.get("do_seed"))
    dq, dk, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    mags = _magnitudes(inp, do)
    dkb, _ = _sum_bounds(ctx, inp, do, mags, dk, dv)
    tot = to_np(dk).sum(axis=2)
    oracle.assert_within("sum_j dK_j", tot, np.zeros_like(tot), dkb, what="the derived bound around 0",
                         dims="(b, kv_head, e)")


@prop("grad_dv_sums_to_do",
      asserts="sum_j dV_j = sum_i dO_i over rows with an allowed key, for every (batch, KV head)",
      classes=(11, 1), strategy=_grad_strategy, corners=_grad_corners, needs=_needs_bwd,
      bound="derived in _sum_bounds: recomputed-P relative error, P rounding, storage and accumulation")
def grad_dv_sums_to_do(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(inp, case.get("do_seed"))
    dq, dk, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    mags = _magnitudes(inp, do)
    _, dvb = _sum_bounds(ctx, inp, do, mags, dk, dv)
    b, h = inp.q.shape[0], inp.q.shape[1]
    hkv = inp.k.shape[1]
    nonempty = mags["allowed"].any(axis=-1)
    want = (to_np(do) * nonempty[..., None]).sum(axis=2).reshape(b, hkv, h // hkv, -1).sum(axis=2)
    oracle.assert_within("sum_j dV_j", to_np(dv).sum(axis=2), want, dvb, what="sum_i dO_i over non-empty rows",
                         dims="(b, kv_head, c)")


def _masked_grad_strategy(ctx):
    return st.tuples(empty_row_cases(ctx), st.integers(0, 10 ** 6)).map(
        lambda x: type(x[0])(problem=x[0].problem, tile=x[0].tile, extra=x[0].extra + (("do_seed", x[1]),)))


def _needs_masked_grad(t):
    if not t.backward:
        return "the target declares no backward"
    if empty_row_mechanisms(t, declared=True):
        return None
    return "the target declares no way to express a fully masked row"


@prop("grad_masked_rows_zero",
      asserts="gradients are finite everywhere; rows with no allowed key get dQ = 0 exactly and keys no row "
              "attends get dK = dV = 0 exactly",
      classes=(1, 11),
      strategy=_masked_grad_strategy,
      corners=lambda ctx: [],
      needs=_needs_masked_grad, bound="exact zeros")
def grad_masked_rows_zero(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(inp, case.get("do_seed"))
    dq, dk, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    _, allowed = logits_exact(inp)
    mags = _magnitudes(inp, do)
    top = spec.FORMATS[inp.dtype_name].max / 2
    for name, g in (("dQ", dq), ("dK", dk), ("dV", dv)):
        # |exact gradient| <= its condition magnitude M: below half the dtype's range it must be finite
        oracle.assert_finite(name, to_np(g), where=mags[name.lower()] < top, context=" (fully masked rows present)")
    empty = ~allowed.any(axis=-1)
    gq = to_np(dq)
    bad = empty[..., None] & (gq != 0)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        raise Violation("dQ on fully masked rows must be exactly 0: " +
                        ", ".join(f"{oracle.fmt_idx(i)} = {gq[tuple(i)]!r}" for i in idx))
    b, h, lq, lk = allowed.shape
    hkv = inp.k.shape[1]
    dead = ~allowed.reshape(b, hkv, h // hkv, lq, lk).any(axis=(2, 3))
    for name, g in (("dK", dk), ("dV", dv)):
        gn = to_np(g)
        bad = dead[..., None] & (gn != 0)
        if bad.any():
            idx = np.argwhere(bad)[:5]
            raise Violation(f"{name} of keys no row attends must be exactly 0: " +
                            ", ".join(f"{oracle.fmt_idx(i)} = {gn[tuple(i)]!r}" for i in idx))

"""Gradient properties (targets that declare backward): every tolerance is theorem 4b's running
backward bound (proofs.running_backward_bound) at the target's declared precision, or a sum of those
bounds plus the float64 sum's own rounding."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flashproof import spec
from flashproof.proofs import Unbounded
from flashproof.proofs.fp_model import gam

from . import oracle
from .cases import MaskSpec, Regime, Shape
from .gen import Undeclared, case_strategy, corner, empty_row_cases, empty_row_mechanisms, prop
from .inputs import build
from .oracle import Violation, to_np
from .registry import TargetError

_U64 = spec.FORMATS["float64"].u

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


def _do(ctx, inp, seed):
    """dO drawn from ``seed``; 0 on the rows whose O the target makes no claim on (ctx.unjudged_rows:
    declared empty_rows "unspecified"), so the exact dK, dV get nothing from them whatever O is there."""
    import torch

    g = torch.Generator().manual_seed(int(seed))
    b, h, lq, ev = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.v.shape[-1]
    do = torch.randn(b, h, lq, ev, generator=g)
    empty = ctx.unjudged_rows(inp)
    if empty is not None:
        do = do.masked_fill(torch.from_numpy(empty)[..., None], 0.0)
    return do.to(inp.q.dtype).to(inp.q.device)


def _unjudged_dq(ctx, inp, dq, want):
    """The target's dQ (float64 numpy) with the rows the target makes no claim on (ctx.unjudged_rows) set to
    the exact value: what a kernel does with its own unspecified O there is its business (dK, dV stay judged)."""
    got = to_np(dq)
    empty = ctx.unjudged_rows(inp)
    return got if empty is None else np.where(empty[..., None], want, got)


def _bounds(ctx, inp, do, tile):
    """Theorem 4b's (dq, dk, dv) bounds at the target's declared precision (proofs.running_backward_bound).
    A problem where the theorem has no finite bound (logits so large that a FlashAttention-2 backward's
    recomputed P = exp(s - lse) may overflow: the model's claim ends there) is discarded, with the
    theorem's reason; it is not judged by anything else."""
    try:
        return ctx.backward_bound(inp, do, tile=tile)
    except Unbounded as exc:
        raise Undeclared(f"outside theorem 4b's claim: {exc}") from None


def _reference(inp, do):
    """The exact gradients (reference.backward_fp64) and their radius: backward_fp64 is a FlashAttention-2
    backward in float64 (P from its fp64 forward's LSE, D from its O), so theorem 4b at float64 precision
    (proofs.running_backward_bound, exp within oracle.REFERENCE_C_EXP ulps) bounds its error."""
    from flashproof import reference

    ref = reference.backward_fp64(inp.q, inp.k, inp.v, do, **inp.opts())
    rad = oracle.backward_bound(inp, do, accumulator="fp64", dtype="float64", c_exp=oracle.REFERENCE_C_EXP,
                                on_unbounded="inf")
    return [np.asarray(x, dtype=np.float64) for x in ref], rad


_DIMS = {"dQ": "(b, h, i, e)", "dK": "(b, kv_head, j, e)", "dV": "(b, kv_head, j, c)"}


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
      asserts="dQ, dK, dV (autograd through the target) are within theorem 4b's running bound of the exact "
              "gradients, element by element (finite wherever the exact gradient is, NaN where it is NaN)",
      classes=(11, 6, 15), strategy=_grad_strategy, corners=_grad_corners, needs=_needs_bwd,
      bound="proofs.running_backward_bound at the declared precision (+ the fp64 reference's radius: the same "
            "theorem at float64); problems outside its claim are discarded")
def gradients_match_reference(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(ctx, inp, case.get("do_seed"))
    bounds = _bounds(ctx, inp, do, case.tile_dict)
    dq, dk, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    ref, rad = _reference(inp, do)
    dq = _unjudged_dq(ctx, inp, dq, ref[0])
    for name, got, want, b, r in zip(("dQ", "dK", "dV"), (dq, dk, dv), ref, bounds, rad):
        oracle.assert_within(name, to_np(got), want, b + r, what="theorem 4b's running backward bound "
                             "[proofs.running_backward_bound, fp64 reference]", dims=_DIMS[name])


def _sum_tolerance(bound, got, axis):
    """|sum_j got_j - sum_j exact_j| <= sum_j bound_j + the float64 sum's own rounding: the got_j are exact
    in float64 and any order of the n - 1 additions errs by at most gamma_(n-1)(2^-53) sum_j |got_j|
    (Higham, Accuracy and Stability, (4.4); proofs.fp_model.gam)."""
    n = got.shape[axis]
    g = np.abs(got)
    return bound.sum(axis=axis) + gam(max(n - 1, 0), _U64) * g.sum(axis=axis)


@prop("grad_dk_sums_to_zero",
      asserts="sum_j dK_j = 0 for every (batch, KV head) without softcap: softmax weights sum to 1, so "
              "sum_j dS_ij = 0 exactly (softcap's tanh' differs per key and breaks the identity)",
      classes=(11,), strategy=lambda ctx: _grad_strategy(ctx, softcap=st.none()), corners=_grad_corners,
      needs=_needs_bwd,
      bound="sum_j of theorem 4b's dK_j bounds (proofs.running_backward_bound) + the float64 sum's rounding "
            "gamma_(Lk-1) sum_j |dK_j|")
def grad_dk_sums_to_zero(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(ctx, inp, case.get("do_seed"))
    _, bk, _ = _bounds(ctx, inp, do, case.tile_dict)
    _, dk, _, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    g = to_np(dk)
    tot = g.sum(axis=2)
    oracle.assert_within("sum_j dK_j", tot, np.zeros_like(tot), _sum_tolerance(bk, g, 2),
                         what="the sum of theorem 4b's dK bounds around 0", dims="(b, kv_head, e)")


@prop("grad_dv_sums_to_do",
      asserts="sum_j dV_j = sum_i dO_i over rows with an allowed key, for every (batch, KV head)",
      classes=(11, 1), strategy=_grad_strategy, corners=_grad_corners, needs=_needs_bwd,
      bound="sum_j of theorem 4b's dV_j bounds (proofs.running_backward_bound) + the float64 sums' rounding "
            "(gamma_(Lk-1) sum_j |dV_j| and gamma_(rows-1) sum_i |dO_i|)")
def grad_dv_sums_to_do(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(ctx, inp, case.get("do_seed"))
    _, _, bv = _bounds(ctx, inp, do, case.tile_dict)
    _, _, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    b, h = inp.q.shape[0], inp.q.shape[1]
    hkv = inp.k.shape[1]
    nonempty = oracle.allowed_mask(inp).any(axis=-1)
    terms = (to_np(do) * nonempty[..., None])                      # (b, h, i, c): exact in float64
    terms = terms.reshape(b, hkv, h // hkv * terms.shape[2], -1)    # the rows of a KV head's query heads
    want = terms.sum(axis=2)
    g = to_np(dv)
    tol = _sum_tolerance(bv, g, 2) + gam(max(terms.shape[2] - 1, 0), _U64) * np.abs(terms).sum(axis=2)
    oracle.assert_within("sum_j dV_j", g.sum(axis=2), want, tol, what="sum_i dO_i over non-empty rows within the "
                         "sum of theorem 4b's dV bounds", dims="(b, kv_head, c)")


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
      asserts="rows with no allowed key get dQ = 0 exactly and keys no row attends get dK = dV = 0 exactly; the "
              "other gradients are finite wherever the exact one plus its bound fits the dtype",
      classes=(1, 11),
      strategy=_masked_grad_strategy,
      corners=lambda ctx: [],
      needs=_needs_masked_grad, bound="exact zeros; finiteness where |exact| + proofs.running_backward_bound < the "
                                      "dtype's largest value")
def grad_masked_rows_zero(ctx, case):
    inp = build(case.problem, device=ctx.device)
    do = _do(ctx, inp, case.get("do_seed"))
    bounds = _bounds(ctx, inp, do, case.tile_dict)
    dq, dk, dv, _ = _grads(ctx, inp, do, tile=case.tile_dict)
    ref, rad = _reference(inp, do)
    dq = _unjudged_dq(ctx, inp, dq, ref[0])  # "unspecified" empty rows: dQ there not judged
    top = spec.FORMATS[inp.dtype_name].max
    for name, g, want, b, r in zip(("dQ", "dK", "dV"), (dq, dk, dv), ref, bounds, rad):
        with np.errstate(invalid="ignore", over="ignore"):
            fits = np.isfinite(want) & (np.abs(want) + b + r < top)
        oracle.assert_finite(name, to_np(g), where=fits, context=" (fully masked rows present)")
    allowed = oracle.allowed_mask(inp)
    empty = ~allowed.any(axis=-1)
    gq = to_np(dq)  # the exact 0 on rows excused by _unjudged_dq
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

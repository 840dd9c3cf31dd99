"""Invariance properties: row shifts, key permutation and duplication, scale and value
equivariance, GQA against repeated heads, V = ones, the convex hull, head-dim zero padding."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from flashproof import spec
from flashproof.proofs.fp_model import gam
from flashproof.proofs.rope import attention_shift_bound

from . import oracle
from .cases import Case, MaskSpec, Problem, Regime, Shape
from .gen import (Undeclared, case_strategy, corner, domain, head_dim_at_least, judge_rows, plain_mask,
                  problem_strategy, prop, rows_of, sample, tile_sizes)
from .inputs import build, tensor_like
from .oracle import to_np
from .registry import not_applicable
from .strategies import lengths

__all__ = []


# ============================================================================ row shift
def _shift_strategy(ctx):
    modes = ("qk", "mask") if ctx.target.attn_mask else ("qk",)
    extra = st.tuples(st.sampled_from(modes), st.sampled_from((1e4, -1e4, 3e3, 1.0)), st.booleans(),
                      st.integers(0, 1000)).map(
        lambda x: (("mode", x[0]), ("shift", x[1]), ("uniform", x[2]), ("shift_seed", x[3])))
    # no softcap: a shift of the raw logits is not a shift after c*tanh(s/c)
    return case_strategy(ctx, extra=extra, regimes=("standard", "spread", "ties", "rising"), softcap=st.none())


def _shift_corners(ctx):
    out = [corner(ctx, seed=21, extra=(("mode", "qk"), ("shift", -1e4), ("uniform", True), ("shift_seed", 0))),
           corner(ctx, shape=Shape(1, 1, 1, 3, 40, 16, 16), regime=Regime("spread", 0.0, 30.0), seed=22,
                  extra=(("mode", "qk"), ("shift", 1e4), ("uniform", False), ("shift_seed", 1)))]
    if ctx.target.attn_mask:
        out.append(corner(ctx, seed=23, mask=MaskSpec(attn_mask="additive", density=0.7, empty_rows=1),
                          extra=(("mode", "mask"), ("shift", -1e4), ("uniform", False), ("shift_seed", 2))))
    return out


def _row_shifts(inp, c, uniform, seed):
    b, h, lq = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2]
    if uniform:
        return np.full((b, h, lq), float(c))
    rng = np.random.default_rng(seed)
    return rng.uniform(-abs(c), abs(c), (b, h, lq))


@prop("row_shift_leaves_output_and_moves_lse",
      asserts="adding c in [-1e4, 1e4] to every logit of a row (exactly, through an extra q.k component or an "
              "additive attn_mask constant) leaves O unchanged and moves the LSE by exactly c (within the bounds)",
      classes=(2, 3, 14), strategy=_shift_strategy, corners=_shift_corners,
      bound="running_forward_bound of the shifted problem against the exact unshifted O, LSE + c")
def row_shift_leaves_output_and_moves_lse(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    dt = case.problem.dtype
    c = _row_shifts(inp, case.get("shift"), case.get("uniform"), case.get("shift_seed"))
    if case.get("mode") == "mask":
        cq = to_np(tensor_like(inp.q, c))  # shifts rounded to the dtype: exact from here on
        b, h, lq, lk = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.k.shape[2]
        base = np.zeros((b, h, lq, lk))
        if inp.attn_mask is not None:
            am = inp.attn_mask.detach().cpu()
            if am.dtype == torch.bool:
                base = np.where(np.broadcast_to(am.numpy(), base.shape), 0.0, -np.inf)
            else:
                # finite biases dropped (0): bias + c must be exact in the dtype for the shift to be exact
                base = np.where(np.isneginf(np.broadcast_to(am.to(torch.float64).numpy(), base.shape)), -np.inf, 0.0)
        inp0 = inp.with_(attn_mask=tensor_like(inp.q, base))
        inp1 = inp.with_(attn_mask=tensor_like(inp.q, base + cq[..., None]))
        shift = cq
    else:
        e = inp.q.shape[-1]
        scv = spec.resolve_scale(inp.scale, e)
        cmax = float(np.abs(c).max()) if c.size else 0.0
        beta = 2.0 ** max(0, math.ceil(math.log2(max(cmax / (scv * spec.FORMATS[dt].max / 4 / 2), 1.0))))
        q0, k0 = to_np(inp.q).copy(), to_np(inp.k).copy()
        q0[..., 0] = 0.0
        k0[..., 0] = beta
        a = to_np(tensor_like(inp.q, c / (scv * beta)))  # q_i0 of the shifted problem, in the dtype
        q1 = q0.copy()
        q1[..., 0] = a
        inp0 = inp.with_(q=tensor_like(inp.q, q0), k=tensor_like(inp.k, k0))
        inp1 = inp0.with_(q=tensor_like(inp.q, q1))
        # the real shift sigma beta a, computed from the float64 scale (one rounding of 1/sqrt(E)) times an
        # exact power of two and one product: within gamma_2(u64) of it
        shift = scv * beta * a
    o0, l0 = ctx.call(inp0, tile=case.tile_dict)
    o1, l1 = ctx.call(inp1, tile=case.tile_dict)
    rows = judge_rows(ctx, inp0, tile=case.tile_dict)
    inp0, o0, l0 = sample(ctx, inp0, o0, l0, rows=rows)
    inp1, o1, l1 = sample(ctx, inp1, o1, l1, rows=rows)
    shift = rows_of(np.asarray(shift), rows)  # (b, h, i)
    ex, _ = ctx.judge(inp0, o0, l0, tile=case.tile_dict, label="unshifted", fa=False)
    ob1, lb1 = ctx.bound(inp1, tile=case.tile_dict)
    oracle.assert_within("O (shifted rows)", to_np(o1), ex.o, ob1 + ex.o_rad,
                         what="invariance under a row shift (bound of the shifted problem)")
    if l1 is not None:
        want = ex.lse + shift
        u64 = spec.FORMATS["float64"].u
        # the shift's float64 error (gamma_2, above; an additive mask's shift is exact) and the sum's rounding
        tol = lb1 + ex.lse_rad + gam(2, u64) * np.abs(shift) + gam(1, u64) * np.abs(np.where(np.isfinite(want), want, 0))
        oracle.assert_within("LSE (shifted rows)", to_np(l1), want, tol, what="LSE moving by exactly the shift c",
                             dims="(b, h, i)")


# ============================================================================ key permutation
def _prefix_rows(inp):
    """(a, rows): keys 0..a-1 may be permuted among themselves (with their attn_mask columns) while rows
    ``rows`` (query indices) keep their allowed keys as a set. Without a causal mask or window: every
    key, every row (a = Lk, rows None). Under one (a causal-only target): the keys before or up to the
    middle row's positional range, and the rows whose range holds all of them or none."""
    lq, lk = inp.q.shape[2], inp.k.shape[2]
    pos = oracle.allowed_mask(inp.with_(attn_mask=None))[0, 0]  # (Lq, Lk): positional, the same in every (b, h)
    if pos.all():
        return lk, None
    busy = [i for i in (lq // 2, lq - 1) if pos[i].any()]
    if not busy:
        return 0, list(range(lq))
    r = pos[busy[0]]
    lo = int(np.argmax(r))
    a = lo + int(r.sum()) if lo == 0 else lo  # each row's allowed keys are one contiguous range
    keep = pos[:, :a].all(axis=1) | ~pos[:, :a].any(axis=1)
    return a, [int(i) for i in np.nonzero(keep)[0]]


@prop("kv_permutation_invariant",
      asserts="permuting keys and values together (with the attn_mask columns) leaves O and LSE unchanged "
              "within the bounds (a causal-only target: permuting the keys every judged row attends or none "
              "of them, keys 0..a-1)",
      classes=(19, 4),
      strategy=lambda ctx: case_strategy(ctx, mask=plain_mask(ctx),  # None for a causal-only target: causal ones
                                         extra=st.integers(0, 10 ** 6).map(lambda s: (("perm_seed", s),))),
      corners=lambda ctx: [corner(ctx, regime=Regime("rising", 0.0, 1e3), seed=31, extra=(("perm_seed", 0),))],
      bound="running_forward_bound of the permuted problem against the exact unpermuted values")
def kv_permutation_invariant(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    lk = inp.k.shape[2]
    a, keep = _prefix_rows(inp)
    perm = np.concatenate([np.random.default_rng(case.get("perm_seed")).permutation(a), np.arange(a, lk)])
    pt = torch.from_numpy(perm).to(inp.k.device)
    am = inp.attn_mask
    if am is not None:
        am = am.index_select(-1, pt)
    inp1 = inp.with_(k=inp.k.index_select(2, pt), v=inp.v.index_select(2, pt), attn_mask=am)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    o1, l1 = ctx.call(inp1, tile=case.tile_dict)
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    if keep is not None:  # only the rows whose allowed keys the permutation keeps
        rows = [i for i in (range(inp.q.shape[2]) if rows is None else rows) if i in set(keep)]
        if not rows:
            return
    inp, o0, l0 = sample(ctx, inp, o0, l0, rows=rows)
    inp1, o1, l1 = sample(ctx, inp1, o1, l1, rows=rows)
    ex, _ = ctx.judge(inp, o0, l0, tile=case.tile_dict, label="original order", fa=False)
    ob1, lb1 = ctx.bound(inp1, tile=case.tile_dict)
    oracle.assert_within("O (permuted keys)", to_np(o1), ex.o, ob1 + ex.o_rad, what="invariance under key permutation")
    if l1 is not None:
        oracle.assert_within("LSE (permuted keys)", to_np(l1), ex.lse, lb1 + ex.lse_rad,
                             what="invariance under key permutation", dims="(b, h, i)")


# ============================================================================ duplicate key
def _dup_strategy(ctx):
    """Problems whose duplicated call (Lk + 1 keys) is in the domain: as drawn where any length is
    (the original problem's Lk + 1 is then as drawn), else drawn in the domain and one key dropped
    (the original is never called: its Lk need not be a declared length, nor Lq == Lk)."""
    dom = domain(ctx)
    extra = st.integers(0, 10 ** 6).map(lambda s: (("dup_seed", s),))
    base = case_strategy(ctx, mask=plain_mask(ctx), extra=extra)  # causal-only: causal problems
    if dom.default:
        return base

    def drop_one(c):
        sh = c.problem.shape
        if sh.lk < 2:
            lk = dom.fit(2, "k", c.problem.mask.causal)
            if dom.square(c.problem.mask.causal):
                return None  # Lq = Lk = 1 in the domain and no longer length: cannot grow
            sh = Shape(**{**sh.__dict__, "lk": lk})
        p = Problem(**{**c.problem.__dict__, "shape": Shape(**{**sh.__dict__, "lk": sh.lk - 1})})
        return Case(problem=p, tile=c.tile, extra=c.extra)
    return base.map(drop_one).filter(lambda c: c is not None)


def _multiplicity_bias(inp, inp1, j, pos):
    """(B, H, Lq, Lk) float64 additive mask of the original problem that makes its exact attention equal
    the duplicated call's: log of how many copies of key j row i attends there (ln 2 where both copies
    are allowed, 0 where one is, -inf where none), plus key j's finite additive mask value."""
    import torch

    b, h, lq, lk = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.k.shape[2]
    allowed1 = oracle.allowed_mask(inp1)  # (B, H, Lq, Lk + 1): positional and attn_mask
    keys = np.arange(lk)
    count = allowed1[..., keys + (keys >= pos)].astype(np.float64)  # each original key's copy, after the insert
    count[..., j] += allowed1[..., pos]  # and key j's second copy, inserted at pos
    base = np.zeros((b, h, lq, lk))
    if inp.attn_mask is not None and inp.attn_mask.dtype != torch.bool:
        full = inp.attn_mask.detach().expand(b, h, lq, lk).cpu().double().numpy()
        base = np.where(np.isfinite(full), full, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(count > 0, base + np.log(np.maximum(count, 1.0)), -np.inf)


@prop("duplicate_key_adds_ln2",
      asserts="duplicating key j (k_j and v_j inserted again) gives the exact attention of the original problem with "
              "ln 2 added to logit j (in every row that attends both copies; a causal mask may give a row one copy)",
      classes=(14, 19),
      strategy=_dup_strategy,
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 1, 1, 4, 6, 16, 16), seed=41, extra=(("dup_seed", 0),))],
      bound="running_forward_bound of the duplicated problem against the exact original + ln 2 bias")
def duplicate_key_adds_ln2(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    b, h, lq, lk = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.k.shape[2]
    if lk == 0:
        return
    rng = np.random.default_rng(case.get("dup_seed"))
    j = int(rng.integers(0, lk))
    pos = int(rng.integers(0, lk + 1))
    idx = list(range(lk))
    idx.insert(pos, j)
    it = torch.tensor(idx, device=inp.k.device)
    am_dup = None
    if inp.attn_mask is not None:
        am_dup = inp.attn_mask.detach().expand(b, h, lq, lk).index_select(-1, it)
    inp1 = inp.with_(k=inp.k.index_select(2, it), v=inp.v.index_select(2, it), attn_mask=am_dup)
    # the exact logit + log(copies), as a float64 additive bias (ln 2 to 2^-53) on the original keys
    bias = _multiplicity_bias(inp, inp1, j, pos)
    o1, l1 = ctx.call(inp1, tile=case.tile_dict)
    rows = judge_rows(ctx, inp1, tile=case.tile_dict)
    inp1, o1, l1 = sample(ctx, inp1, o1, l1, rows=rows)
    ob1, lb1 = ctx.bound(inp1, tile=case.tile_dict)
    # the exact original problem with the bias as an additive float64 mask, on host copies (exact)
    ref = oracle.take_rows(inp.with_(q=inp.q.cpu(), k=inp.k.cpu(), v=inp.v.cpu(), attn_mask=torch.from_numpy(bias),
                                     causal=False, window=None), rows)
    c = oracle.exact(ref, need_o=ob1, need_lse=lb1 if l1 is not None else None)
    # the float64 bias b + fl(log copies) is off from b + log copies by <= u ln 2 + u |bias| (two roundings): a
    # perturbation delta of key j's logit moves the LSE by <= delta and O by <= proofs.rope.attention_shift_bound
    u64 = spec.FORMATS["float64"].u
    col = np.where(np.isfinite(bias[..., j]), np.abs(bias[..., j]), 0.0)
    delta = rows_of((u64 * math.log(2.0) + gam(1, u64) * (col + math.log(2.0))) * (1 + u64), rows)   # (b, h, i)
    vv = to_np(inp.v)
    spread = (vv.max(initial=0.0) - vv.min(initial=0.0)) if vv.size else 0.0
    oracle.assert_within("O (key duplicated)", to_np(o1), c.o, ob1 + c.o_rad + attention_shift_bound(delta, spread)[..., None],
                         what=f"the exact attention with ln 2 added to the duplicated key's logit [{c.source}]")
    if l1 is not None:
        oracle.assert_within("LSE (key duplicated)", to_np(l1), c.lse, lb1 + c.lse_rad + delta,
                             what="the exact LSE with ln 2 added to the duplicated key's logit", dims="(b, h, i)")


# ============================================================================ scale equivariance
@prop("scale_equivariant",
      asserts="attention(2^a q, k, v, scale=s 2^-a) and attention(q, k, 2^b v, scale=s) / 2^b equal attention(q, k, "
              "v, scale=s) within the bounds (an ignored, doubled or padded-dim scale fails)",
      classes=(18, 8),
      strategy=lambda ctx: case_strategy(ctx, regimes=("standard", "spread", "rising", "large"),
                                         extra=st.tuples(st.sampled_from((1, 2, 3)), st.sampled_from((1, 2, 4))).map(
                                             lambda ab: (("qpow", ab[0]), ("vpow", ab[1])))),
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 2, 2 if not ctx.target.gqa else 1, 9, 13, 72, 72),
                                  seed=51, extra=(("qpow", 1), ("vpow", 1)))],
      bound="running_forward_bound of each rescaled problem against the same exact values")
def scale_equivariant(ctx, case):
    inp = build(case.problem, device=ctx.device)
    dt = case.problem.dtype
    s = float(case.problem.scale_value)
    a, bpow = case.get("qpow"), case.get("vpow")
    qmax = float(np.abs(to_np(inp.q)).max(initial=0.0))
    vmax = float(np.abs(to_np(inp.v)).max(initial=0.0))
    while a > 0 and qmax * 2.0 ** a > spec.FORMATS[dt].max / 4:
        a -= 1
    while bpow > 0 and vmax * 2.0 ** bpow > spec.FORMATS[dt].max / 4:
        bpow -= 1
    base = inp.with_(scale=s)
    o0, l0 = ctx.call(base, tile=case.tile_dict)
    rows = judge_rows(ctx, base, tile=case.tile_dict)
    ex, _ = ctx.judge(*sample(ctx, base, o0, l0, rows=rows), tile=case.tile_dict, label=f"scale={s!r}", fa=False)
    inp_q = base.with_(q=inp.q * 2.0 ** a, scale=s * 2.0 ** -a)
    o1, l1 = ctx.call(inp_q, tile=case.tile_dict)
    inp_q, o1, l1 = sample(ctx, inp_q, o1, l1, rows=rows)
    ob1, lb1 = ctx.bound(inp_q, tile=case.tile_dict)
    oracle.assert_within(f"O (q * 2^{a}, scale / 2^{a})", to_np(o1), ex.o, ob1 + ex.o_rad,
                         what="scale equivariance")
    if l1 is not None:
        oracle.assert_within(f"LSE (q * 2^{a}, scale / 2^{a})", to_np(l1), ex.lse, lb1 + ex.lse_rad,
                             what="scale equivariance", dims="(b, h, i)")
    inp_v = base.with_(v=inp.v * 2.0 ** bpow)
    o2, _ = ctx.call(inp_v, tile=case.tile_dict, return_lse=False)
    inp_v, o2 = sample(ctx, inp_v, o2, rows=rows)
    ob2, _ = ctx.bound(inp_v, tile=case.tile_dict)
    oracle.assert_within(f"O (v * 2^{bpow})", to_np(o2), ex.o * 2.0 ** bpow, ob2 + ex.o_rad * 2.0 ** bpow,
                         what="equivariance in v")


# ============================================================================ GQA
def _gqa_shapes(ctx):
    lim, dom = ctx.limits, domain(ctx)
    ts = tile_sizes(ctx)

    def mk(hkv, ratio, lq, lk, e):
        while hkv * ratio > lim.max_heads and hkv > 1:
            hkv -= 1
        while hkv * ratio > lim.max_heads:
            ratio -= 1
        return Shape(1, hkv * ratio, hkv, lq, lk if not dom.equal else lq, e, e)
    if dom.default:
        lqs = lks = lengths(max_len=lim.max_len, tile_sizes=ts)
    else:
        lqs, lks = dom.lengths("q", cap=lim.max_len, tile_sizes=ts), dom.lengths("k", cap=lim.max_len, tile_sizes=ts)
    return st.builds(mk, st.sampled_from((1, 2, 3)), st.sampled_from((3, 5, 6, 7, 2, 4, 8)), lqs, lks,
                     st.sampled_from(lim.head_dims))


@prop("gqa_equals_repeated_mha",
      asserts="GQA/MQA (H/Hkv in 2..8 incl. 3, 5, 6, 7; Hkv in {1, 2, 3}) equals the exact attention with query "
              "head h reading KV head h // (H/Hkv), and the target's MHA run on repeat_interleaved K/V",
      classes=(15,),
      strategy=lambda ctx: case_strategy(ctx, problem_strategy(ctx, shape=_gqa_shapes(ctx))),
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 6, 2, 7, 11, 16, 16), seed=61),
                           corner(ctx, shape=Shape(1, 7, 1, 3, 5, 16, 16), seed=62),
                           corner(ctx, shape=Shape(1, 6, 3, 4, 9, 16, 16), seed=63)],
      needs=lambda t: None if t.gqa else "the target declares no GQA",
      bound="running_forward_bound of each run")
def gqa_equals_repeated_mha(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    ex, _ = ctx.judge(*sample(ctx, inp, o, lse, rows=rows), tile=case.tile_dict, label="GQA", fa=False)
    rep = inp.q.shape[1] // inp.k.shape[1]
    mha = inp.with_(k=inp.k.repeat_interleave(rep, dim=1), v=inp.v.repeat_interleave(rep, dim=1))
    o1, l1 = ctx.call(mha, tile=case.tile_dict)
    ctx.judge(*sample(ctx, mha, o1, l1, rows=rows), tile=case.tile_dict, label="MHA with repeated K/V", fa=False,
              ex=ex)


# ============================================================================ V = ones, convex hull
@prop("ones_values_give_ones",
      asserts="with V = ones every row that has an allowed key outputs 1 (and empty rows 0), within the bound",
      classes=(10, 1),
      strategy=lambda ctx: case_strategy(ctx, values=("ones",)),
      corners=lambda ctx: [corner(ctx, values="ones", regime=Regime("spread", 0.0, 30.0), seed=71),
                           corner(ctx, values="ones", regime=Regime("very_negative", -1e4, 1.0), seed=72)],
      bound="running_forward_bound (exact O is exactly 1)")
def ones_values_give_ones(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    ctx.judge(*sample(ctx, inp, o, lse, tile=case.tile_dict), tile=case.tile_dict, fa=False)


@prop("output_in_convex_hull",
      asserts="each output column lies within [min_j v_jc, max_j v_jc] over the row's allowed keys, up to the bound",
      classes=(10, 4, 20),
      strategy=lambda ctx: case_strategy(ctx, values=("normal", "offset", "large")),
      corners=lambda ctx: [corner(ctx, values="offset", regime=Regime("spread", 0.0, 1e3), seed=81)],
      bound="running_forward_bound around the hull")
def output_in_convex_hull(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, _ = ctx.call(inp, tile=case.tile_dict, return_lse=False)
    inp, o = sample(ctx, inp, o, tile=case.tile_dict)
    o_b, _ = ctx.bound(inp, tile=case.tile_dict)
    allowed = oracle.allowed_mask(inp)
    v = to_np(inp.v)
    rep = inp.q.shape[1] // inp.k.shape[1]
    b, h, nq = allowed.shape[:3]
    lo = np.empty((b, h, nq, v.shape[-1]))
    hi = np.empty_like(lo)
    for bi in range(b):  # one (b, h) slice at a time: (rows, Lk, Ev) is the largest temporary
        for hi_ in range(h):
            a = allowed[bi, hi_][..., None]
            vv = v[bi, hi_ // rep][None]
            lo[bi, hi_] = np.where(a, vv, np.inf).min(axis=1)
            hi[bi, hi_] = np.where(a, vv, -np.inf).max(axis=1)
    empty = ~allowed.any(axis=-1)
    lo = np.where(empty[..., None], 0.0, lo)
    hi = np.where(empty[..., None], 0.0, hi)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    oracle.assert_within("O", to_np(o), mid, half + o_b, what="the convex hull of the allowed V rows (+ bound)")


# ============================================================================ head-dim padding
def _padded_dims(ctx, e, ev, pad):
    """The declared (E2, Ev2) that E, Ev + pad pad to, or None when the target declares none."""
    e2 = head_dim_at_least(ctx, e + pad)
    ev2 = head_dim_at_least(ctx, ev + pad) if ctx.target.value_dim else e2
    if e2 is None or ev2 is None or (not ctx.target.value_dim and e2 != ev2):
        return None
    return e2, ev2



def _padding_strategy(ctx):
    """Cases whose head dims E (and Ev) + pad reach a declared head dim: E drawn among those that can."""
    es = tuple(e for e in ctx.limits.head_dims if head_dim_at_least(ctx, e + 1) is not None)
    if not es:
        not_applicable(f"zero-padding the head dim needs a declared head dim above another one; the target declares "
                       f"only {tuple(ctx.target.head_dims)}")
    kw = {} if es == tuple(ctx.limits.head_dims) else {"e": st.sampled_from(es)}
    return case_strategy(ctx, extra=st.sampled_from((1, 8, 24)).map(lambda p: (("pad", p),)), **kw).filter(
        lambda c: _padded_dims(ctx, c.problem.shape.e, c.problem.shape.ev, c.get("pad")) is not None)


@prop("head_dim_zero_padding_invariant",
      asserts="zero-padding q, k (and v) along the head dim with the scale fixed at 1/sqrt(E_real) leaves O "
              "unchanged within the bound, and the padded value columns are 0",
      classes=(18,),
      strategy=lambda ctx: _padding_strategy(ctx),
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 1, 1, 6, 9, 40, 40), seed=111, extra=(("pad", 24),))],
      bound="running_forward_bound of the padded problem against the exact unpadded O")
def head_dim_zero_padding_invariant(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    e, ev = inp.q.shape[-1], inp.v.shape[-1]
    dims = _padded_dims(ctx, e, ev, case.get("pad"))
    if dims is None:  # a corner on a target whose head dims stop here
        raise Undeclared(f"no declared head dim above E={e}, Ev={ev}")
    e2, ev2 = dims
    s = float(case.problem.scale_value)
    base = inp.with_(scale=s)
    o0, l0 = ctx.call(base, tile=case.tile_dict)
    rows = judge_rows(ctx, base, tile=case.tile_dict)
    ex, _ = ctx.judge(*sample(ctx, base, o0, l0, rows=rows), tile=case.tile_dict, label="unpadded", fa=False)
    pad = lambda x, n: torch.nn.functional.pad(x, (0, n - x.shape[-1]))  # noqa: E731
    padded = base.with_(q=pad(inp.q, e2), k=pad(inp.k, e2), v=pad(inp.v, ev2))
    o1, l1 = ctx.call(padded, tile=case.tile_dict)
    padded, o1, l1 = sample(ctx, padded, o1, l1, rows=rows)
    ob1, lb1 = ctx.bound(padded, tile=case.tile_dict)
    want = np.concatenate([ex.o, np.zeros(ex.o.shape[:-1] + (ev2 - ev,))], axis=-1)
    rad = np.concatenate([ex.o_rad, np.zeros(ex.o.shape[:-1] + (ev2 - ev,))], axis=-1)
    oracle.assert_within(f"O (E {e}->{e2}, Ev {ev}->{ev2}, explicit scale)", to_np(o1), want, ob1 + rad,
                         what="invariance under zero-padding the head dim")
    if l1 is not None:
        oracle.assert_within("LSE (padded head dim)", to_np(l1), ex.lse, lb1 + ex.lse_rad,
                             what="invariance under zero-padding the head dim", dims="(b, h, i)")

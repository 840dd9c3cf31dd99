"""Forward properties: the error bound, tilings, invariances, precision, determinism."""
from __future__ import annotations

import math

import hypothesis
import numpy as np
from hypothesis import strategies as st

from flashproof import spec

from . import oracle
from .gen import (Undeclared, case_strategy, conform, corner, first_dtype, head_dim_at_least, in_domain, judge_case,
                  judge_rows, problem_strategy, prop, rows_of, run_tiles, sample, small_tiles, tile_sizes)
from .oracle import Violation, to_np
from .strategies import (REGIMES, Case, MaskSpec, Problem, Regime, Shape, build, key_partitions, logits_exact,
                         max_abs_logit, torch_dtype)
from .suite import skip

__all__ = []


def _torch():
    import torch

    return torch


def _emax(dtype):
    return {"float16": 65504.0, "bfloat16": 3.38e38, "float32": 3.4e38, "float64": 1.79e308}[dtype] / 4


def _with_tensor(t, arr):
    """A tensor like ``t`` (dtype, device) holding float64 ``arr`` (which must be representable)."""
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(arr)).to(t.dtype).to(t.device)


def _plain_mask(ctx):
    """Masks without positional structure (so keys may be permuted, sliced, duplicated)."""
    t = ctx.target

    def fn(shp):
        from .strategies import masks

        return masks(alignments=(), window=False, attn_mask=t.attn_mask, lq=shp.lq)
    return fn


# ============================================================================ error bound
def _corners_bound(ctx):
    t = ctx.target
    ts = tile_sizes(ctx, keys=("block_n",)) or (16,)
    al = t.alignments
    out = [
        corner(ctx, seed=1),
        corner(ctx, shape=Shape(1, 1, 1, 1, ts[0] + 1, 16, 16), regime=Regime("very_negative", -1e4, 1.0), seed=2),
        corner(ctx, shape=Shape(1, 3, 1, 9, 2 * ts[0] + 3, 72, 72), regime=Regime("rising", 0.0, 1e4),
               mask=MaskSpec(causal=al[-1]) if al else MaskSpec(), seed=3),
        corner(ctx, shape=Shape(1, 2, 2, 5, 21, 16, 16), regime=Regime("spread", 0.0, 1e4), values="offset", seed=4),
    ]
    if "float16" in t.dtypes:
        out.append(corner(ctx, shape=Shape(1, 1, 1, 4, 19, 64, 64), dtype="float16",
                          regime=Regime("large", 0.0, 1e5), seed=5))
    return out


@prop("output_within_error_bound",
      asserts="|O - exact| <= running_forward_bound per element (and LSE), and the FlashAttention criterion "
              "(max error per head <= 2x the naive same-precision baseline's + eps), on every regime, mask, "
              "shape and tile config the target declares",
      classes=(2, 3, 5, 9, 18, 19, 20), strategy=lambda ctx: case_strategy(ctx), corners=_corners_bound,
      bound="running_forward_bound (+ reference radius); FA criterion eps from oracle.fa_eps")
def output_within_error_bound(ctx, case):
    judged = judge_case(ctx, case)
    if judged.violation is not None:
        raise judged.violation


# ============================================================================ tail tiles
def _tail_lengths(t, cap):
    """L = t .. 2t - 1 (every residue modulo t once, the first tile full), or ``cap`` of them
    (edges and evenly spaced residues) when t is larger than the cap."""
    if t <= cap:
        return list(range(t, 2 * t))
    edge = {t, t + 1, 2 * t - 1, t + t // 2}
    step = max(1, t // (cap - len(edge)))
    return sorted(edge | set(range(t, 2 * t, step)))


def _tail_strategy(ctx):
    t = ctx.target
    offs = st.sampled_from((-1e4, -1e6, -1e30))
    return st.builds(lambda tile, axis, off, dt, seed: Case(problem=Problem(dtype=dt, seed=seed), tile=tile,
                                                            extra=(("axis", axis), ("offset", off))),
                     tile=st.sampled_from([tuple(sorted(c.items())) for c in run_tiles(ctx)] or [None]),
                     axis=st.sampled_from(("lk", "lq")), off=offs, dt=st.sampled_from(t.dtypes),
                     seed=st.integers(0, 1000))


def _tail_corners(ctx):
    cfgs = small_tiles(ctx)
    tile = tuple(sorted(cfgs[0].items())) if cfgs else None
    dt = first_dtype(ctx)
    return [Case(problem=Problem(dtype=dt), tile=tile, extra=(("axis", "lk"), ("offset", -1e4))),
            Case(problem=Problem(dtype=dt), tile=tile, extra=(("axis", "lq"), ("offset", -1e4)))]


@prop("tail_tiles_every_residue",
      asserts="with every logit of the row far below 0 (-1e4 .. -1e30), O and LSE stay within the bound for "
              "every length L = t .. 2t-1 (every residue modulo the tile size t, after a full tile), and L = 1, "
              "t - 1, on keys and on queries",
      classes=(5, 2), strategy=_tail_strategy, corners=_tail_corners, examples=0.34,
      bound="running_forward_bound")
def tail_tiles_every_residue(ctx, case):
    tile = case.tile_dict
    axis, off = case.get("axis"), case.get("offset")
    key = "block_n" if axis == "lk" else "block_m"
    t = int(tile.get(key, 32))
    dt = case.problem.dtype
    e = head_dim_at_least(ctx, 16) or 16
    cap = 32 if ctx.profile.endswith("ci") else 48  # residues per example; more examples cover the rest
    lens = _tail_lengths(t, cap) + [1, max(1, t - 1)]  # and a first tile that is itself partial
    for n in lens:
        lq, lk = (2, n) if axis == "lk" else (n, 3)
        reg = Regime("very_negative", off, 1.0)
        if -off > max_abs_logit(dt, 1 / math.sqrt(e), accumulator=ctx.target.accumulator) / 4:
            reg = Regime("very_negative", -1e4, 1.0)
        pr = Problem(shape=Shape(1, 1, 1, lq, lk, e, e), dtype=dt, regime=reg, seed=case.problem.seed + n)
        if not in_domain(ctx.target, pr):
            continue  # below the target's declared min_lq / min_lk
        inp = build(pr, device=ctx.device)
        o, lse = ctx.call(inp, tile=tile)
        ctx.judge(inp, o, lse, tile=tile, label=f"{axis}={n}, tile {key}={t}", fa=False)


# ============================================================================ tilings
def _tilings_strategy(ctx):
    n = len(run_tiles(ctx))
    if n < 2:
        skip("the target declares fewer than 2 tile configs")
    k = min(ctx.limits.max_tiles_per_prop, n)
    idx = st.lists(st.integers(0, n - 1), min_size=2, max_size=k, unique=True)
    return st.builds(lambda c, ii: Case(problem=c.problem, tile=None, extra=(("tiles", tuple(ii)),)),
                     case_strategy(ctx, tile=False), idx)


def _tilings_corners(ctx):
    cfgs = run_tiles(ctx)
    if len(cfgs) < 2:
        return []
    order = sorted(range(len(cfgs)), key=lambda i: cfgs[i].get("block_m", 0) * cfgs[i].get("block_n", 0))
    ts = tile_sizes(ctx, keys=("block_n",)) or (16,)
    c = corner(ctx, shape=Shape(1, 2, 1 if ctx.target.gqa else 2, 19, 2 * ts[0] + 5, 40, 40),
               regime=Regime("rising", 0.0, 1e3), tile=None, seed=11)
    return [Case(problem=c.problem, extra=(("tiles", (order[0], order[-1])),))]


@prop("tilings_agree",
      asserts="every declared tile config gives O and LSE within the bound of the same exact values "
              "(so any two tilings agree within the sum of their bounds)",
      classes=(19,), strategy=_tilings_strategy, corners=_tilings_corners,
      needs=lambda t: None if len(t.tile_configs) >= 2 else "the target declares fewer than 2 tile configs",
      bound="running_forward_bound with each config's n_tiles")
def tilings_agree(ctx, case):
    inp = build(case.problem, device=ctx.device)
    cfgs = run_tiles(ctx)
    rows = judge_rows(ctx, inp)
    ex = None
    for i in case.get("tiles"):
        tile = cfgs[i]
        o, lse = ctx.call(inp, tile=tile)
        inp_s, o, lse = sample(ctx, inp, o, lse, rows=rows)
        o_b, l_b = ctx.bound(inp_s, tile=tile)
        if ex is None:
            ex = oracle.exact(inp_s, need_o=o_b, need_lse=l_b if lse is not None else None)
        ctx.judge(inp_s, o, lse, tile=tile, label=f"tile {tile}", fa=False, ex=ex, bounds=(o_b, l_b))


# ============================================================================ tiled reference
def _tiled_ref_strategy(ctx):
    shp = st.builds(lambda lq, lk, e: Shape(1, 1, 1, lq, lk, e, e), st.integers(1, 6), st.integers(1, 12),
                    st.sampled_from((1, 3, 8)))
    pr = st.builds(Problem, shape=shp, dtype=st.sampled_from(("float16", "bfloat16", "float32")),
                   regime=st.sampled_from((Regime(), Regime("spread", 0.0, 1e3), Regime("ties"))),
                   mask=st.sampled_from((MaskSpec(), MaskSpec(causal="top_left"), MaskSpec(causal="bottom_right"))),
                   seed=st.integers(0, 1000))
    return pr.flatmap(lambda p: key_partitions(lk=p.shape.lk).map(
        lambda part: Case(problem=p, extra=(("cuts", part[0]), ("tree", part[1]), ("tree_seed", part[2])))))


@prop("tiled_reference_equals_monolithic",
      asserts="at 160-bit precision, spec.merge over irregular key blocks (empty ones included) along any "
              "merge tree equals the monolithic softmax, to within one float64 ulp of the rounded results",
      classes=(13, 19), strategy=_tiled_ref_strategy, calls_target=False,
      corners=lambda ctx: [Case(problem=Problem(shape=Shape(1, 1, 1, 3, 7, 3, 3), dtype="float32"),
                                extra=(("cuts", (0, 2, 2, 7)), ("tree", "balanced"), ("tree_seed", 0)))],
      bound="1 ulp of float64 (both are correctly rounded from 160-bit values)")
def tiled_reference_equals_monolithic(ctx, case):
    from flashproof import reference

    inp = build(case.problem)
    kw = inp.opts()
    o_t, l_t = reference.forward_tiled(inp.q, inp.k, inp.v, boundaries=list(case.get("cuts")),
                                       tree=case.get("tree"), seed=case.get("tree_seed"), arithmetic="mp",
                                       prec=160, **kw)
    o_m, l_m = reference.forward_mp(inp.q, inp.k, inp.v, prec=160, **kw)
    ulp = lambda x: np.spacing(np.where(np.isfinite(x), np.abs(x), 0.0)) + 2.0 ** -1074  # noqa: E731
    oracle.assert_within("O (tiled mp reference)", o_t, o_m, ulp(o_m), what="equality with the monolithic reference")
    oracle.assert_within("LSE (tiled mp reference)", l_t, l_m, ulp(l_m), what="equality with the monolithic reference",
                         dims="(b, h, i)")


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
    torch = _torch()
    inp = build(case.problem, device=ctx.device)
    dt = case.problem.dtype
    c = _row_shifts(inp, case.get("shift"), case.get("uniform"), case.get("shift_seed"))
    if case.get("mode") == "mask":
        cq = to_np(_with_tensor(inp.q, c))  # shifts rounded to the dtype: exact from here on
        b, h, lq, lk = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.k.shape[2]
        base = np.zeros((b, h, lq, lk))
        if inp.attn_mask is not None:
            am = inp.attn_mask.detach().cpu()
            if am.dtype == torch.bool:
                base = np.where(np.broadcast_to(am.numpy(), base.shape), 0.0, -np.inf)
            else:
                # finite biases dropped (0): bias + c must be exact in the dtype for the shift to be exact
                base = np.where(np.isneginf(np.broadcast_to(am.to(torch.float64).numpy(), base.shape)), -np.inf, 0.0)
        inp0 = inp.with_(attn_mask=_with_tensor(inp.q, base))
        inp1 = inp.with_(attn_mask=_with_tensor(inp.q, base + cq[..., None]))
        shift = cq
    else:
        e = inp.q.shape[-1]
        scv = spec.resolve_scale(inp.scale, e)
        cmax = float(np.abs(c).max()) if c.size else 0.0
        beta = 2.0 ** max(0, math.ceil(math.log2(max(cmax / (scv * _emax(dt) / 2), 1.0))))
        q0, k0 = to_np(inp.q).copy(), to_np(inp.k).copy()
        q0[..., 0] = 0.0
        k0[..., 0] = beta
        a = to_np(_with_tensor(inp.q, c / (scv * beta)))  # q_i0 of the shifted problem, in the dtype
        q1 = q0.copy()
        q1[..., 0] = a
        inp0 = inp.with_(q=_with_tensor(inp.q, q0), k=_with_tensor(inp.k, k0))
        inp1 = inp0.with_(q=_with_tensor(inp.q, q1))
        shift = scv * beta * a  # exact real shift, to float64 rounding (4 ulps slack below)
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
        tol = lb1 + ex.lse_rad + 4 * 2.0 ** -53 * np.abs(shift) + 2.0 ** -52 * np.abs(np.where(np.isfinite(want), want, 0))
        oracle.assert_within("LSE (shifted rows)", to_np(l1), want, tol, what="LSE moving by exactly the shift c",
                             dims="(b, h, i)")


# ============================================================================ key permutation
@prop("kv_permutation_invariant",
      asserts="permuting keys and values together (with the attn_mask columns) leaves O and LSE unchanged "
              "within the bounds",
      classes=(19, 4),
      strategy=lambda ctx: case_strategy(ctx, mask=_plain_mask(ctx),
                                         extra=st.integers(0, 10 ** 6).map(lambda s: (("perm_seed", s),))),
      corners=lambda ctx: [corner(ctx, regime=Regime("rising", 0.0, 1e3), seed=31, extra=(("perm_seed", 0),))],
      bound="running_forward_bound of the permuted problem against the exact unpermuted values")
def kv_permutation_invariant(ctx, case):
    inp = build(case.problem, device=ctx.device)
    lk = inp.k.shape[2]
    perm = np.random.default_rng(case.get("perm_seed")).permutation(lk)
    pt = _torch().from_numpy(perm).to(inp.k.device)
    am = inp.attn_mask
    if am is not None:
        am = am.index_select(-1, pt)
    inp1 = inp.with_(k=inp.k.index_select(2, pt), v=inp.v.index_select(2, pt), attn_mask=am)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    o1, l1 = ctx.call(inp1, tile=case.tile_dict)
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    inp, o0, l0 = sample(ctx, inp, o0, l0, rows=rows)
    inp1, o1, l1 = sample(ctx, inp1, o1, l1, rows=rows)
    ex, _ = ctx.judge(inp, o0, l0, tile=case.tile_dict, label="original order", fa=False)
    ob1, lb1 = ctx.bound(inp1, tile=case.tile_dict)
    oracle.assert_within("O (permuted keys)", to_np(o1), ex.o, ob1 + ex.o_rad, what="invariance under key permutation")
    if l1 is not None:
        oracle.assert_within("LSE (permuted keys)", to_np(l1), ex.lse, lb1 + ex.lse_rad,
                             what="invariance under key permutation", dims="(b, h, i)")


# ============================================================================ duplicate key
@prop("duplicate_key_adds_ln2",
      asserts="duplicating key j (k_j and v_j appended) gives the exact attention of the original problem with "
              "ln 2 added to logit j",
      classes=(14, 19),
      strategy=lambda ctx: case_strategy(ctx, mask=_plain_mask(ctx),
                                         extra=st.integers(0, 10 ** 6).map(lambda s: (("dup_seed", s),))),
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 1, 1, 4, 6, 16, 16), seed=41, extra=(("dup_seed", 0),))],
      bound="running_forward_bound of the duplicated problem against the exact original + ln 2 bias")
def duplicate_key_adds_ln2(ctx, case):
    torch = _torch()
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
    base = np.zeros((b, h, lq, lk))
    am_dup = None
    if inp.attn_mask is not None:
        am = inp.attn_mask.detach()
        full = am.expand(b, h, lq, lk)
        am_dup = full.index_select(-1, it)
        if am.dtype == torch.bool:
            base = np.where(full.cpu().numpy(), 0.0, -np.inf)
        else:
            base = full.cpu().to(torch.float64).numpy().copy()
    bias = base.copy()
    bias[..., j] += math.log(2.0)  # the exact logit + ln 2, as a float64 additive bias (ln 2 to 2^-53)
    inp1 = inp.with_(k=inp.k.index_select(2, it), v=inp.v.index_select(2, it), attn_mask=am_dup)
    o1, l1 = ctx.call(inp1, tile=case.tile_dict)
    rows = judge_rows(ctx, inp1, tile=case.tile_dict)
    inp1, o1, l1 = sample(ctx, inp1, o1, l1, rows=rows)
    ob1, lb1 = ctx.bound(inp1, tile=case.tile_dict)
    # the exact original problem with the bias as an additive float64 mask, on host copies (exact)
    ref = oracle.take_rows(inp.with_(q=inp.q.cpu(), k=inp.k.cpu(), v=inp.v.cpu(), attn_mask=torch.from_numpy(bias)),
                           rows)
    c = oracle.exact(ref, need_o=ob1, need_lse=lb1 if l1 is not None else None)
    # ln 2 as a float64 is off by <= 2^-53 ln 2: a logit perturbation of that size moves O by <= 2^-52 max|v|.
    slack = 2.0 ** -52 * np.abs(to_np(inp.v)).max(initial=0.0)
    oracle.assert_within("O (key duplicated)", to_np(o1), c.o, ob1 + c.o_rad + slack,
                         what=f"the exact attention with ln 2 added to the duplicated key's logit [{c.source}]")
    if l1 is not None:
        oracle.assert_within("LSE (key duplicated)", to_np(l1), c.lse, lb1 + c.lse_rad + 2.0 ** -52,
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
    while a > 0 and qmax * 2.0 ** a > _emax(dt):
        a -= 1
    while bpow > 0 and vmax * 2.0 ** bpow > _emax(dt):
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
    lim = ctx.limits
    from .strategies import lengths

    def mk(hkv, ratio, lq, lk, e):
        while hkv * ratio > lim.max_heads and hkv > 1:
            hkv -= 1
        while hkv * ratio > lim.max_heads:
            ratio -= 1
        return Shape(1, hkv * ratio, hkv, lq, lk, e, e)
    return st.builds(mk, st.sampled_from((1, 2, 3)), st.sampled_from((3, 5, 6, 7, 2, 4, 8)),
                     lengths(max_len=lim.max_len, tile_sizes=tile_sizes(ctx)),
                     lengths(max_len=lim.max_len, tile_sizes=tile_sizes(ctx)),
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


@st.composite
def _ratio_cases(draw, ctx):
    t, lim = ctx.target, ctx.limits
    hd = tuple(sorted(lim.head_dims))
    lk_cap = max(hd) - 2  # one-hot columns need Ev >= Lk (+ a ramp and a noise column)
    cfgs = [c for c in t.tile_configs if _ratio_lengths(int(c.get("block_n", 16)), lk_cap)] or [None]
    tile = draw(st.sampled_from([None if c is None else tuple(sorted(c.items())) for c in cfgs]))
    bn = int(dict(tile or {}).get("block_n", 16))
    lk = draw(st.sampled_from(_ratio_lengths(bn, lk_cap) or (min(lk_cap, 40),)))
    ev = min((e for e in hd if e >= lk + 2), default=max(hd))
    e = ev if not t.value_dim else draw(st.sampled_from(tuple(x for x in hd if x <= 16) or hd[:1]))
    hkv, ratio = draw(st.sampled_from(((1, 1), (2, 1)) + (((1, 2), (2, 2), (1, 3)) if t.gqa else ())))
    b = draw(st.integers(1, max(1, min(2, lim.max_heads // (hkv * ratio)))))
    masks = [MaskSpec()] + [MaskSpec(causal=a) for a in t.alignments]
    if t.attn_mask:
        masks.append(MaskSpec(attn_mask="bool", density=0.8))
    mask = draw(st.sampled_from(masks))
    # top-left rows i < Lk see keys 0..i only; a causal_equal_lengths target takes causal only square
    lq = lk if mask.causal == "top_left" or (mask.causal and t.causal_equal_lengths) else draw(st.integers(1, 6))
    pr = conform(t, Problem(shape=Shape(b, hkv * ratio, hkv, lq, lk, e, ev),
                            dtype=draw(st.sampled_from(_ratio_dtypes(t))),
                            regime=Regime("spread", 0.0, draw(st.sampled_from(RATIO_WIDTHS))), mask=mask,
                            values="onehot", scale=draw(st.sampled_from((None, 1.0, 0.3))),
                            seed=draw(st.integers(0, 2 ** 16))))
    hypothesis.assume(in_domain(t, pr))
    return Case(problem=pr, tile=tile)


def _ratio_corners(ctx):
    t = ctx.target
    dt = _ratio_dtypes(t)
    if not dt:
        return []
    cfgs = [c for c in small_tiles(ctx) if int(c.get("block_n", 16)) <= 16]
    tile = tuple(sorted(cfgs[0].items())) if cfgs else None
    ev = head_dim_at_least(ctx, 24) or 24
    e = 8 if t.value_dim else ev
    causal = "top_left" if "top_left" in t.alignments else False
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
    torch = _torch()
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
    meets |ln(O_a / O_b) - (s_a - s_b)| <= beta_a + beta_b + kappa |s_a - s_b| on one-hot value
    columns with exact logits s (docs/properties.md, "The weight-ratio budget", derives each term)."""
    u = u_acc / (1 - u_acc)  # |ln(1 + d)| for one rounding
    ex = 2 * c_exp * u_acc / (1 - 2 * c_exp * u_acc)  # |ln(1 + d)| for one exp/log of c_exp ulps
    ui = u_in / (1 - u_in)
    with np.errstate(invalid="ignore"):
        sa = np.where(allowed, s, np.nan)
        m = np.nanmax(np.where(allowed.any(-1, keepdims=True), sa, 0.0), axis=-1, keepdims=True)
        lo = np.nanmin(np.where(allowed.any(-1, keepdims=True), sa, 0.0), axis=-1, keepdims=True)
        smax = np.nanmax(np.abs(np.where(allowed.any(-1, keepdims=True), sa, 0.0)), axis=-1, keepdims=True)
    n = np.maximum(allowed.sum(-1, keepdims=True), 1)
    lnn = np.log(n)
    t = n_tiles - 1  # merges a key's accumulator can pass through
    combine = ex * (lnn + 1) + 2 * u * (smax + lnn) + 2 * u * ((m - lo) + lnn) + 2 * u  # one LSE-combine level
    beta = (2 * u * np.abs(s) + 2 * u * (m - s) + (1 + t) * ex + t * u + u + 2 * ui + combine)
    return np.where(allowed, beta, 0.0), 3 * u


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
    # (1 + 2^-20): second-order terms of the first-order budget; 2^-48 (...): float64 logits and logs
    mag = np.abs(r) + np.abs(s)
    tol = (beta[..., :, None] + beta[..., None, :] + kappa * np.abs(d)) * (1 + 2.0 ** -20) \
        + 2.0 ** -48 * (mag[..., :, None] + mag[..., None, :])
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
      classes=(9, 20), strategy=lambda ctx: _ratio_cases(ctx), corners=_ratio_corners,
      needs=lambda t: None if _ratio_dtypes(t) else "the target declares no float32",
      bound="weight-ratio budget (docs/properties.md; ~7 u_fp32 per unit of s_a - s_b plus 5 u per merge); "
            "running_forward_bound; FA criterion")
def fp32_weight_ratios_exact(ctx, case):
    inp = ratio_inputs(case, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    inp, o, lse = sample(ctx, inp, o, lse, tile=case.tile_dict)
    ctx.judge(inp, o, lse, tile=case.tile_dict)
    s, allowed = logits_exact(inp)
    tile = case.tile_dict if ctx.tile_fits(case.tile_dict, inp.q, inp.v) else None
    n_tiles = ctx.n_tiles(tile, inp.k.shape[2]) or max(1, inp.k.shape[2])  # no declared tiling: any tiling
    prec = oracle.precision(inp.dtype_name, accumulator=ctx.target.accumulator, c_exp=ctx.target.c_exp)
    beta, kappa = weight_ratio_budget(s, allowed, u_acc=prec.u_acc, u_in=ctx.u_in(inp), c_exp=prec.c_exp,
                                      n_tiles=n_tiles)
    assert_weight_ratios("O (one-hot value columns: the attention weights)", to_np(o), s, allowed, beta, kappa)


# ============================================================================ head-dim padding
def _padded_dims(ctx, e, ev, pad):
    """The declared (E2, Ev2) that E, Ev + pad pad to, or None when the target declares none."""
    e2 = head_dim_at_least(ctx, e + pad)
    ev2 = head_dim_at_least(ctx, ev + pad) if ctx.target.value_dim else e2
    if e2 is None or ev2 is None or (not ctx.target.value_dim and e2 != ev2):
        return None
    return e2, ev2



@prop("head_dim_zero_padding_invariant",
      asserts="zero-padding q, k (and v) along the head dim with the scale fixed at 1/sqrt(E_real) leaves O "
              "unchanged within the bound, and the padded value columns are 0",
      classes=(18,),
      strategy=lambda ctx: case_strategy(ctx, extra=st.sampled_from((1, 8, 24)).map(lambda p: (("pad", p),))).filter(
          lambda c: _padded_dims(ctx, c.problem.shape.e, c.problem.shape.ev, c.get("pad")) is not None),
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 1, 1, 6, 9, 40, 40), seed=111, extra=(("pad", 24),))],
      bound="running_forward_bound of the padded problem against the exact unpadded O")
def head_dim_zero_padding_invariant(ctx, case):
    torch = _torch()
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


# ============================================================================ determinism
@prop("reruns_bitwise_equal",
      asserts="running the same problem twice (fresh input copies) gives bitwise equal O and LSE",
      classes=(12,),
      strategy=lambda ctx: case_strategy(ctx),
      corners=lambda ctx: [corner(ctx, seed=121)],
      bound="bitwise")
def reruns_bitwise_equal(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    inp2 = inp.with_(q=inp.q.clone(), k=inp.k.clone(), v=inp.v.clone())
    o1, l1 = ctx.call(inp2, tile=case.tile_dict)
    oracle.assert_bitwise("O (second run)", o1, o0)
    if l0 is not None:
        oracle.assert_bitwise("LSE (second run)", l1, l0, dims="(b, h, i)")


def _batch_strategy(ctx):
    lim = ctx.limits
    pr = problem_strategy(ctx, batch=st.integers(2, max(2, lim.max_batch + 1)))
    return case_strategy(ctx, pr)


def _batch_corners(ctx):
    return [corner(ctx, shape=Shape(3, 2, 1 if ctx.target.gqa else 2, 9, 17, 16, 16), seed=131),
            # a grid larger than an H100's 132 SMs: schedules that split the keys of small grids only
            corner(ctx, shape=Shape(136, 1, 1, 16, 64, 16, 16), dtype="float32", seed=132, tile=None)]


@prop("batch_invariant",
      asserts="each batch element's O and LSE are bitwise equal whether it runs alone or with batch-mates "
              "(batches up to 136, past an H100's SM count, so grid-size-dependent schedules show)",
      classes=(12, 13),
      strategy=_batch_strategy,
      corners=_batch_corners,
      bound="bitwise")
def batch_invariant(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    nb = inp.q.shape[0]
    for b in (range(nb) if nb <= 4 else sorted({0, 1, nb // 2, nb - 1})):
        am = inp.attn_mask
        if am is not None and am.dim() == 4:
            am = am[b:b + 1]
        one = inp.with_(q=inp.q[b:b + 1].clone(), k=inp.k[b:b + 1].clone(), v=inp.v[b:b + 1].clone(), attn_mask=am)
        o1, l1 = ctx.call(one, tile=case.tile_dict)
        oracle.assert_bitwise(f"O (batch element {b} run alone)", o1, o[b:b + 1])
        if lse is not None:
            oracle.assert_bitwise(f"LSE (batch element {b} run alone)", l1, lse[b:b + 1], dims="(b, h, i)")


# ============================================================================ LSE merge of parts
def _merge_strategy(ctx):
    def mk(c, cuts):
        return Case(problem=c.problem, tile=c.tile, extra=(("cuts", cuts),))
    base = case_strategy(ctx, mask=_plain_mask(ctx), regimes=("standard", "spread", "rising", "very_negative"))
    return base.flatmap(lambda c: key_partitions(lk=c.problem.shape.lk, max_parts=4).map(lambda p: mk(c, p[0])))


@prop("lse_merge_of_parts_equals_whole",
      asserts="merging (spec.merge, float64) the target's (O, LSE) over a split of the keys into parts -- empty "
              "and all-masked parts included -- equals the exact attention over all keys; an empty part gives "
              "O = 0 and LSE = -inf (or is rejected with an error), never NaN or +inf",
      classes=(13, 14, 1),
      strategy=_merge_strategy,
      corners=lambda ctx: [corner(ctx, shape=Shape(2, 2, 2, 5, 24, 16, 16), seed=141, extra=(("cuts", (0, 7, 7, 24)),))],
      needs=lambda t: None if t.lse else "the target declares no LSE output",
      bound="sum_p w_p B_p + sum_p |dw_p| |o_p - o| with B_p, Lambda_p the parts' running bounds (derived in the code)")
def lse_merge_of_parts_equals_whole(ctx, case):
    inp = build(case.problem, device=ctx.device)
    lk = inp.k.shape[2]
    cuts = [0] + [c for c in case.get("cuts") if 0 <= c <= lk] + [lk]
    b, h, lq, ev = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.v.shape[-1]
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    ex = oracle.exact(oracle.take_rows(inp, rows))
    parts = []
    for a, z in zip(cuts[:-1], cuts[1:]):
        am = None if inp.attn_mask is None else inp.attn_mask[..., a:z]
        pin = inp.with_(k=inp.k[:, :, a:z], v=inp.v[:, :, a:z], attn_mask=am)
        if z == a:
            try:
                o_p, l_p = ctx.target(pin.q, pin.k, pin.v, return_lse=True, tile=case.tile_dict, **_opts_no_qkv(pin))
            except Exception:
                continue  # rejecting an empty key set is allowed; producing garbage is not
            oracle.assert_within("O (empty key part)", to_np(o_p), np.zeros((b, h, lq, ev)), 0.0,
                                 what="O = 0 for a part with no keys")
            oracle.assert_within("LSE (empty key part)", to_np(l_p), np.full((b, h, lq), -np.inf), 0.0,
                                 what="LSE = -inf for a part with no keys", dims="(b, h, i)")
            continue
        o_p, l_p = ctx.call(pin, tile=case.tile_dict)
        pin, o_p, l_p = sample(ctx, pin, o_p, l_p, rows=rows)
        ob, lb = ctx.bound(pin, tile=case.tile_dict)
        c = oracle.exact(pin, need_o=ob, need_lse=lb)
        parts.append((to_np(o_p), to_np(l_p), ob + c.o_rad, lb + c.lse_rad, c.o, c.lse))
    if not parts:
        return
    lq = ex.o.shape[2]  # the judged rows from here on
    ops = spec.NUMPY
    st_ = spec.State(np.full((b, h, lq), -np.inf), np.zeros((b, h, lq)), np.zeros((b, h, lq, ev)))
    for o_p, l_p, *_ in parts:
        with np.errstate(all="ignore"):
            part = spec.State(l_p, np.where(np.isneginf(l_p), 0.0, 1.0), np.where(np.isneginf(l_p)[..., None], 0.0, o_p))
            st_ = spec.merge(st_, part, ops)
    with np.errstate(all="ignore"):
        o_m, l_m = spec.finalize(st_, ops)
    # Derived bound: merged - exact = sum_p w'_p (o_p - o*_p) + sum_p (w'_p - w*_p)(o*_p - o*); the weights
    # w = softmax over parts of the LSEs, perturbed in log space by at most Lambda_p (the parts' LSE bounds).
    L_true = np.stack([p[5] for p in parts])      # (P, b, h, i)
    lam = np.stack([p[3] for p in parts])
    B = np.stack([p[2] for p in parts])           # (P, b, h, i, c)
    O_true = np.stack([p[4] for p in parts])
    with np.errstate(all="ignore"):
        M = np.max(L_true, axis=0)
        M = np.where(np.isfinite(M), M, 0.0)
        lw = L_true - M
        w = np.exp(lw)
        wsum = w.sum(axis=0)
        w = np.where(wsum > 0, w / np.where(wsum > 0, wsum, 1.0), 0.0)
        up, dn = w * np.exp(lam), w * np.exp(-lam)
        zhi, zlo = up.sum(axis=0), dn.sum(axis=0)
        dw = np.maximum(up / np.where(zlo > 0, zlo, 1.0) - w, w - dn / np.where(zhi > 0, zhi, 1.0))
        dw = np.where(np.isfinite(dw), dw, 0.0)
        wb = np.where(np.isfinite(B), B, np.inf).max(axis=0)
        tol = wb + np.sum(dw[..., None] * np.abs(O_true - ex.o[None]), axis=0)
        tol = tol + ex.o_rad + 2.0 ** -40 * (np.abs(ex.o) + np.abs(O_true).max(axis=0))
        ltol = lam.max(axis=0) + ex.lse_rad + 2.0 ** -40 * np.abs(np.where(np.isfinite(ex.lse), ex.lse, 0.0))
    oracle.assert_within("O (merge of parts)", o_m, ex.o, tol, what=f"the merge of parts at cuts {cuts}")
    oracle.assert_within("LSE (merge of parts)", l_m, ex.lse, ltol, what=f"the merge of parts at cuts {cuts}",
                         dims="(b, h, i)")


def _opts_no_qkv(inp):
    o = inp.opts()
    return o


# ============================================================================ long context (GPU)
#: B, H, L, E with B*H*L*E > 2^31 (4 GiB per fp16 tensor): 32-bit offsets overflow (bug class 17).
LONG_SIZE = (8, 16, 131136, 128)


def _long_strategy(ctx):
    if not str(ctx.device).startswith("cuda"):
        skip("needs a CUDA GPU: B*H*L*E > 2^31 elements (32-bit index overflow) do not fit the CPU interpreter")
    if ctx.profile.replace("flashproof-", "") == "ci":
        skip("gpu and deep profiles only (seconds of GPU time per example)")
    dts = [d for d in ("float16", "bfloat16") if d in ctx.target.dtypes] or list(ctx.target.dtypes)
    return st.builds(lambda seed, dt, causal: Case(problem=Problem(dtype=dt, seed=seed),
                                                   extra=(("size", LONG_SIZE), ("causal", causal))),
                     st.integers(0, 10 ** 6), st.sampled_from(dts),
                     st.sampled_from((False,) + (("top_left",) if "top_left" in ctx.target.alignments else ())))


@prop("long_context_sampled_rows",
      asserts="at B*H*L*E > 2^31 elements, with q/k/v as BLHE strided views, sampled rows (first, last and "
              "random) are within the bound of their exact values (32-bit index * stride overflow fails)",
      classes=(17,), strategy=_long_strategy, examples=0.34,
      bound="running_forward_bound of each sampled row over its keys")
def long_context_sampled_rows(ctx, case):
    torch = _torch()
    b, h, n, e = case.get("size")
    causal = case.get("causal")
    dt = torch_dtype(case.problem.dtype)
    g = torch.Generator(device=ctx.device).manual_seed(case.problem.seed)

    def blhe():  # (B, L, H, E) storage seen as (B, H, L, E): the layout of most model code
        return torch.randn(b, n, h, e, generator=g, device=ctx.device, dtype=torch.float32).to(dt).transpose(1, 2)
    from .strategies import Inputs

    inp = Inputs(q=blhe(), k=blhe(), v=blhe(), causal=causal, problem=case.problem)
    o, lse = ctx.call(inp)
    rng = np.random.default_rng(case.problem.seed)
    rows = {(0, 0, 0), (b - 1, h - 1, n - 1)} | {(int(rng.integers(b)), int(rng.integers(h)), int(rng.integers(n)))
                                                  for _ in range(6)}
    for bi, hi, i in sorted(rows):
        hi_k = n if not causal else i + 1  # top-left causal: row i attends keys 0..i
        row = Inputs(q=inp.q[bi:bi + 1, hi:hi + 1, i:i + 1].cpu(), k=inp.k[bi:bi + 1, hi:hi + 1, :hi_k].cpu(),
                     v=inp.v[bi:bi + 1, hi:hi + 1, :hi_k].cpu(), problem=case.problem)
        o_b, l_b = ctx.bound(row)
        ex = oracle.exact(row, need_o=o_b, need_lse=l_b)
        oracle.assert_within(f"O row (b={bi}, h={hi}, i={i}) of B*H*L*E = {b * h * n * e}",
                             to_np(o[bi:bi + 1, hi:hi + 1, i:i + 1]), ex.o, o_b + ex.o_rad, what="the running bound")
        if lse is not None:
            oracle.assert_within(f"LSE row (b={bi}, h={hi}, i={i})", to_np(lse[bi:bi + 1, hi:hi + 1, i:i + 1]), ex.lse,
                                 l_b + ex.lse_rad, what="the running LSE bound", dims="(b, h, i)")

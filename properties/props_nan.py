"""Garbage isolation and NaN propagation, judged by the target's declared NaN policy (spec/README.md,
"NaN and inf policy"; docs/properties.md, "The NaN policies").

- Padding (memory outside the tensors' logical extent) never influences anything, under every
  policy: ``garbage_in_padding_isolated``.
- "strict" (masked keys are dropped): garbage in masked keys changes nothing, and a NaN reaches
  exactly the rows that attend it (``garbage_in_masked_keys_isolated``,
  ``nan_propagates_only_to_attending_rows``).
- "ieee" (a dense P @ V, where a masked P is an exact 0): a NaN/inf at a masked key may turn
  elements of the rows of its own batch element and KV-head group into NaN (0 * NaN, or a NaN
  logit plus an additive -inf), and an empty row's NaN query may reach that row; nothing else may
  change (``garbage_in_masked_keys_ieee``, ``nan_propagates_ieee``).
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from flashproof import spec

from . import oracle
from .cases import Case, MaskSpec, Problem, Shape
from .domain import Domain
from .gen import case_strategy, corner, domain, prop, sample
from .inputs import build
from .oracle import Violation, to_np
from .registry import not_applicable

__all__ = ["IEEE_HINT"]

_GARBAGE = ("nan", "inf", "-inf", "huge")
#: Appended to a strict property's failure when the output is what the "ieee" policy allows.
IEEE_HINT = ("hint: this is what nan_policy='ieee' allows (a masked P = 0 multiplying a NaN/inf, or an empty row's "
             "NaN query); if the kernel computes P @ V densely by design, declare Target(nan_policy='ieee') (plain "
             "SDPA callables and the adapters do by default)")


def _huge(dtype):
    return min(1e30, spec.FORMATS[dtype].max)


def _garbage_value(kind, dtype):
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": _huge(dtype)}[kind]


def _needs_policy(policy, other):
    def needs(t):
        if t.nan_policy == policy:
            return None
        implied = " (which implies this one)" if t.nan_policy == "strict" else ""
        return f"the target declares nan_policy={t.nan_policy!r}: judged by {other} instead{implied}"
    return needs


# ============================================================================ where NaN may go (ieee)
def _group_rows(inp, b, g):
    """(B, H, Lq) bool: the rows of batch element b whose query heads read KV head g."""
    bb, h, lq = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2]
    rep = h // inp.k.shape[1]
    rows = np.zeros((bb, h, lq), dtype=bool)
    rows[b, g * rep:(g + 1) * rep] = True
    return rows


def _assert_bitwise_except_nan(name, got, want, may_nan, *, dims="(b, h, i, c)"):
    """``got`` bitwise equal to ``want`` wherever ``may_nan`` is False; where it is True, either bitwise
    equal or NaN (never inf, never another finite value)."""
    import torch

    got, want = got.detach().cpu(), want.detach().cpu()
    allow = torch.from_numpy(np.broadcast_to(may_nan, tuple(got.shape)).copy())
    oracle.assert_bitwise(name, torch.where(allow & torch.isnan(got), want, got), want, dims=dims)


def _ieee_consistent(o1, o0, l1, l0, may_o, may_l) -> bool:
    try:
        _assert_bitwise_except_nan("O", o1, o0, may_o)
        if l0 is not None:
            _assert_bitwise_except_nan("LSE", l1, l0, may_l, dims="(b, h, i)")
    except Violation:
        return False
    return True


# ============================================================================ garbage in masked keys
def _garbage_window_causal(t):
    return t.alignments[0] if t.alignments else False


def _attn_mask_causal(dom):
    return False if dom.allows(False) else dom.causal[0]


def _garbage_shape(dom, m, lq, lk, causal):
    """(Lq, Lk) of mechanism m inside the domain: keys beyond the queries (causal tail, window)."""
    if m == "causal_tail":
        return dom.apart(lq, max(lk, lq + 1), causal, longer="k")
    if m == "window":
        lq = max(1, min(lq, 4))
        return dom.apart(lq, max(lk, lq + 8), causal, longer="k")
    return dom.fit_pair(lq, max(lk, 3), causal)


def _dead_keys_possible(dom, m, causal) -> bool:
    """Whether mechanism m leaves unattended keys at its most cramped lengths in the domain (queries at
    their longest, 4, against the fewest keys the domain then allows)."""
    if m != "attn_mask_columns" and not dom.unequal(causal, longer="k"):
        return False
    if m != "window":
        return True
    lq, lk = _garbage_shape(dom, m, 4, 0, causal)
    mask = spec.make_mask(causal=causal, window=(2, 1))
    lo, hi = mask.key_range(np.arange(lq), lq, lk)
    return bool(lo.min() > 0 or hi.max() < lk)


def _garbage_mechanisms(t, *, declared=False):
    """How the target leaves keys that no row attends: top-left causal with Lk > Lq, a window (2, 1)
    with Lk > Lq + 1, boolean attn_mask columns. ``declared``: every way its capabilities offer; else
    those its declared domain admits."""
    dom = Domain.of(t)
    out = []
    if "top_left" in t.alignments and (declared or _dead_keys_possible(dom, "causal_tail", "top_left")):
        out.append("causal_tail")
    if t.window and (declared or _dead_keys_possible(dom, "window", _garbage_window_causal(t))):
        out.append("window")
    if t.attn_mask:
        out.append("attn_mask_columns")
    return out


def _needs_mechanism(t):
    return None if _garbage_mechanisms(t, declared=True) else "the target declares no mask that leaves keys unattended"


def _garbage_mechanisms_of(ctx):
    mech = _garbage_mechanisms(ctx.target)
    if not mech:
        dom = domain(ctx)
        why = "equal_lengths" if dom.equal else "causal_equal_lengths" if dom.causal_equal else "its length ranges"
        not_applicable(f"the target's domain leaves no key unattended: causal and windows do only with Lk > Lq, "
                       f"which it excludes ({why}), and it declares no attn_mask")
    return mech


def _garbage_case(ctx, c, m, g, where, extra=()):
    t, dom = ctx.target, domain(ctx)
    p = c.problem
    sh = p.shape
    if m == "causal_tail":
        mk = MaskSpec(causal="top_left")
    elif m == "window":
        mk = MaskSpec(causal=_garbage_window_causal(t), window=(2, 1))
    else:
        mk = MaskSpec(causal=_attn_mask_causal(dom), attn_mask="bool", density=0.8, full=p.mask.full)
    lq, lk = _garbage_shape(dom, m, sh.lq, sh.lk, mk.causal)
    sh = Shape(**{**sh.__dict__, "lq": lq, "lk": lk})
    pr = Problem(**{**p.__dict__, "shape": sh, "mask": mk, "softcap": p.softcap})
    return Case(problem=pr, tile=c.tile, extra=(("via", m), ("garbage", g), ("where", where)) + extra)


def _garbage_strategy(ctx, *, ieee=False):
    mech = _garbage_mechanisms_of(ctx)
    draws = [case_strategy(ctx), st.sampled_from(mech), st.sampled_from(_GARBAGE), st.sampled_from(("kv", "k", "v"))]
    if not ieee:
        return st.tuples(*draws).map(lambda x: _garbage_case(ctx, *x))
    return st.tuples(*draws, st.integers(0, 10 ** 6)).map(
        lambda x: _garbage_case(ctx, *x[:4], extra=(("slice_seed", x[4]),)))


def _garbage_corners(ctx, *, ieee=False):
    t, dom = ctx.target, domain(ctx)
    out = []

    def one(m, sh, seed, where, extra):
        mk = {"causal_tail": MaskSpec(causal="top_left"),
              "window": MaskSpec(causal=_garbage_window_causal(t), window=(2, 1)),
              "attn_mask_columns": MaskSpec(causal=_attn_mask_causal(dom), attn_mask="bool", density=0.8)}[m]
        lq, lk = (dom.apart(sh.lq, sh.lk, mk.causal, longer="k") if m != "attn_mask_columns" else (sh.lq, sh.lk))
        return corner(ctx, shape=Shape(**{**sh.__dict__, "lq": lq, "lk": lk}), mask=mk, seed=seed,
                      extra=(("via", m), ("garbage", "nan"), ("where", where)) + extra)
    for n, m in enumerate(_garbage_mechanisms(t)):
        out.append(one(m, Shape(1, 2, 1 if t.gqa else 2, 5, 37, 16, 16), 600 + n, "kv",
                       (("slice_seed", n),) if ieee else ()))
    if ieee:  # two batch elements (and KV heads): a leak between them shows; finite garbage changes nothing
        m = _garbage_mechanisms(t)[0]
        out.append(one(m, Shape(2, 4, 2 if t.gqa else 4, 5, 37, 16, 16), 610, "v", (("slice_seed", 1),)))
        c = one(m, Shape(2, 2, 2, 5, 37, 16, 16), 611, "kv", (("slice_seed", 2),))
        out.append(Case(problem=c.problem, tile=c.tile, extra=tuple((k, "huge" if k == "garbage" else v)
                                                                     for k, v in c.extra)))
    return out


def _unattended_keys(inp):
    """(B, Hkv, Lk) bool: keys that no query row of any head reading them may attend."""
    allowed = oracle.allowed_mask(inp)
    b, h, lq, lk = allowed.shape
    hkv = inp.k.shape[1]
    any_ = allowed.reshape(b, hkv, h // hkv, lq, lk).any(axis=(2, 3))
    return ~any_


def _garbage_run(ctx, case, *, one_slice):
    """Build the case, put its garbage at the unattended keys (of one (batch, KV head) slice when
    ``one_slice``), run clean and dirty: (o0, l0, o1, l1, the slice (b, g) or None, description)."""
    import torch

    inp = build(case.problem, device=ctx.device)
    if case.get("via") == "attn_mask_columns":
        am = inp.attn_mask.clone()
        lk = am.shape[-1]
        kill = np.random.default_rng(case.problem.seed).choice(lk, size=max(1, lk // 3), replace=False)
        am[..., torch.from_numpy(kill).to(am.device)] = False
        inp = inp.with_(attn_mask=am)
    dead = _unattended_keys(inp)
    if not dead.any():
        raise AssertionError(f"flashproof: the {case.get('via')} construction left every key attended")
    where = None
    if one_slice:
        slices = np.argwhere(dead.any(axis=-1))
        b, g = (int(x) for x in slices[case.get("slice_seed") % len(slices)])
        only = np.zeros_like(dead)
        only[b, g] = dead[b, g]
        dead, where = only, (b, g)
    g_val = _garbage_value(case.get("garbage"), case.problem.dtype)
    deadt = torch.from_numpy(dead).to(inp.k.device)[..., None]
    k, v = inp.k, inp.v
    if "k" in case.get("where"):
        k = torch.where(deadt, torch.full_like(k, g_val), k)
    if "v" in case.get("where"):
        v = torch.where(deadt, torch.full_like(v, g_val), v)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    o1, l1 = ctx.call(inp.with_(k=k, v=v), tile=case.tile_dict)
    at = f" of batch element {where[0]}, KV head {where[1]}" if where else ""
    what = (f" ({case.get('garbage')} in {case.get('where')} at {int(dead.sum())} unattended key(s){at}, "
            f"via {case.get('via')})")
    return inp, o0, l0, o1, l1, where, what


def _garbage_may_nan(inp, case, where):
    """(may O be NaN, may LSE be NaN) under "ieee": non-finite garbage may reach the rows of its own
    slice (a value's only through P @ V, so never the LSE); finite garbage may reach nothing."""
    if case.get("garbage") == "huge":
        none = np.zeros(tuple(inp.q.shape[:3]), dtype=bool)
        return none[..., None], none
    rows = _group_rows(inp, *where) if where else np.ones(tuple(inp.q.shape[:3]), dtype=bool)
    return rows[..., None], (rows if "k" in case.get("where") else np.zeros_like(rows))


@prop("garbage_in_masked_keys_isolated",
      asserts="(nan_policy 'strict') NaN, +-inf or huge values in keys and values that no row attends leave O and "
              "LSE bitwise equal to the clean run",
      classes=(4, 1), strategy=_garbage_strategy, corners=_garbage_corners,
      needs=lambda t: _needs_policy("strict", "garbage_in_masked_keys_ieee")(t) or _needs_mechanism(t),
      bound="bitwise")
def garbage_in_masked_keys_isolated(ctx, case):
    inp, o0, l0, o1, l1, _, what = _garbage_run(ctx, case, one_slice=False)
    try:
        oracle.assert_bitwise("O" + what, o1, o0)
        if l0 is not None:
            oracle.assert_bitwise("LSE" + what, l1, l0, dims="(b, h, i)")
    except Violation as exc:
        may_o, may_l = _garbage_may_nan(inp, case, None)
        if _ieee_consistent(o1, o0, l1, l0, may_o, may_l):
            raise Violation(f"{exc}\n  {IEEE_HINT}") from None
        raise


@prop("garbage_in_masked_keys_ieee",
      asserts="(nan_policy 'ieee') NaN, +-inf or huge values at the unattended keys of one (batch element, KV head): "
              "every other batch element and head stays bitwise clean; in its own rows each element is bitwise "
              "clean or NaN (never inf, never another value), the LSE too when only V holds the garbage; finite "
              "garbage (0 x 1e30 = 0) changes nothing",
      classes=(4, 1), strategy=lambda ctx: _garbage_strategy(ctx, ieee=True),
      corners=lambda ctx: _garbage_corners(ctx, ieee=True),
      needs=lambda t: _needs_policy("ieee", "garbage_in_masked_keys_isolated")(t) or _needs_mechanism(t),
      bound="bitwise, NaN allowed in the garbage's own (batch, KV head) rows")
def garbage_in_masked_keys_ieee(ctx, case):
    inp, o0, l0, o1, l1, where, what = _garbage_run(ctx, case, one_slice=True)
    may_o, may_l = _garbage_may_nan(inp, case, where)
    rule = (" [finite garbage: 0 x it is 0, nothing may change]" if case.get("garbage") == "huge" else
            " [NaN allowed only in that slice's rows]")
    _assert_bitwise_except_nan("O" + what + rule, o1, o0, may_o)
    if l0 is not None:
        _assert_bitwise_except_nan("LSE" + what, l1, l0, may_l, dims="(b, h, i)")


# ============================================================================ padding (every policy)
def _padded(x, fill, *, pl=0, pe=0, ph=0, transposed=False):
    """x as a strided view into a larger buffer whose extra rows/cols/heads hold ``fill``."""
    import torch

    b, h, l, e = x.shape
    if transposed:
        buf = torch.full((b, l + pl, h + ph, e + pe), fill, dtype=x.dtype, device=x.device)
        buf[:, :l, :h, :e] = x.transpose(1, 2)
        return buf[:, :l, :h, :e].transpose(1, 2)
    buf = torch.full((b, h + ph, l + pl, e + pe), fill, dtype=x.dtype, device=x.device)
    buf[:, :h, :l, :e] = x
    return buf[:, :h, :l, :e]


@prop("garbage_in_padding_isolated",
      asserts="(every NaN policy) with q, k, v strided views into buffers padded (sequence, head dim, heads; BHLE or "
              "BLHE layout) with NaN, +-inf or huge values, O and LSE are bitwise equal to the same views padded "
              "with zeros, and within the bound",
      classes=(4, 5, 18, 17),
      strategy=lambda ctx: case_strategy(ctx, extra=st.tuples(st.sampled_from(_GARBAGE), st.booleans(),
                                                              st.sampled_from((1, 5, 16))).map(
          lambda x: (("garbage", x[0]), ("transposed", x[1]), ("pad", x[2])))),
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 2, 1 if ctx.target.gqa else 2, 7, 21, 40, 40), seed=700,
                                  extra=(("garbage", "nan"), ("transposed", False), ("pad", 5))),
                           corner(ctx, shape=Shape(2, 2, 2, 9, 17, 24, 24), seed=701,
                                  extra=(("garbage", "huge"), ("transposed", True), ("pad", 16)))],
      bound="bitwise, and running_forward_bound")
def garbage_in_padding_isolated(ctx, case):
    inp = build(case.problem, device=ctx.device)
    g = _garbage_value(case.get("garbage"), case.problem.dtype)
    p, tr = case.get("pad"), case.get("transposed")

    def views(fill):
        return inp.with_(q=_padded(inp.q, fill, pl=p, pe=p, ph=1, transposed=tr),
                         k=_padded(inp.k, fill, pl=p, pe=p, ph=1, transposed=tr),
                         v=_padded(inp.v, fill, pl=p, pe=p, ph=1, transposed=tr))
    clean, dirty = views(0.0), views(g)
    o0, l0 = ctx.call(clean, tile=case.tile_dict)
    o1, l1 = ctx.call(dirty, tile=case.tile_dict)
    what = f" ({case.get('garbage')} in the padding, pad {p}, {'BLHE' if tr else 'BHLE'} layout)"
    oracle.assert_bitwise("O" + what, o1, o0)
    if l0 is not None:
        oracle.assert_bitwise("LSE" + what, l1, l0, dims="(b, h, i)")
    ctx.judge(*sample(ctx, inp, o0, l0, tile=case.tile_dict), tile=case.tile_dict, label="strided views", fa=False)


# ============================================================================ NaN propagation
def _nan_run(ctx, case):
    """Put a NaN in one element of q (row i), k or v (key j of one batch element and KV head) as the
    case says, and run clean and dirty. Returns the inputs, both runs, the rows that attend the NaN
    (hit: every element and the LSE must be NaN), the elements a NaN in v must reach (its column in
    the rows that attend it), and where a dense P @ V may put NaN besides ("ieee": O elements, LSE
    rows): the row of a NaN q (an empty row's too); the rows of the batch element and KV-head group
    of a NaN k (a NaN logit plus an additive -inf); of a NaN v, their column only."""
    inp = build(case.problem, device=ctx.device)
    b, h, lq, lk = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.k.shape[2]
    hkv, ev = inp.k.shape[1], inp.v.shape[-1]
    rng = np.random.default_rng(case.get("nan_seed"))
    where = case.get("where")
    allowed = oracle.allowed_mask(inp)
    hit = np.zeros((b, h, lq), dtype=bool)
    cols = np.zeros((b, h, lq, ev), dtype=bool)
    may_o = np.zeros((b, h, lq, ev), dtype=bool)
    may_l = np.zeros((b, h, lq), dtype=bool)
    q, k, v = inp.q.clone(), inp.k.clone(), inp.v.clone()
    if "q" in where:
        bi, hi, ii, ei = (int(rng.integers(0, n)) for n in (b, h, lq, inp.q.shape[-1]))
        q[bi, hi, ii, ei] = math.nan
        hit[bi, hi, ii] |= allowed[bi, hi, ii].any()
        may_o[bi, hi, ii] = may_l[bi, hi, ii] = True
    rep = h // hkv
    if "k" in where or "v" in where:
        bi, gi, ji = (int(rng.integers(0, n)) for n in (b, hkv, lk))
        group = _group_rows(inp, bi, gi)
        if "k" in where:
            k[bi, gi, ji, int(rng.integers(0, inp.k.shape[-1]))] = math.nan
            for hh in range(gi * rep, (gi + 1) * rep):
                hit[bi, hh] |= allowed[bi, hh, :, ji]
            may_o |= group[..., None]
            may_l |= group
        if "v" in where:
            c = int(rng.integers(0, ev))
            v[bi, gi, ji, c] = math.nan
            for hh in range(gi * rep, (gi + 1) * rep):
                cols[bi, hh, :, c] |= allowed[bi, hh, :, ji]
            may_o[..., c] |= group
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    o1, l1 = ctx.call(inp.with_(q=q, k=k, v=v), tile=case.tile_dict)
    return inp, o0, l0, o1, l1, hit, cols, (may_o | hit[..., None], may_l | hit)


def _assert_nan_reaches(o1, l1, hit, cols, where):
    on = to_np(o1)
    nan_rows = np.isnan(on).all(axis=-1)
    missing = hit & ~nan_rows
    if missing.any():
        idx = np.argwhere(missing)[:5]
        raise Violation(f"O: rows that attend a NaN ({where}) must be NaN, but {int(missing.sum())} are not, e.g. "
                        + ", ".join(f"{oracle.fmt_idx(i)} = {on[tuple(i)][:4]}" for i in idx))
    lost = cols & ~np.isnan(on)
    if lost.any():
        idx = np.argwhere(lost)[:5]
        raise Violation(f"O: elements whose row attends a NaN in v (its column) must be NaN, but {int(lost.sum())} are "
                        f"not, e.g. " + ", ".join(f"{oracle.fmt_idx(i)} = {on[tuple(i)]!r}" for i in idx))
    if l1 is not None:
        ln = to_np(l1)
        badl = hit & ~np.isnan(ln)
        if badl.any():
            idx = np.argwhere(badl)[:5]
            raise Violation("LSE: rows that attend a NaN must be NaN, got " +
                            ", ".join(f"{oracle.fmt_idx(i)} = {ln[tuple(i)]!r}" for i in idx))


def _nan_cases(wheres):
    """The strategy of _nan_run's cases: a NaN placed in one of ``wheres`` by a drawn seed."""
    return lambda ctx: case_strategy(ctx, extra=st.tuples(st.sampled_from(wheres), st.integers(0, 10 ** 6)).map(
        lambda x: (("where", x[0]), ("nan_seed", x[1]))))


def _nan_corners(ctx):
    return [corner(ctx, mask=MaskSpec(causal=ctx.target.alignments[0]) if ctx.target.alignments else MaskSpec(),
                   seed=1200, extra=(("where", "k"), ("nan_seed", 3)))]


@prop("nan_propagates_only_to_attending_rows",
      asserts="(nan_policy 'strict') a NaN in an allowed q_i or k_j makes exactly the rows that attend it NaN (O and "
              "LSE); every other row, empty rows included, is bitwise equal to the clean run",
      classes=(20, 4, 1),
      strategy=_nan_cases(("q", "k", "qk")),
      corners=_nan_corners, needs=_needs_policy("strict", "nan_propagates_ieee"),
      bound="bitwise / NaN pattern")
def nan_propagates_only_to_attending_rows(ctx, case):
    import torch

    inp, o0, l0, o1, l1, hit, cols, (may_o, may_l) = _nan_run(ctx, case)
    if inp.q.shape[2] == 0 or inp.k.shape[2] == 0:
        return
    where = case.get("where")
    _assert_nan_reaches(o1, l1, hit, cols, where)
    keep = torch.from_numpy(~hit)
    try:
        oracle.assert_bitwise(f"O (rows not attending the NaN in {where})", o1.cpu()[keep], o0.cpu()[keep],
                              dims="(row)")
        if l0 is not None:
            oracle.assert_bitwise(f"LSE (rows not attending the NaN in {where})", l1.cpu()[keep], l0.cpu()[keep],
                                  dims="(row)")
    except Violation as exc:
        if _ieee_consistent(o1, o0, l1, l0, may_o, may_l):
            raise Violation(f"{exc}\n  {IEEE_HINT}") from None
        raise


@prop("nan_propagates_ieee",
      asserts="(nan_policy 'ieee') a NaN in an allowed q_i, k_j or v_jc reaches the rows that attend it (every "
              "element for q and k, column c for v; the LSE for q and k); beyond them it may turn NaN only elements "
              "of the rows of its own batch element and KV-head group (a NaN q: its own row; a NaN v: its column), "
              "never to inf or another value; every other row is bitwise clean",
      classes=(20, 4, 1, 12),
      strategy=_nan_cases(("q", "k", "v", "qk")),
      corners=lambda ctx: _nan_corners(ctx) + [
          corner(ctx, shape=Shape(2, 4, 2 if ctx.target.gqa else 4, 9, 13, 16, 16), seed=1201,
                 extra=(("where", "v"), ("nan_seed", 5)))],
      needs=_needs_policy("ieee", "nan_propagates_only_to_attending_rows"),
      bound="bitwise / NaN pattern, NaN allowed in the NaN's own (batch, KV head) rows")
def nan_propagates_ieee(ctx, case):
    inp, o0, l0, o1, l1, hit, cols, (may_o, may_l) = _nan_run(ctx, case)
    if inp.q.shape[2] == 0 or inp.k.shape[2] == 0:
        return
    where = case.get("where")
    _assert_nan_reaches(o1, l1, hit, cols, where)
    _assert_bitwise_except_nan(f"O (a NaN in {where}) [NaN allowed only in its own batch element and KV heads' rows]",
                               o1, o0, may_o)
    if l0 is not None:
        _assert_bitwise_except_nan(f"LSE (a NaN in {where})", l1, l0, may_l, dims="(b, h, i)")

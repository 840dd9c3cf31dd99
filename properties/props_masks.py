"""Mask, softcap, LSE-convention and sentinel properties (garbage isolation and NaN propagation,
judged by the target's NaN policy, are in props_nan.py)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from flashproof import spec

from . import oracle
from .cases import Case, MaskSpec, Problem, Regime, Shape
from .domain import OutsideDomain, conform
from .gen import (EMPTY_ROW_WAYS, admit, case_strategy, corner, domain, empty_row_cases, empty_row_mechanisms,
                  empty_row_values_undeclared, empty_window_causal, first_dtype, head_dim_at_least, judge_rows, prop, run_tiles, sample, small_tiles,
                  tile_sizes)
from .inputs import Inputs, build, logits_exact, max_abs_logit
from .oracle import Violation, to_np
from .registry import not_applicable, skip
from .strategies import SENTINELS, lengths, masks

__all__ = []

# ============================================================================ fully masked rows
def _empty_corners(ctx):
    out = []
    dom = domain(ctx)
    for i, m in enumerate(empty_row_mechanisms(ctx.target)[:3]):
        sh = Shape(1, 2, 1 if ctx.target.gqa else 2, 6, 5, 16, 16) if m in ("bottom_right", "window") else \
            Shape(1, 2, 1 if ctx.target.gqa else 2, 6, 21, 16, 16)
        mk = {"attn_mask_bool": MaskSpec(attn_mask="bool", density=0.7, empty_rows=2),
              "attn_mask_additive": MaskSpec(attn_mask="additive", density=0.7, empty_rows=2),
              "bottom_right": MaskSpec(causal="bottom_right"),
              "window": MaskSpec(causal=empty_window_causal(dom), window=(0, 0))}[m]
        if m in ("bottom_right", "window"):  # Lq > Lk makes the empty rows: kept inside the domain
            lq, lk = dom.apart(sh.lq, sh.lk, mk.causal, longer="q")
            sh = Shape(**{**sh.__dict__, "lq": lq, "lk": lk})
        out.append(corner(ctx, shape=sh, mask=mk, regime=Regime("very_negative", -1e4, 1.0), seed=200 + i,
                          extra=(("via", m),)))
    return out


@prop("fully_masked_rows_zero_and_neg_inf",
      asserts="rows with no allowed key give O = 0 and LSE = -inf (never NaN or +inf), and every other row "
              "stays within the bound of its exact value",
      classes=(1, 13, 14), strategy=empty_row_cases, corners=_empty_corners,
      needs=lambda t: empty_row_values_undeclared(t) or (None if empty_row_mechanisms(t, declared=True) else
      f"the target declares no way to express a fully masked row ({EMPTY_ROW_WAYS})"),
      bound="exact 0 / -inf on empty rows; running_forward_bound elsewhere")
def fully_masked_rows_zero_and_neg_inf(ctx, case):
    inp = build(case.problem, device=ctx.device)
    empty = ~oracle.allowed_mask(inp).any(axis=-1)
    if not empty.any():
        raise AssertionError(f"flashproof: the {case.get('via')} construction left no empty row")
    o, lse = ctx.call(inp, tile=case.tile_dict)
    on = to_np(o)
    bad = empty[..., None] & ~(on == 0)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        raise Violation(f"O on fully masked rows (via {case.get('via')}) must be exactly 0: {int(bad.sum())} element(s) "
                        f"differ, e.g. " + ", ".join(f"{oracle.fmt_idx(i)} = {on[tuple(i)]!r}" for i in idx))
    if lse is not None:
        ln = to_np(lse)
        badl = empty & ~np.isneginf(ln)
        if badl.any():
            idx = np.argwhere(badl)[:5]
            raise Violation(f"LSE on fully masked rows (via {case.get('via')}) must be -inf (never NaN or +inf): "
                            f"{int(badl.sum())} row(s), e.g. " +
                            ", ".join(f"{oracle.fmt_idx(i)} = {ln[tuple(i)]!r}" for i in idx))
    ctx.judge(*sample(ctx, inp, o, lse, tile=case.tile_dict), tile=case.tile_dict,
              label=f"other rows, empty rows via {case.get('via')}")


# ============================================================================ causal alignment
def _unequal_alignments(ctx):
    """The declared alignments whose domain has causal calls with Lq != Lk (N/A without one)."""
    dom = domain(ctx)
    al = tuple(a for a in ctx.target.alignments if dom.unequal(a))
    if not al:
        why = "equal_lengths" if dom.equal else "causal_equal_lengths" if dom.causal_equal else "its length ranges"
        not_applicable(f"the target runs causal attention only with Lq == Lk (declared {why}), where both "
                       f"alignments coincide")
    return al


def _apart(dom, lq, lk, a):
    """(Lq, Lk) in the domain, unequal for alignment a: in the drawn order where the domain has it."""
    longer = "k" if lq < lk else "q"
    if not dom.unequal(a, longer=longer):
        longer = "q" if longer == "k" else "k"
    return dom.apart(lq, lk, a, longer=longer)


def _align_strategy(ctx):
    al = _unequal_alignments(ctx)
    dom = domain(ctx)

    def adapt(c, a, longer_keys):
        p = c.problem
        sh = p.shape
        lq, lk = sh.lq, sh.lk
        if lq == lk:
            lk = lk + 1 + lq % 5
        if (lq < lk) != longer_keys:
            lq, lk = lk, lq
        lq, lk = _apart(dom, lq, lk, a)
        sh = Shape(**{**sh.__dict__, "lq": lq, "lk": lk})
        return Case(problem=Problem(**{**p.__dict__, "shape": sh, "mask": MaskSpec(causal=a)}), tile=c.tile)
    return st.tuples(case_strategy(ctx), st.sampled_from(al), st.booleans()).map(lambda x: adapt(*x))


def _align_corners(ctx):
    dom = domain(ctx)
    out = []
    for n, (a, lq, lk) in enumerate((a, lq, lk) for a in _unequal_alignments(ctx) for lq, lk in ((3, 11), (11, 4))):
        lq, lk = _apart(dom, lq, lk, a)
        out.append(corner(ctx, shape=Shape(1, 1, 1, lq, lk, 16, 16), mask=MaskSpec(causal=a), seed=300 + n))
    return out


@prop("causal_alignment_on_unequal_lengths",
      asserts="causal attention with Lq != Lk (both orders) follows the declared alignment (top_left: j <= i; "
              "bottom_right: j <= i + Lk - Lq) within the bound",
      classes=(6,), strategy=_align_strategy, corners=_align_corners,
      needs=lambda t: "the target declares no causal masking" if not t.alignments else None,
      bound="running_forward_bound")
def causal_alignment_on_unequal_lengths(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    try:
        ctx.judge(*sample(ctx, inp, o, lse, rows=rows), tile=case.tile_dict, label=f"causal={inp.causal}")
    except Violation as exc:
        other = "top_left" if inp.causal == "bottom_right" else "bottom_right"
        decl, on = sample(ctx, inp, o, rows=rows)
        alt = oracle.exact(sample(ctx, inp.with_(causal=other), rows=rows)[0])
        e_decl = np.nanmax(np.abs(to_np(on) - oracle.exact(decl).o), initial=0.0)
        e_other = np.nanmax(np.abs(to_np(on) - alt.o), initial=0.0)
        hint = (f"\n  the output is closer to {other} causal (max err {e_other:.3g}) than to the declared "
                f"{inp.causal} (max err {e_decl:.3g})") if e_other < e_decl else ""
        raise Violation(str(exc) + hint) from None


# ============================================================================ attended set
def _set_strategy(ctx):
    t = ctx.target
    dom = domain(ctx)
    lim = min(ctx.limits.max_len, 40)
    if t.head_dims is not None:  # one-hot values need Ev >= Lk: no longer keys than the widest head dim
        lim = min(lim, max(t.head_dims))
        shortest = dom.bounds("k", lim, causal=dom.causal[-1] if dom.causal_only else False)[0]
        if head_dim_at_least(ctx, shortest) is None:
            not_applicable(f"one-hot values (v_j = e_j) need Ev >= Lk, and the shortest declared Lk ({shortest}) is "
                           f"above every declared head dim (largest {max(t.head_dims)})")

    def mk(lq, lk, mask, seed, dt, tile, batch):
        ev = head_dim_at_least(ctx, lk)
        if ev is None:
            return None
        e = 16 if t.value_dim else ev
        e = head_dim_at_least(ctx, e) or ev
        sh = Shape(batch, 1, 1, lq, lk, e, ev)
        pr = conform(t, Problem(shape=sh, dtype=dt, mask=mask, values="onehot", seed=seed))
        if pr.shape.lk > ev:  # made square: the one-hot columns must still cover every key
            ev = head_dim_at_least(ctx, pr.shape.lk)
            if ev is None:
                return None
            e = 16 if t.value_dim else ev
            e = head_dim_at_least(ctx, e) or ev
            pr = Problem(**{**pr.__dict__, "shape": Shape(**{**pr.shape.__dict__, "e": e, "ev": ev})})
        return Case(problem=pr, tile=tile) if admit(ctx, pr) else None
    ts = tile_sizes(ctx)
    lqs = st.integers(1, lim) if dom.default else dom.lengths("q", cap=lim)
    lks = lengths(max_len=lim, tile_sizes=ts) if dom.default else dom.lengths("k", cap=lim, tile_sizes=ts)
    m = lqs.flatmap(lambda lq: masks(alignments=t.alignments, window=t.window, attn_mask=False, lq=lq,
                                     causal_only=dom.causal_only).map(lambda mm: (lq, mm)))
    return st.builds(lambda lm, lk, seed, dt, tile, b: mk(lm[0], lk, lm[1], seed, dt, tile, b),
                     m, lks, st.integers(0, 1000), st.sampled_from(t.dtypes),
                     st.sampled_from([tuple(sorted(c.items())) for c in run_tiles(ctx)] or [None]),
                     st.integers(1, 2)).filter(lambda c: c is not None and c.problem.mask.attn_mask != "additive")


def _set_corners(ctx):
    t = ctx.target
    out = []
    cs = []
    if t.window:
        cs += [MaskSpec(causal=a, window=w) for a in t.alignments for w in ((2, 0), (0, 0))]
        cs += [MaskSpec(window=(1, 2)), MaskSpec(window=(3, -1))]
    cs += [MaskSpec(causal=a) for a in t.alignments]
    if t.attn_mask:
        cs.append(MaskSpec(attn_mask="bool", density=0.5, empty_rows=1))
    dom = domain(ctx)
    cs = [m for m in cs if dom.allows(m.causal)]
    for n, m in enumerate(cs[:6]):
        lk = dom.fit_pair(7, 19, m.causal)[1]
        ev = head_dim_at_least(ctx, lk)
        if ev is None:
            continue
        e = head_dim_at_least(ctx, 16) if t.value_dim else ev
        out.append(Case(problem=conform(t, Problem(shape=Shape(1, 1, 1, 7, 19, e, ev), dtype=first_dtype(ctx), mask=m,
                                                   values="onehot", seed=400 + n)),
                        tile=tuple(sorted(small_tiles(ctx, 1)[0].items())) if t.tile_configs else None))
    return out


@prop("attended_set_exact",
      asserts="with q = 0 and v_j = e_j the output reads each row's weights: exactly 1/|A_i| on the allowed set "
              "A_i of the declared causal alignment, window and boolean mask, 0 elsewhere (within the bound)",
      classes=(6, 7), strategy=_set_strategy, corners=_set_corners,
      needs=lambda t: None if (t.alignments or t.window or t.attn_mask) else "the target declares no mask",
      bound="running_forward_bound (the exact weights are 1/|A_i|)")
def attended_set_exact(ctx, case):
    inp = build(case.problem, device=ctx.device)
    inp = inp.with_(q=inp.q * 0)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    try:
        ctx.judge(inp, o, lse, tile=case.tile_dict, label=case.problem.mask.describe(), fa=False)
    except Violation as exc:
        _, allowed = logits_exact(inp)
        on = to_np(o)
        lk = inp.k.shape[2]
        lines = [str(exc), "  attended sets read from the output (key j counted where O[..., j] > 0.5/|A_i|):"]
        shown = 0
        for idx in np.ndindex(allowed.shape[:-1]):
            a = allowed[idx]
            n = max(int(a.sum()), 1)
            read = on[idx][:lk] > 0.5 / n
            if (read != a).any() and shown < 4:
                extra = np.nonzero(read & ~a)[0].tolist()
                missing = np.nonzero(a & ~read)[0].tolist()
                lines.append(f"    row {oracle.fmt_idx(idx)}: expected keys {_ranges(np.nonzero(a)[0])}; "
                             f"extra {extra[:8]}, missing {missing[:8]}")
                shown += 1
        raise Violation("\n".join(lines)) from None


def _ranges(idx):
    idx = list(map(int, idx))
    if not idx:
        return "{}"
    if idx == list(range(idx[0], idx[-1] + 1)):
        return f"{idx[0]}..{idx[-1]}"
    return str(idx[:12])


# ============================================================================ windows
def _wide_strategy(ctx):
    t = ctx.target

    def adapt(c, a, kind):
        p = conform(t, Problem(**{**c.problem.__dict__, "mask": MaskSpec(causal=a)}))
        big = max(p.shape.lq, p.shape.lk) + 1 + p.seed % 7
        # without causal the right side bounds the window too: (big, 0) would be causal-like, not wider
        win = {"left": (big, 0) if a else (big, big), "both": (big, big), "unbounded": (-1, -1)}[kind]
        return Case(problem=p, tile=c.tile, extra=(("window", win),))
    return st.tuples(case_strategy(ctx), st.sampled_from(t.alignments or (False,)),
                     st.sampled_from(("left", "both", "unbounded"))).map(lambda x: adapt(*x))


def _wide_corners(ctx):
    out = []
    for n, a in enumerate(ctx.target.alignments or (False,)):
        c = corner(ctx, mask=MaskSpec(causal=a), seed=500 + n)
        w = max(40, c.problem.shape.lq, c.problem.shape.lk)  # at least as wide as the (declared) lengths
        out.append(Case(problem=c.problem, tile=c.tile, extra=(("window", (w, 0) if a else (w, w)),)))
    return out


@prop("window_wider_than_sequence_is_causal",
      asserts="a window at least as wide as the sequence (or (-1, -1)) gives the causal (or unmasked) result: "
              "within the bound of the exact values and of the target's own run without a window",
      classes=(7,), strategy=_wide_strategy, corners=_wide_corners,
      needs=lambda t: None if t.window else "the target declares no sliding window",
      bound="running_forward_bound of both runs")
def window_wider_than_sequence_is_causal(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    w = case.get("window")
    inpw = inp.with_(window=w)
    o1, l1 = ctx.call(inpw, tile=case.tile_dict)
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    inp, o0, l0 = sample(ctx, inp, o0, l0, rows=rows)
    inpw, o1, l1 = sample(ctx, inpw, o1, l1, rows=rows)
    ex, (ob0, lb0) = ctx.judge(inp, o0, l0, tile=case.tile_dict, label="no window", fa=False)
    _, (ob1, _) = ctx.judge(inpw, o1, l1, tile=case.tile_dict, label=f"window={w}", fa=False, ex=ex)
    # both runs are within their bounds of the same exact values: they differ by at most the sum
    oracle.assert_within(f"O (window={w} vs causal={inp.causal})", to_np(o1), to_np(o0),
                         ob0 + ob1 + ex.o_rad + ex.o_rad, what="agreement with the run without a window")


@prop("invalid_window_rejected",
      asserts="a window side below -1 raises an error (it never silently becomes unbounded attention)",
      classes=(7,),
      strategy=lambda ctx: st.builds(lambda w, seed: Case(problem=Problem(dtype=first_dtype(ctx), seed=seed),
                                                          extra=(("window", w),)),
                                     st.sampled_from(((-2, 0), (0, -2), (-3, -3), (-2, -1))), st.integers(0, 9)),
      corners=lambda ctx: [Case(problem=Problem(dtype=first_dtype(ctx)), extra=(("window", (-2, 0)),))],
      needs=lambda t: None if t.window else "the target declares no sliding window",
      bound="none (API)")
def invalid_window_rejected(ctx, case):
    dom = domain(ctx)
    causal = False if dom.allows(False) else dom.causal[0]  # the window's own validity is what is asked
    lq, lk = dom.fit_pair(4, 8, causal)
    e = head_dim_at_least(ctx, 16) or max(ctx.target.head_dims)
    inp = build(Problem(**{**case.problem.__dict__, "shape": Shape(1, 1, 1, lq, lk, e, e)}), device=ctx.device)
    w = case.get("window")
    try:
        out = ctx.target(inp.q, inp.k, inp.v, window=w, causal=causal, return_lse=False)
    except OutsideDomain:
        raise  # the shape is not the target's: no verdict (not a rejection of the window)
    except Exception:
        return
    raise Violation(f"window={w} was accepted (returned {type(out[0]).__name__}); a side below -1 must be an error, "
                    f"not silently unbounded or clamped")


# ============================================================================ softcap
@prop("softcap_infinity_is_none",
      asserts="softcap None, 0 and +inf all mean no softcap, and a huge finite softcap (1e6) matches its exact "
              "value (~ no softcap), within the bound",
      classes=(8,),
      strategy=lambda ctx: case_strategy(ctx, softcap=st.none(), extra=st.sampled_from((math.inf, 0.0, 1e6)).map(
          lambda c: (("cap", c),))),
      corners=lambda ctx: [corner(ctx, regime=Regime("large", 0.0, 30.0), seed=800, extra=(("cap", math.inf),))],
      needs=lambda t: None if t.softcap else "the target declares no softcap",
      bound="running_forward_bound")
def softcap_infinity_is_none(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    cap = case.get("cap")
    inpc = inp.with_(softcap=cap)
    o1, l1 = ctx.call(inpc, tile=case.tile_dict)
    rows = judge_rows(ctx, inp, tile=case.tile_dict)
    ex, (ob0, _) = ctx.judge(*sample(ctx, inp, o0, l0, rows=rows), tile=case.tile_dict, label="softcap=None", fa=False)
    ctx.judge(*sample(ctx, inpc, o1, l1, rows=rows), tile=case.tile_dict, label=f"softcap={cap!r}", fa=False,
              ex=None if cap == 1e6 else ex)


@prop("softcap_applied_as_spec",
      asserts="softcap c in {1, 5, 20, 50} on logits beyond c gives c*tanh(s/c) applied to the scaled logits "
              "before masking (a dropped softcap, or one applied after a log2(e) fold, exceeds the bound)",
      classes=(8,),
      strategy=lambda ctx: case_strategy(ctx, regimes=("large", "spread", "standard", "rising"),
                                         softcap=st.sampled_from((1.0, 5.0, 20.0, 50.0))),
      corners=lambda ctx: [corner(ctx, regime=Regime("large", 0.0, 30.0), softcap=5.0, seed=810)],
      needs=lambda t: None if t.softcap else "the target declares no softcap",
      bound="running_forward_bound with the softcap terms")
def softcap_applied_as_spec(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    ctx.judge(*sample(ctx, inp, o, lse, tile=case.tile_dict), tile=case.tile_dict)


# ============================================================================ LSE convention
def _lse_corners(ctx):
    out = [corner(ctx, shape=Shape(1, 1, 1, 3, 1, 16, 16), seed=900)]
    if "top_left" in ctx.target.alignments:
        out.append(corner(ctx, shape=Shape(1, 1, 1, 5, 9, 16, 16), mask=MaskSpec(causal="top_left"),
                          regime=Regime("spread", 0.0, 30.0), seed=901))
    if "bottom_right" in ctx.target.alignments:
        out.append(corner(ctx, shape=Shape(1, 1, 1, 6, 3, 16, 16), mask=MaskSpec(causal="bottom_right"), seed=902))
    return out


@prop("lse_is_natural_log",
      asserts="the LSE is log(sum_j exp(s_ij)) in natural log: within the LSE bound of the exact value; a "
              "single-key row's LSE equals its logit; an empty row's LSE is -inf (never +inf or NaN)",
      classes=(14, 13, 1), strategy=lambda ctx: case_strategy(ctx), corners=_lse_corners,
      needs=lambda t: None if t.lse else "the target declares no LSE output",
      bound="running_forward_bound's LSE part")
def lse_is_natural_log(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict, return_lse=True)
    ln = to_np(lse)
    empty = ~oracle.allowed_mask(inp).any(axis=-1)  # every row, judged or not
    bad = empty & ~np.isneginf(ln)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        raise Violation("LSE of rows with no allowed key must be -inf: " +
                        ", ".join(f"{oracle.fmt_idx(i)} = {ln[tuple(i)]!r}" for i in idx))
    inp, o, lse = sample(ctx, inp, o, lse, tile=case.tile_dict)
    _, allowed = logits_exact(inp)
    ln = to_np(lse)
    n = allowed.sum(axis=-1)
    o_b, l_b = ctx.bound(inp, tile=case.tile_dict)
    ex = oracle.exact(inp, need_o=o_b, need_lse=l_b)
    single = n == 1
    if single.any():
        # a single key's LSE is exactly its logit: the exact LSE (with its radius) is that logit
        oracle.assert_within("LSE (single-key rows)", np.where(single, ln, 0.0), np.where(single, ex.lse, 0.0),
                             np.where(single, l_b + ex.lse_rad, 0.0),
                             what="LSE = the row's only logit", dims="(b, h, i)")
    try:
        ctx.judge(inp, o, lse, tile=case.tile_dict, ex=ex, bounds=(o_b, l_b), fa=False)
    except Violation as exc:
        fin = np.isfinite(ex.lse) & np.isfinite(ln) & (np.abs(ex.lse) > 1e-3)
        hint = ""
        if fin.any():
            r = np.median(ln[fin] / ex.lse[fin])
            if abs(r - 1 / math.log(2)) < 1e-2:
                hint = "\n  LSE / exact ~ 1/ln 2 = 1.4427: the LSE looks like log2, not natural log"
            elif abs(r - math.log(2)) < 1e-2:
                hint = "\n  LSE / exact ~ ln 2: the LSE looks scaled by ln 2"
        raise Violation(str(exc) + hint) from None


# ============================================================================ sentinels
def _sentinel_mechanisms(t):
    out = []
    if t.attn_mask:
        out.append("attn_mask_column")
    if "top_left" in t.alignments:
        out.append("causal_first_row")
    if t.window:
        out.append("window_diagonal")
    return out


def _sentinel_values(dtype, scale, acc):
    top = max_abs_logit(dtype, scale, accumulator=acc)
    out = []
    for s in SENTINELS:
        v = -spec.FORMATS[dtype].max if s == "finfo.min" else float(s)
        if -v <= top / 4:
            out.append(v)
    return out


def _sentinel_strategy(ctx):
    mech = _sentinel_mechanisms(ctx.target)
    if not mech:
        skip("the target declares no mask that leaves a single key")
    dom = domain(ctx)
    lks = (lengths(max_len=ctx.limits.max_len, tile_sizes=tile_sizes(ctx)) if dom.default else
           dom.lengths("k", cap=ctx.limits.max_len, tile_sizes=tile_sizes(ctx)))
    return st.builds(lambda m, dt, si, lk, seed, tile: Case(problem=Problem(dtype=dt, seed=seed), tile=tile,
                                                             extra=(("via", m), ("sentinel_index", si), ("lk", lk))),
                     st.sampled_from(mech), st.sampled_from(ctx.target.dtypes), st.integers(0, 5), lks,
                     st.integers(0, 1000),
                     st.sampled_from([tuple(sorted(c.items())) for c in run_tiles(ctx)] or [None]))


@prop("single_key_with_sentinel_logit",
      asserts="a row whose only allowed key has a logit at a mask-sentinel value (-1e4, -5e4, -65504, -1e6, "
              "-1e30, -finfo.max where representable), while masked keys have larger logits, outputs exactly "
              "that key's v (within the bound)",
      classes=(3, 2), strategy=_sentinel_strategy,
      corners=lambda ctx: [Case(problem=Problem(dtype=first_dtype(ctx), seed=1000 + n), extra=(("via", m), ("sentinel_index", 3), ("lk", 17)))
                           for n, m in enumerate(_sentinel_mechanisms(ctx.target))],
      needs=lambda t: None if _sentinel_mechanisms(t) else "the target declares no mask that leaves a single key",
      bound="running_forward_bound (exact O = v_j)")
def single_key_with_sentinel_logit(ctx, case):
    import torch

    dt = case.problem.dtype
    via, lk = case.get("via"), max(2, case.get("lk"))
    e = head_dim_at_least(ctx, 16) or 16
    scale = 0.25
    vals = _sentinel_values(dt, scale, ctx.target.accumulator_for(dt))
    sval = vals[case.get("sentinel_index") % len(vals)]
    dom = domain(ctx)
    # a column of the attn_mask or the window's diagonal, without a mask where the target takes none, else
    # causal (a causal window (0, 0) keeps one key per row; column 0 is allowed to every causal row)
    causal = "top_left" if via == "causal_first_row" else False if dom.allows(False) else dom.causal[0]
    lq = 1 if via == "causal_first_row" else min(lk, 5)
    if dom.square(causal):
        lq = lk  # row 0 of a square causal mask still sees key 0 only
    lq, lk = dom.fit_pair(lq, lk, causal)  # lq <= lk stays: lk is a declared length
    rng = np.random.default_rng(case.problem.seed)
    emax = spec.FORMATS[dt].max / 4
    # logit = scale * alpha * kappa: alpha a power of two, kappa = S / (scale alpha) representable
    alpha = 2.0 ** max(0, math.ceil(math.log2(max(1.0, abs(sval) / (scale * emax)))))
    kappa = sval / (scale * alpha)
    q = np.zeros((1, 1, lq, e))
    q[..., 0] = alpha
    k = np.zeros((1, 1, lk, e))
    k[..., 0] = 2.0 / (scale * alpha) * 4  # masked keys: logit +8, larger than the sentinel
    am = None
    window = None
    if via == "attn_mask_column":
        j = int(rng.integers(0, lk))
        j = j if not causal else 0
        k[..., j, 0] = kappa
        m = np.zeros((lq, lk), dtype=bool)
        m[:, j] = True
        am = torch.from_numpy(m).to(ctx.device)
        keys = [j] * lq
    elif via == "causal_first_row":
        k[..., 0, 0] = kappa
        keys = [0]
    else:
        window = (0, 0)
        k[..., :, 0] = kappa  # every key is some row's only key
        shift = lk - lq if causal == "bottom_right" else 0
        keys = [i + shift for i in range(lq)]
    v = rng.standard_normal((1, 1, lk, e))
    tq = lambda a: torch.from_numpy(a).to(getattr(torch, dt)).to(ctx.device)  # noqa: E731
    inp = Inputs(q=tq(q), k=tq(k), v=tq(v), attn_mask=am, causal=causal, window=window, scale=scale,
                 problem=case.problem)
    s, allowed = logits_exact(inp)
    got = s[0, 0][np.arange(lq), keys]
    # a check of the construction, not a tolerance on the target: kappa is one rounding to the dtype
    # (relative u), alpha and scale are powers of two, so the logit is sval to within eps = 2u
    if not (np.abs(got - sval) <= spec.FORMATS[dt].eps * abs(sval)).all():
        raise AssertionError(f"flashproof: sentinel construction reached logits {got} instead of {sval:g}")
    o, lse = ctx.call(inp, tile=case.tile_dict)
    ctx.judge(inp, o, lse, tile=case.tile_dict, label=f"single key at logit {sval:g} via {via}", fa=False)


def _below_sentinel_strategy(ctx):
    t = ctx.target
    causal_only = domain(ctx).causal_only

    def mask_fn(shp):
        return masks(alignments=t.alignments, window=t.window, attn_mask=t.attn_mask, lq=shp.lq,
                     causal_only=causal_only).filter(lambda m: m.causal or m.window or (m.attn_mask and m.density < 1))
    if not (t.alignments or t.window or t.attn_mask):
        skip("the target declares no mask")
    return case_strategy(ctx, regimes=("sentinel",), mask=mask_fn)


@prop("logits_below_mask_sentinels",
      asserts="rows whose real logits straddle common mask sentinels (-1e4, -5e4, -65504, -1e6, -1e30, finfo.min) "
              "with masked keys present stay within the bound (a finite sentinel must not be taken for a logit)",
      classes=(3,), strategy=_below_sentinel_strategy,
      corners=lambda ctx: [corner(ctx, regime=Regime("sentinel", s, 2.0 ** -6), seed=1100 + n,
                                  mask=MaskSpec(causal=ctx.target.alignments[0]) if ctx.target.alignments else
                                  MaskSpec(attn_mask="bool", density=0.5))
                           for n, s in enumerate((-1e4, -65504.0))],
      needs=lambda t: None if (t.alignments or t.window or t.attn_mask) else "the target declares no mask",
      bound="running_forward_bound")
def logits_below_mask_sentinels(ctx, case):
    inp = build(case.problem, device=ctx.device)
    o, lse = ctx.call(inp, tile=case.tile_dict)
    ctx.judge(*sample(ctx, inp, o, lse, tile=case.tile_dict), tile=case.tile_dict, fa=False)

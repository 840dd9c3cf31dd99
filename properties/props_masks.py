"""Mask, garbage, softcap, LSE-convention, sentinel and NaN properties."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from flashproof import spec

from . import oracle
from .cases import Case, MaskSpec, Problem, Regime, Shape
from .domain import OutsideDomain, conform, in_domain
from .gen import (case_strategy, corner, empty_row_cases, empty_row_mechanisms, first_dtype, head_dim_at_least,
                  judge_rows, prop, run_tiles, sample, small_tiles, tile_sizes)
from .inputs import Inputs, build, logits_exact, max_abs_logit
from .oracle import Violation, to_np
from .registry import skip
from .strategies import SENTINELS, lengths, masks

__all__ = []

_GARBAGE = ("nan", "inf", "-inf", "huge")


def _huge(dtype):
    return min(1e30, spec.FORMATS[dtype].max)


def _garbage_value(kind, dtype):
    return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "huge": _huge(dtype)}[kind]


# ============================================================================ fully masked rows
def _empty_corners(ctx):
    out = []
    for i, m in enumerate(empty_row_mechanisms(ctx.target)[:3]):
        sh = Shape(1, 2, 1 if ctx.target.gqa else 2, 6, 5, 16, 16) if m in ("bottom_right", "window") else \
            Shape(1, 2, 1 if ctx.target.gqa else 2, 6, 21, 16, 16)
        mk = {"attn_mask_bool": MaskSpec(attn_mask="bool", density=0.7, empty_rows=2),
              "attn_mask_additive": MaskSpec(attn_mask="additive", density=0.7, empty_rows=2),
              "bottom_right": MaskSpec(causal="bottom_right"), "window": MaskSpec(window=(0, 0))}[m]
        out.append(corner(ctx, shape=sh, mask=mk, regime=Regime("very_negative", -1e4, 1.0), seed=200 + i,
                          extra=(("via", m),)))
    return out


@prop("fully_masked_rows_zero_and_neg_inf",
      asserts="rows with no allowed key give O = 0 and LSE = -inf (never NaN or +inf), and every other row "
              "stays within the bound of its exact value",
      classes=(1, 13, 14), strategy=empty_row_cases, corners=_empty_corners,
      needs=lambda t: None if empty_row_mechanisms(t) else "the target declares no way to express a fully masked row "
                                                        "(attn_mask, bottom_right causal or window)",
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
def _align_strategy(ctx):
    al = ctx.target.alignments

    def adapt(c, a, longer_keys):
        p = c.problem
        sh = p.shape
        lq, lk = sh.lq, sh.lk
        if lq == lk:
            lk = lk + 1 + lq % 5
        if (lq < lk) != longer_keys:
            lq, lk = lk, lq
        sh = Shape(**{**sh.__dict__, "lq": lq, "lk": lk})
        return Case(problem=Problem(**{**p.__dict__, "shape": sh, "mask": MaskSpec(causal=a)}), tile=c.tile)
    return st.tuples(case_strategy(ctx), st.sampled_from(al), st.booleans()).map(lambda x: adapt(*x))


@prop("causal_alignment_on_unequal_lengths",
      asserts="causal attention with Lq != Lk (both orders) follows the declared alignment (top_left: j <= i; "
              "bottom_right: j <= i + Lk - Lq) within the bound",
      classes=(6,), strategy=_align_strategy,
      corners=lambda ctx: [corner(ctx, shape=Shape(1, 1, 1, lq, lk, 16, 16), mask=MaskSpec(causal=a), seed=300 + n)
                           for n, (a, lq, lk) in enumerate((a, lq, lk) for a in ctx.target.alignments
                                                           for lq, lk in ((3, 11), (11, 4)))],
      needs=lambda t: ("the target declares no causal masking" if not t.alignments else
                       "the target runs causal attention only with Lq == Lk (declared causal_equal_lengths)"
                       if t.causal_equal_lengths else None),
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
    lim = min(ctx.limits.max_len, 40)

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
        return Case(problem=pr, tile=tile) if in_domain(t, pr) else None
    ts = tile_sizes(ctx)
    m = st.integers(1, lim).flatmap(lambda lq: masks(alignments=t.alignments, window=t.window,
                                                     attn_mask=False, lq=lq).map(lambda mm: (lq, mm)))
    return st.builds(lambda lm, lk, seed, dt, tile, b: mk(lm[0], lk, lm[1], seed, dt, tile, b),
                     m, lengths(max_len=lim, tile_sizes=ts), st.integers(0, 1000), st.sampled_from(t.dtypes),
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
    for n, m in enumerate(cs[:6]):
        ev = head_dim_at_least(ctx, 19) or 19
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
        p = c.problem
        big = max(p.shape.lq, p.shape.lk) + 1 + p.seed % 7
        win = {"left": (big, 0), "both": (big, big), "unbounded": (-1, -1)}[kind]
        return Case(problem=conform(t, Problem(**{**p.__dict__, "mask": MaskSpec(causal=a)})), tile=c.tile,
                    extra=(("window", win),))
    return st.tuples(case_strategy(ctx), st.sampled_from(t.alignments or (False,)),
                     st.sampled_from(("left", "both", "unbounded"))).map(lambda x: adapt(*x))


@prop("window_wider_than_sequence_is_causal",
      asserts="a window at least as wide as the sequence (or (-1, -1)) gives the causal (or unmasked) result: "
              "within the bound of the exact values and of the target's own run without a window",
      classes=(7,), strategy=_wide_strategy,
      corners=lambda ctx: [corner(ctx, mask=MaskSpec(causal=a), seed=500 + n, extra=(("window", (40, 0)),))
                           for n, a in enumerate(ctx.target.alignments or (False,))],
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
    inp = build(Problem(**{**case.problem.__dict__, "shape": Shape(1, 1, 1, 4, 8, 16, 16)}), device=ctx.device)
    w = case.get("window")
    try:
        out = ctx.target(inp.q, inp.k, inp.v, window=w, causal=False, return_lse=False)
    except OutsideDomain:
        raise  # the shape is not the target's: no verdict (not a rejection of the window)
    except Exception:
        return
    raise Violation(f"window={w} was accepted (returned {type(out[0]).__name__}); a side below -1 must be an error, "
                    f"not silently unbounded or clamped")


# ============================================================================ garbage
def _garbage_mechanisms(t):
    out = []
    if "top_left" in t.alignments and not t.causal_equal_lengths:  # square causal attends every key
        out.append("causal_tail")
    if t.window:
        out.append("window")
    if t.attn_mask:
        out.append("attn_mask_columns")
    return out


def _garbage_strategy(ctx):
    mech = _garbage_mechanisms(ctx.target)
    if not mech:
        skip("the target declares no mask that leaves keys unattended")

    def adapt(c, m, g, where):
        p = c.problem
        sh = p.shape
        if m == "causal_tail":
            lk = max(sh.lk, sh.lq + 1)
            mk = MaskSpec(causal="top_left")
            sh = Shape(**{**sh.__dict__, "lk": lk})
        elif m == "window":
            lq = max(1, min(sh.lq, 4))
            lk = max(sh.lk, lq + 8)
            mk = MaskSpec(causal=ctx.target.alignments[0] if ctx.target.alignments else False, window=(2, 1))
            sh = Shape(**{**sh.__dict__, "lq": lq, "lk": lk})
        else:
            mk = MaskSpec(attn_mask="bool", density=0.8, full=p.mask.full)
            sh = Shape(**{**sh.__dict__, "lk": max(sh.lk, 3)})
        pr = conform(ctx.target, Problem(**{**p.__dict__, "shape": sh, "mask": mk, "softcap": p.softcap}))
        return Case(problem=pr, tile=c.tile, extra=(("via", m), ("garbage", g), ("where", where)))
    return st.tuples(case_strategy(ctx), st.sampled_from(mech), st.sampled_from(_GARBAGE),
                     st.sampled_from(("kv", "k", "v"))).map(lambda x: adapt(*x))


def _garbage_corners(ctx):
    out = []
    for n, m in enumerate(_garbage_mechanisms(ctx.target)):
        sh = Shape(1, 2, 1 if ctx.target.gqa else 2, 5, 37, 16, 16)
        mk = {"causal_tail": MaskSpec(causal="top_left"),
              "window": MaskSpec(causal=ctx.target.alignments[0] if ctx.target.alignments else False, window=(2, 1)),
              "attn_mask_columns": MaskSpec(attn_mask="bool", density=0.8)}[m]
        out.append(corner(ctx, shape=sh, mask=mk, seed=600 + n, extra=(("via", m), ("garbage", "nan"), ("where", "kv"))))
    return out


def _unattended_keys(inp):
    """(B, Hkv, Lk) bool: keys that no query row of any head reading them may attend."""
    allowed = oracle.allowed_mask(inp)
    b, h, lq, lk = allowed.shape
    hkv = inp.k.shape[1]
    any_ = allowed.reshape(b, hkv, h // hkv, lq, lk).any(axis=(2, 3))
    return ~any_


@prop("garbage_in_masked_keys_isolated",
      asserts="NaN, +-inf or huge values in keys and values that no row attends leave O and LSE bitwise equal "
              "to the clean run",
      classes=(4, 1), strategy=_garbage_strategy, corners=_garbage_corners,
      needs=lambda t: None if _garbage_mechanisms(t) else "the target declares no mask that leaves keys unattended" + (
          " (its causal is square only: the last row attends every key)" if t.causal_equal_lengths and t.alignments
          else ""),
      bound="bitwise")
def garbage_in_masked_keys_isolated(ctx, case):
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
    g = _garbage_value(case.get("garbage"), case.problem.dtype)
    deadt = torch.from_numpy(dead).to(inp.k.device)[..., None]
    k, v = inp.k, inp.v
    if "k" in case.get("where"):
        k = torch.where(deadt, torch.full_like(k, g), k)
    if "v" in case.get("where"):
        v = torch.where(deadt, torch.full_like(v, g), v)
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    o1, l1 = ctx.call(inp.with_(k=k, v=v), tile=case.tile_dict)
    what = f" ({case.get('garbage')} in {case.get('where')} at {int(dead.sum())} unattended key(s), via {case.get('via')})"
    oracle.assert_bitwise("O" + what, o1, o0)
    if l0 is not None:
        oracle.assert_bitwise("LSE" + what, l1, l0, dims="(b, h, i)")


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
      asserts="with q, k, v strided views into buffers padded (sequence, head dim, heads; BHLE or BLHE layout) "
              "with NaN, +-inf or huge values, O and LSE are bitwise equal to the same views padded with zeros, "
              "and within the bound",
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
    return st.builds(lambda m, dt, si, lk, seed, tile: Case(problem=Problem(dtype=dt, seed=seed), tile=tile,
                                                             extra=(("via", m), ("sentinel_index", si), ("lk", lk))),
                     st.sampled_from(mech), st.sampled_from(ctx.target.dtypes), st.integers(0, 5),
                     lengths(max_len=ctx.limits.max_len, tile_sizes=tile_sizes(ctx)), st.integers(0, 1000),
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
    lq = 1 if via == "causal_first_row" else min(lk, 5)
    if via == "causal_first_row" and ctx.target.causal_equal_lengths:
        lq = lk  # row 0 of a square causal mask still sees key 0 only
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
    causal = False
    if via == "attn_mask_column":
        j = int(rng.integers(0, lk))
        k[..., j, 0] = kappa
        m = np.zeros((lq, lk), dtype=bool)
        m[:, j] = True
        am = torch.from_numpy(m).to(ctx.device)
        keys = [j] * lq
    elif via == "causal_first_row":
        k[..., 0, 0] = kappa
        causal = "top_left"
        keys = [0]
    else:
        window = (0, 0)
        k[..., :, 0] = kappa  # every key is some row's only key
        keys = list(range(lq))
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

    def mask_fn(shp):
        return masks(alignments=t.alignments, window=t.window, attn_mask=t.attn_mask, lq=shp.lq).filter(
            lambda m: m.causal or m.window or (m.attn_mask and m.density < 1))
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


# ============================================================================ NaN propagation
@prop("nan_propagates_only_to_attending_rows",
      asserts="a NaN in an allowed q_i or k_j makes exactly the rows that attend it NaN (O and LSE); every other "
              "row, empty rows included, is bitwise equal to the clean run",
      classes=(20, 4, 1),
      strategy=lambda ctx: case_strategy(ctx, extra=st.tuples(st.sampled_from(("q", "k", "qk")),
                                                              st.integers(0, 10 ** 6)).map(
          lambda x: (("where", x[0]), ("nan_seed", x[1])))),
      corners=lambda ctx: [corner(ctx, mask=MaskSpec(causal=ctx.target.alignments[0]) if ctx.target.alignments
                                  else MaskSpec(), seed=1200, extra=(("where", "k"), ("nan_seed", 3)))],
      bound="bitwise / NaN pattern")
def nan_propagates_only_to_attending_rows(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    b, h, lq, lk = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.k.shape[2]
    hkv = inp.k.shape[1]
    if lq == 0 or lk == 0:
        return
    rng = np.random.default_rng(case.get("nan_seed"))
    where = case.get("where")
    allowed = oracle.allowed_mask(inp)
    hit = np.zeros((b, h, lq), dtype=bool)
    q, k = inp.q.clone(), inp.k.clone()
    if "q" in where:
        bi, hi, ii, ei = (int(rng.integers(0, n)) for n in (b, h, lq, inp.q.shape[-1]))
        q[bi, hi, ii, ei] = math.nan
        hit[bi, hi, ii] |= allowed[bi, hi, ii].any()
    if "k" in where:
        bi, gi, ji, ei = (int(rng.integers(0, n)) for n in (b, hkv, lk, inp.k.shape[-1]))
        k[bi, gi, ji, ei] = math.nan
        rep = h // hkv
        for hh in range(gi * rep, (gi + 1) * rep):
            hit[bi, hh] |= allowed[bi, hh, :, ji]
    o0, l0 = ctx.call(inp, tile=case.tile_dict)
    o1, l1 = ctx.call(inp.with_(q=q, k=k), tile=case.tile_dict)
    on = to_np(o1)
    nan_rows = np.isnan(on).all(axis=-1)
    missing = hit & ~nan_rows
    if missing.any():
        idx = np.argwhere(missing)[:5]
        raise Violation(f"O: rows that attend a NaN ({where}) must be NaN, but {int(missing.sum())} are not, e.g. "
                        + ", ".join(f"{oracle.fmt_idx(i)} = {on[tuple(i)][:4]}" for i in idx))
    keep = torch.from_numpy(~hit)
    oracle.assert_bitwise(f"O (rows not attending the NaN in {where})", o1.cpu()[keep], o0.cpu()[keep],
                          dims="(row)")
    if l0 is not None:
        ln = to_np(l1)
        badl = hit & ~np.isnan(ln)
        if badl.any():
            idx = np.argwhere(badl)[:5]
            raise Violation("LSE: rows that attend a NaN must be NaN, got " +
                            ", ".join(f"{oracle.fmt_idx(i)} = {ln[tuple(i)]!r}" for i in idx))
        oracle.assert_bitwise(f"LSE (rows not attending the NaN in {where})", l1.cpu()[keep], l0.cpu()[keep],
                              dims="(row)")

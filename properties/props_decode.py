"""Split-KV and paged decode properties, and prefill followed by one-token decodes."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from . import oracle
from .gen import domain, first_dtype, prop, tile_sizes
from .oracle import Violation, to_np
from .cases import Case, Problem, Regime, Shape
from .inputs import Inputs, build
from .registry import TargetError, not_applicable
from .strategies import lengths

__all__ = []


def _needs_decode(t):
    return None if t.decode is not None else "the target declares no decode"


def _decode(ctx, q, kc, vc, **kw):
    t = ctx.target
    kw.setdefault("causal", "bottom_right")
    kw.setdefault("return_lse", t.lse)
    try:
        out = t.decode(q, kc, vc, **kw)
    except Exception as exc:
        raise TargetError(f"target {t.name!r} decode raised {type(exc).__name__} on a valid input: {exc}") from exc
    o, lse = (out if isinstance(out, tuple) else (out, None))
    if tuple(o.shape) != tuple(q.shape[:3]) + (vc.shape[-1],):
        raise Violation(f"decode O has shape {tuple(o.shape)}, expected {tuple(q.shape[:3]) + (vc.shape[-1],)}")
    return _unjudged_to_spec(ctx, o, lse, kw)


def _unjudged_to_spec(ctx, o, lse, kw):
    """Context.unjudged_to_spec for a decode call: under empty_rows "unspecified", row i of sequence b has no
    key when i < Lq - seqlens[b] (bottom-right causal to each sequence's own length, no window)."""
    import torch

    if ctx.target.empty_rows != "unspecified" or kw.get("window") is not None or kw.get("causal") != "bottom_right":
        return o, lse
    lq = o.shape[2]
    n = torch.as_tensor(kw["seqlens"]).to("cpu", torch.int64)
    empty = (torch.arange(lq)[None, :] < (lq - n)[:, None])[:, None, :].expand(o.shape[:3]).to(o.device)
    o = torch.where(empty[..., None], torch.zeros((), dtype=o.dtype, device=o.device), o)
    if lse is not None:
        lse = torch.where(empty.to(lse.device), torch.full((), float("-inf"), dtype=lse.dtype, device=lse.device), lse)
    return o, lse


def _decode_strategy(ctx, *, min_batch=1):
    t, lim = ctx.target, ctx.limits

    def mk(b, hkv, ratio, lq, lmax, e, dt, seed, reg, lens_seed):
        hkv = min(hkv, lim.max_heads)
        ratio = max(1, min(ratio, lim.max_heads // hkv)) if t.gqa else 1
        sh = Shape(b, hkv * ratio, hkv, lq, lmax, e, e)
        return Case(problem=Problem(shape=sh, dtype=dt, regime=reg, seed=seed), extra=(("lens_seed", lens_seed),))
    regs = st.sampled_from((Regime(), Regime("spread", 0.0, 30.0), Regime("very_negative", -1e4, 1.0),
                            Regime("rising", 0.0, 1e3)))
    return st.builds(mk, st.integers(min_batch, max(min_batch, lim.max_batch + 1)), st.sampled_from((1, 2, 3)),
                     st.sampled_from((1, 2, 3, 5, 6, 7, 8)), st.sampled_from((1, 1, 2)),
                     lengths(max_len=2 * lim.max_len, tile_sizes=tile_sizes(ctx)),
                     st.sampled_from(tuple(e for e in lim.head_dims if e >= 16) or lim.head_dims),
                     st.sampled_from(t.dtypes), st.integers(0, 10 ** 6), regs, st.integers(0, 10 ** 6))


def _seqlens(case, lmax, b):
    rng = np.random.default_rng(case.get("lens_seed"))
    lens = rng.integers(0, lmax + 1, b)
    lens[0] = lmax  # the longest row reaches the end of the cache
    if b > 2:
        lens[1] = 0  # an empty sequence
    return lens


def _exact_rows(ctx, inp, lens):
    """Exact (o, lse, o_bound, lse_bound) of each batch row over its own keys (bottom-right causal)."""
    b, h, lq, ev = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2], inp.v.shape[-1]
    o = np.zeros((b, h, lq, ev))
    orad = np.zeros_like(o)
    ob = np.zeros_like(o)
    lse = np.full((b, h, lq), -np.inf)
    lrad = np.zeros((b, h, lq))
    lb = np.zeros((b, h, lq))
    for i in range(b):
        n = int(lens[i])
        if n == 0:
            continue
        row = Inputs(q=inp.q[i:i + 1], k=inp.k[i:i + 1, :, :n], v=inp.v[i:i + 1, :, :n], causal="bottom_right",
                     scale=inp.scale, softcap=inp.softcap, problem=inp.problem)
        o_b, l_b = ctx.bound(row)
        ex = oracle.exact(row, need_o=o_b, need_lse=l_b)
        o[i], orad[i], ob[i] = ex.o[0], ex.o_rad[0], o_b[0]
        lse[i], lrad[i], lb[i] = ex.lse[0], ex.lse_rad[0], l_b[0]
    return o, orad, ob, lse, lrad, lb


def _check_rows(name, o, lse, ref):
    eo, orad, ob, el, lrad, lb = ref
    oracle.assert_within(f"O ({name})", to_np(o), eo, ob + orad,
                         what="the running error bound of each sequence over its own keys")
    if lse is not None:
        oracle.assert_within(f"LSE ({name})", to_np(lse), el, lb + lrad, what="the running LSE bound",
                             dims="(b, h, i)")


def _cache(inp, lens, fill):
    """Contiguous (B, Hkv, Lmax, E) caches with ``fill`` beyond each sequence's length."""
    import torch

    lmax = inp.k.shape[2]
    pos = torch.arange(lmax, device=inp.k.device)[None, None, :, None]
    ln = torch.as_tensor(lens, device=inp.k.device)[:, None, None, None]
    dead = pos >= ln
    return (torch.where(dead, torch.full_like(inp.k, fill), inp.k), torch.where(dead, torch.full_like(inp.v, fill), inp.v))


@prop("decode_within_error_bound",
      asserts="decode over a contiguous cache with per-sequence lengths (0 included) matches each sequence's exact "
              "attention (bottom-right causal) within the bound; NaN beyond a sequence's length changes nothing "
              "(bitwise)",
      classes=(6, 13, 4, 16), strategy=lambda ctx: _decode_strategy(ctx),
      corners=lambda ctx: [Case(problem=Problem(shape=Shape(3, 2, 1 if ctx.target.gqa else 2, 1, 37, 16, 16),
                                                dtype=first_dtype(ctx), seed=1), extra=(("lens_seed", 0),))],
      needs=_needs_decode, bound="running_forward_bound per sequence; bitwise for the garbage")
def decode_within_error_bound(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    b, lmax = inp.q.shape[0], inp.k.shape[2]
    lens = _seqlens(case, lmax, b)
    sl = torch.as_tensor(lens, dtype=torch.int32, device=inp.k.device)
    k0, v0 = _cache(inp, lens, 0.0)
    o0, l0 = _decode(ctx, inp.q, k0, v0, seqlens=sl, scale=inp.scale)
    _check_rows(f"seqlens {lens.tolist()}", o0, l0, _exact_rows(ctx, inp, lens))
    k1, v1 = _cache(inp, lens, math.nan)
    o1, l1 = _decode(ctx, inp.q, k1, v1, seqlens=sl, scale=inp.scale)
    oracle.assert_bitwise("O (NaN beyond seqlens)", o1, o0)
    if l0 is not None:
        oracle.assert_bitwise("LSE (NaN beyond seqlens)", l1, l0, dims="(b, h, i)")


def _needs_split(t):
    if t.decode is None:
        return "the target declares no decode"
    return None if t.split_range is not None else "the target declares no split-KV range"


def _split_strategy(ctx):
    lo, hi = ctx.target.split_range
    hi = min(hi, 16)
    # the corner runs every count; generated examples add two (each split is a program under the interpreter)
    counts = st.lists(st.integers(lo, hi), min_size=1, max_size=2, unique=True).map(lambda x: tuple(sorted(x)))
    return st.tuples(_decode_strategy(ctx, min_batch=2), counts).map(
        lambda x: Case(problem=x[0].problem, extra=x[0].extra + (("splits", x[1]),)))


def _split_corners(ctx):
    if ctx.target.split_range is None:
        return []
    lo, hi = ctx.target.split_range
    return [Case(problem=Problem(shape=Shape(2, 2, 1 if ctx.target.gqa else 2, 1, 37, 16, 16) if ctx.target.gqa
                                 else Shape(2, 1, 1, 1, 37, 16, 16),
                                 dtype=first_dtype(ctx), regime=Regime("rising", 0.0, 1e3), seed=2),
                 extra=(("lens_seed", 1), ("splits", tuple(range(lo, min(hi, 16) + 1)))))]


@prop("split_counts_agree",
      asserts="every num_splits from 1 to 16 (within the declared range) gives O and LSE within the bound of the "
              "exact values, at batch > 1 with unequal sequence lengths (the corner runs all 16; generated "
              "examples draw a few)",
      classes=(13,), strategy=_split_strategy, corners=_split_corners, needs=_needs_split, examples=0.67,
      bound="running_forward_bound per sequence")
def split_counts_agree(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    b, lmax = inp.q.shape[0], inp.k.shape[2]
    lens = _seqlens(case, lmax, b)
    sl = torch.as_tensor(lens, dtype=torch.int32, device=inp.k.device)
    k0, v0 = _cache(inp, lens, 0.0)
    ref = _exact_rows(ctx, inp, lens)
    for n in case.get("splits"):
        o, lse = _decode(ctx, inp.q, k0, v0, seqlens=sl, num_splits=n, scale=inp.scale)
        _check_rows(f"num_splits={n}, seqlens {lens.tolist()}", o, lse, ref)


def _paged_layout(inp, lens, page, rng, *, spare, fill):
    """Physical pages (P, Hkv, page, E) holding the sequences, a block table, and unused pages."""
    import torch

    b, hkv, lmax, e = inp.k.shape
    ev = inp.v.shape[-1]
    per = -(-lmax // page)
    n_pages = b * per + spare
    perm = rng.permutation(n_pages)
    kp = torch.full((n_pages, hkv, page, e), fill, dtype=inp.k.dtype, device=inp.k.device)
    vp = torch.full((n_pages, hkv, page, ev), fill, dtype=inp.v.dtype, device=inp.v.device)
    table = torch.zeros((b, per), dtype=torch.int32, device=inp.k.device)
    nxt = 0
    for i in range(b):
        for p in range(per):
            phys = int(perm[nxt])
            nxt += 1
            table[i, p] = phys
            a, z = p * page, min(lmax, (p + 1) * page, int(lens[i]))
            if z > a:
                kp[phys, :, : z - a] = inp.k[i, :, a:z]
                vp[phys, :, : z - a] = inp.v[i, :, a:z]
    return kp, vp, table


def _needs_paged(t):
    if t.decode is None:
        return "the target declares no decode"
    return None if t.paged else "the target declares no paged KV"


def _paged_strategy(ctx):
    sizes = ctx.target.page_sizes or (1, 3, 5, 8, 16)
    return st.tuples(_decode_strategy(ctx, min_batch=2), st.sampled_from(sizes), st.integers(0, 10 ** 6)).map(
        lambda x: Case(problem=x[0].problem, extra=x[0].extra + (("page", x[1]), ("shuffle_seed", x[2]))))


def _paged_problem(ctx, case):
    """The inputs of a paged case, its per-sequence lengths (host and device) and its page size."""
    inp = build(case.problem, device=ctx.device)
    lens = _seqlens(case, inp.k.shape[2], inp.q.shape[0])
    import torch

    sl = torch.as_tensor(lens, dtype=torch.int32, device=inp.k.device)
    return inp, lens, sl, case.get("page")


@prop("paged_shuffle_bitwise",
      asserts="moving the physical KV pages (and rewriting the block table), with NaN in unused pages and past "
              "each sequence's end, gives bitwise the same O and LSE, within the bound of the exact values",
      classes=(16, 4), strategy=_paged_strategy,
      corners=lambda ctx: [Case(problem=Problem(shape=Shape(2, 2, 1 if ctx.target.gqa else 2, 1, 23, 16, 16),
                                                dtype=first_dtype(ctx), seed=3),
                                extra=(("lens_seed", 2), ("page", (ctx.target.page_sizes or (5,))[0]),
                                       ("shuffle_seed", 0)))],
      needs=_needs_paged, bound="bitwise; running_forward_bound per sequence")
def paged_shuffle_bitwise(ctx, case):
    inp, lens, sl, page = _paged_problem(ctx, case)
    rng = np.random.default_rng(case.get("shuffle_seed"))
    kp0, vp0, t0 = _paged_layout(inp, lens, page, rng, spare=2, fill=math.nan)
    kp1, vp1, t1 = _paged_layout(inp, lens, page, rng, spare=3, fill=math.nan)
    o0, l0 = _decode(ctx, inp.q, kp0, vp0, seqlens=sl, block_table=t0, page_size=page, scale=inp.scale)
    _check_rows(f"paged, page_size={page}, seqlens {lens.tolist()}", o0, l0, _exact_rows(ctx, inp, lens))
    o1, l1 = _decode(ctx, inp.q, kp1, vp1, seqlens=sl, block_table=t1, page_size=page, scale=inp.scale)
    oracle.assert_bitwise("O (pages shuffled, table rewritten)", o1, o0)
    if l0 is not None:
        oracle.assert_bitwise("LSE (pages shuffled, table rewritten)", l1, l0, dims="(b, h, i)")


@prop("paged_garbage_in_unused_pages",
      asserts="NaN or huge values in unused physical pages and past each sequence's end in its last page leave "
              "O and LSE bitwise equal to the zero-filled cache",
      classes=(16, 4), strategy=_paged_strategy,
      corners=lambda ctx: [Case(problem=Problem(shape=Shape(2, 1, 1, 1, 19, 16, 16), dtype=first_dtype(ctx), seed=4),
                                extra=(("lens_seed", 3), ("page", (ctx.target.page_sizes or (8,))[0]),
                                       ("shuffle_seed", 1)))],
      needs=_needs_paged, bound="bitwise")
def paged_garbage_in_unused_pages(ctx, case):
    inp, lens, sl, page = _paged_problem(ctx, case)
    seed = case.get("shuffle_seed")
    kp0, vp0, t0 = _paged_layout(inp, lens, page, np.random.default_rng(seed), spare=3, fill=0.0)
    kp1, vp1, t1 = _paged_layout(inp, lens, page, np.random.default_rng(seed), spare=3, fill=math.nan)
    o0, l0 = _decode(ctx, inp.q, kp0, vp0, seqlens=sl, block_table=t0, page_size=page, scale=inp.scale)
    o1, l1 = _decode(ctx, inp.q, kp1, vp1, seqlens=sl, block_table=t1, page_size=page, scale=inp.scale)
    oracle.assert_bitwise("O (NaN in unused pages)", o1, o0)
    if l0 is not None:
        oracle.assert_bitwise("LSE (NaN in unused pages)", l1, l0, dims="(b, h, i)")


# ============================================================================ prefill + decode
def _needs_prefill(t):
    if t.decode is None and "bottom_right" not in t.alignments:
        return "the target declares neither decode nor bottom-right causal"
    if not t.alignments:
        return "the target declares no causal masking for the prefill"
    return None


def _prefill_step(ctx):
    """Query rows per step: one token with decode; through the forward, the shortest Lq the domain
    declares (steps are bottom-right calls with Lq < Lk: N/A where the domain has none)."""
    t, dom = ctx.target, domain(ctx)
    if t.decode is not None:
        return 1
    if not dom.unequal("bottom_right", longer="k"):
        why = "equal_lengths" if dom.equal else "causal_equal_lengths" if dom.causal_equal else "its length ranges"
        not_applicable(f"its steps are bottom-right causal calls with Lq < Lk (the cache so far), which the target's "
                       f"domain excludes ({why}), and it declares no decode")
    return dom.span("q")[0]


def _prefill_strategy(ctx):
    lim, dom = ctx.limits, domain(ctx)
    step = _prefill_step(ctx)

    def mk(b, hkv, ratio, n, p, e, dt, seed):
        ratio = ratio if ctx.target.gqa else 1
        while hkv * ratio > lim.max_heads and ratio > 1:
            ratio -= 1
        if not dom.default or step > 1:  # the prefill and every step inside the declared lengths
            n = dom.fit_equal(n)
            p = min(p, n - step) // dom.multiple * dom.multiple
        sh = Shape(b, hkv * ratio, hkv, n, n, e, e)
        return Case(problem=Problem(shape=sh, dtype=dt, seed=seed), extra=(("prefix", min(p, n - 1)),))
    return st.builds(mk, st.integers(1, 2), st.sampled_from((1, 2)), st.sampled_from((1, 3, 4)),
                     st.integers(2, min(lim.max_len, 24)), st.integers(0, 20),
                     st.sampled_from(tuple(e for e in lim.head_dims if e >= 16) or lim.head_dims),
                     st.sampled_from(ctx.target.dtypes), st.integers(0, 10 ** 6))


def _prefill_corners(ctx):
    dom, step = domain(ctx), _prefill_step(ctx)
    n = dom.fit_equal(13)
    prefix = min(4, n - step) // dom.multiple * dom.multiple
    return [Case(problem=Problem(shape=Shape(1, 2, 1 if ctx.target.gqa else 2, n, n, 16, 16), dtype=first_dtype(ctx),
                                 seed=5), extra=(("prefix", prefix),))]


@prop("prefill_then_decode_equals_prefill",
      asserts="a causal prefill of the first P tokens followed by one-token decodes (bottom-right causal over the "
              "cache so far) gives each token the same output as the full causal prefill, within the bounds",
      classes=(6, 13),
      strategy=_prefill_strategy, corners=lambda ctx: _prefill_corners(ctx),
      needs=_needs_prefill, bound="running_forward_bound of both runs against the exact row")
def prefill_then_decode_equals_prefill(ctx, case):
    import torch

    inp = build(case.problem, device=ctx.device)
    n = inp.q.shape[2]
    step = _prefill_step(ctx)
    causal = "top_left" if "top_left" in ctx.target.alignments else ctx.target.alignments[0]
    full = inp.with_(causal=causal)  # Lq == Lk: both alignments coincide
    o_full, l_full = ctx.call(full)
    ex, (ob, lb) = ctx.judge(full, o_full, l_full, label="full prefill", fa=False)
    for t in range(case.get("prefix"), n, step):
        z = min(n, t + step)  # tokens t .. z-1 against the cache 0 .. z-1
        qt = inp.q[:, :, t:z]
        step_in = inp.with_(q=qt, k=inp.k[:, :, :z], v=inp.v[:, :, :z], causal="bottom_right")
        if ctx.target.decode is not None:
            sl = torch.full((inp.q.shape[0],), z, dtype=torch.int32, device=inp.q.device)
            o_t, l_t = _decode(ctx, qt, inp.k, inp.v, seqlens=sl, scale=inp.scale)
            how = "decode"
        else:
            o_t, l_t = ctx.call(step_in)
            how = "bottom-right forward"
        obt, lbt = ctx.bound(step_in)
        tok = f"token {t}" if z == t + 1 else f"tokens {t}..{z - 1}"
        oracle.assert_within(f"O ({tok} by {how})", to_np(o_t), ex.o[:, :, t:z], obt + ex.o_rad[:, :, t:z],
                             what="the full prefill's exact row")
        if l_t is not None and l_full is not None:
            oracle.assert_within(f"LSE ({tok} by {how})", to_np(l_t), ex.lse[:, :, t:z],
                                 lbt + ex.lse_rad[:, :, t:z], what="the full prefill's exact LSE", dims="(b, h, i)")

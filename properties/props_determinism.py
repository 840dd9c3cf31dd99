"""Determinism properties: reruns bitwise equal, and each batch element bitwise equal alone or with
batch-mates."""
from __future__ import annotations

from hypothesis import strategies as st

from . import oracle
from .cases import Shape
from .gen import case_strategy, corner, problem_strategy, prop
from .inputs import build

__all__ = []


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
      needs=lambda t: None if t.batch_invariant else (
          "the target does not claim bitwise batch invariance (Target.batch_invariant; plain SDPA callables and "
          "adapters do not: declare batch_invariant=True to have it checked)"),
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

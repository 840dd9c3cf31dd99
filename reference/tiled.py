"""The tiled reference: spec.block_state on arbitrary key blocks, combined with spec.merge along
an arbitrary merge tree, in float64, float32 or mpmath arithmetic.

The logits of a row are computed once for all keys and then sliced, so two tilings of the same
problem differ only in the online-softmax recurrence (rescaling, sums, merge order). In
"fp32" arithmetic every step rounds in float32 (inputs, scale, q@k^T, exp, sums, P@V, merge,
division), so comparing tilings in fp32 against mp separates tiling error from rounding error.
"""
from __future__ import annotations

import numbers

import mpmath
import numpy as np

from flashproof.spec import MP, Float32Ops, block_state, dtype_name, finalize, fold, identity, merge

from ._inputs import prepare, row_chunk
from .fast import FP64, logits_np
from .mp import MpPrepared, to_float_array

__all__ = ["forward_tiled", "FP32", "make_boundaries", "make_tree", "reduce_tree", "ARITHMETICS"]

ARITHMETICS = ("fp64", "fp32", "mp")
#: numpy dtypes accepted for ``arithmetic``; float16 is not: numpy sums and matmuls of float16
#: accumulate in float32, so they would not round in float16 at every step.
_ALIASES = {"float64": "fp64", "float32": "fp32"}
_F32 = np.float32


def _arithmetic(a):
    """``a`` as one of ARITHMETICS when it names one or is numpy.float64/float32 (else unchanged)."""
    if isinstance(a, str) and a in ARITHMETICS:
        return a
    return _ALIASES.get(dtype_name(a, strict=False), a)


FP32 = Float32Ops()


def make_boundaries(boundaries, lk: int) -> list[int]:
    """Block edges [0, ..., lk] from None (one block), a block size, or a list of cut points.

    Cut points may repeat (empty blocks are fine: their state is the identity).
    """
    if boundaries is None:
        return [0, lk]
    if isinstance(boundaries, numbers.Integral) and not isinstance(boundaries, bool):
        n = int(boundaries)
        if n <= 0:
            raise ValueError(f"boundaries as a block size must be >= 1, got {n}")
        return list(range(0, lk, n)) + [lk] if lk else [0, 0]
    try:
        if isinstance(boundaries, (str, bytes)):
            raise TypeError(f"boundaries must be None, an int block size or a sequence of ints, got {boundaries!r}")
        cuts = [int(x) for x in boundaries]
    except TypeError:
        raise TypeError(f"boundaries must be None, an int block size or a sequence of ints, got {boundaries!r}") from None
    if any(c < 0 or c > lk for c in cuts):
        raise ValueError(f"boundaries must lie in [0, Lk={lk}], got {cuts}")
    if any(b < a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"boundaries must be non-decreasing, got {cuts}")
    if not cuts or cuts[0] != 0:
        cuts = [0] + cuts
    if cuts[-1] != lk:
        cuts = cuts + [lk]
    return cuts


def _balanced(leaves):
    if len(leaves) == 1:
        return leaves[0]
    mid = len(leaves) // 2
    return (_balanced(leaves[:mid]), _balanced(leaves[mid:]))


def _random(leaves, rng):
    if len(leaves) == 1:
        return leaves[0]
    cut = int(rng.integers(1, len(leaves)))
    return (_random(leaves[:cut], rng), _random(leaves[cut:], rng))


def make_tree(tree, nblocks: int, *, seed=None):
    """A nested-tuple merge tree over block indices 0..nblocks-1.

    ``tree``: None or "left" (left fold), "right", "balanced", "random" (random leaf order and
    random binary shape, from ``seed``), or an explicit nested tuple using each index once.
    """
    leaves = list(range(nblocks))
    if nblocks == 0:
        return ()
    if tree is None or tree == "left":
        t = leaves[0]
        for i in leaves[1:]:
            t = (t, i)
        return t
    if tree == "right":
        t = leaves[-1]
        for i in reversed(leaves[:-1]):
            t = (i, t)
        return t
    if tree == "balanced":
        return _balanced(leaves)
    if tree == "random":
        rng = np.random.default_rng(seed)
        return _random([int(x) for x in rng.permutation(nblocks)], rng)
    if isinstance(tree, str):
        raise ValueError(f"tree must be 'left', 'right', 'balanced', 'random' or a nested tuple, got {tree!r}")
    seen = []

    def walk(t):
        if isinstance(t, numbers.Integral) and not isinstance(t, bool):
            seen.append(int(t))
        elif isinstance(t, (tuple, list)):
            for c in t:
                walk(c)
        else:
            raise TypeError(f"tree leaves must be block indices (int), got {t!r}")

    walk(tree)
    if sorted(seen) != leaves:
        raise ValueError(f"tree must use each block index 0..{nblocks - 1} exactly once, got leaves {seen}")
    return tree


def reduce_tree(tree, states, dim, ops):
    """Evaluate a merge tree: a leaf is states[i]; a node merges its children left to right."""
    if isinstance(tree, numbers.Integral) and not isinstance(tree, bool):
        return states[int(tree)]
    out = None
    for child in tree:
        st = reduce_tree(child, states, dim, ops)
        out = st if out is None else merge(out, st, ops)
    return identity(dim, ops) if out is None else out


def forward_tiled(q, k, v, *, boundaries=None, tree=None, seed=None, arithmetic="fp64", prec=128,
                  as_mpf=False, attn_mask=None, causal=False, alignment=None, window=None, scale=None,
                  softcap=None):
    """Attention by spec.merge over key blocks: (o, lse) as numpy float64 arrays.

    ``boundaries``: None, a block size, or cut points in [0, Lk] (irregular, repeats allowed).
    ``tree``: None/"left" (spec.fold), "right", "balanced", "random" (with ``seed``) or a nested
    tuple of block indices. ``arithmetic``: "fp64" (or numpy.float64), "fp32" (or numpy.float32:
    every step in float32; inputs and the scale are rounded to float32 first) or "mp" (mpmath at ``prec`` bits; ``as_mpf`` returns the
    raw mpf object arrays).
    """
    arithmetic = _arithmetic(arithmetic)
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"arithmetic must be one of {ARITHMETICS} (or numpy.float32/float64), got {arithmetic!r}")
    if arithmetic == "mp" and (isinstance(prec, bool) or not isinstance(prec, int) or prec < 2):
        raise ValueError(f"prec must be an int >= 2 (bits), got {prec!r}")
    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap)
    d = pb.dims
    edges = make_boundaries(boundaries, d.lk)
    blocks = list(zip(edges[:-1], edges[1:]))
    t = make_tree(tree, len(blocks), seed=seed)
    if arithmetic == "mp":
        return _tiled_mp(pb, blocks, t, tree is None, prec, as_mpf)
    ops, dt = (FP64, np.float64) if arithmetic == "fp64" else (FP32, _F32)
    o = np.zeros((d.batch, d.heads, d.lq, d.ev))
    lse = np.full((d.batch, d.heads, d.lq), -np.inf)
    step = row_chunk(d.lk)
    for b in range(d.batch):
        for h in range(d.heads):
            vv = pb.v[b, pb.kv(h)].astype(dt)
            for r0 in range(0, d.lq, step):
                r1 = min(d.lq, r0 + step)
                s, _, _ = logits_np(pb, b, h, r0, r1, 0, d.lk, dtype=dt)
                with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                    states = [block_state(s[:, a:c], vv[a:c], d.ev, ops) for a, c in blocks]
                    st = fold(states, d.ev, ops) if tree is None else reduce_tree(t, states, d.ev, ops)
                    ob, lb = finalize(st, ops)
                o[b, h, r0:r1] = ob
                lse[b, h, r0:r1] = lb
    return o, lse


def _tiled_mp(pb, blocks, t, left_fold, prec, as_mpf):
    d = pb.dims
    mq = MpPrepared(pb, prec)
    o = np.empty((d.batch, d.heads, d.lq, d.ev), dtype=object)
    lse = np.empty((d.batch, d.heads, d.lq), dtype=object)
    with mpmath.mp.workprec(prec):
        for b in range(d.batch):
            for h in range(d.heads):
                keep = pb.allowed(b, h)
                vv = mq.v[b][pb.kv(h)]
                for i in range(d.lq):
                    s = mq.row_logits(b, h, i, keep[i])
                    states = [block_state(s[a:c], vv[a:c], d.ev, MP) for a, c in blocks]
                    st = fold(states, d.ev, MP) if left_fold else reduce_tree(t, states, d.ev, MP)
                    oi, li = finalize(st, MP)
                    o[b, h, i, :] = oi
                    lse[b, h, i] = li
    if as_mpf:
        return o, lse
    return to_float_array(o), to_float_array(lse)

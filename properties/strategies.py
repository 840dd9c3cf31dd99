"""Hypothesis strategies for attention problems, in the style of ``hypothesis.extra.numpy``.

Every strategy takes keyword-only arguments that accept either a value or a strategy, and
checks its arguments when it is built (ValueError/TypeError naming the argument), never while
drawing. They draw the value objects of ``cases`` (Shape, Regime, MaskSpec, Problem); tensors
are built from a drawn Problem by ``inputs.build``, so a falsifying example shrinks over shapes
and regimes and its ``repr`` is a runnable reproducer.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import replace

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from flashproof import spec

from .cases import ATTN_MASK_KINDS, DEFAULT_DTYPES, DTYPES, REGIMES, VALUE_KINDS, MaskSpec, Problem, Regime, Shape
from .inputs import max_abs_logit

__all__ = [
    "SENTINELS", "HEAD_DIMS", "GQA_RATIOS", "KV_HEADS",
    "shapes", "lengths", "head_dims", "dtypes", "logit_regimes", "masks", "value_kinds",
    "tile_configs", "key_partitions", "split_counts", "problems",
]

#: Finite mask sentinels kernels use; logits are drawn on both sides of them.
SENTINELS = (-1e4, -5e4, -65504.0, -1e6, -1e30, "finfo.min")
#: Non-power-of-two head dims among them (bug class 18).
HEAD_DIMS = (8, 16, 24, 40, 64, 72, 80, 96)
GQA_RATIOS = (1, 2, 3, 4, 5, 6, 7, 8)
KV_HEADS = (1, 2, 3)
#: Names that lived here before the value objects and tensor building moved out: reproducer files
#: written before the split import them from this module (see __getattr__).
_MOVED = {"Shape": "cases", "Regime": "cases", "MaskSpec": "cases", "Problem": "cases", "Case": "cases",
          "REGIMES": "cases", "VALUE_KINDS": "cases", "Inputs": "inputs", "build": "inputs",
          "logits_exact": "inputs", "regime_report": "inputs", "check_regime": "inputs",
          "max_abs_logit": "inputs", "torch_dtype": "inputs", "Limits": "profiles"}


def __getattr__(name):
    if name in _MOVED:  # a reproducer file written before the split: keep it running
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------- argument helpers
def _strategy(x, name, check=None):
    """A value becomes st.just(value) after ``check``; a strategy passes through."""
    if isinstance(x, SearchStrategy):
        return x
    if check is not None:
        check(x, name)
    return st.just(x)


def _int_in(lo, hi):
    def check(x, name):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{name} must be an int (or a strategy), got {x!r}")
        if not lo <= x <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {x}")
    return check


def _one_of(options):
    def check(x, name):
        if x not in options:
            raise ValueError(f"{name} must be one of {tuple(options)}, got {x!r}")
    return check


def _positive_int(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{name} must be a positive int, got {x!r}")


# ----------------------------------------------------------------------------- shapes
def lengths(*, min_len=1, max_len=40, tile_sizes=()) -> SearchStrategy[int]:
    """Sequence lengths in [min_len, max_len], biased to every residue around the tile sizes:
    1, t - 1, t, t + 1, 2t - 1, 2t + 1 for each tile size t, and uniform otherwise."""
    _int_in(0, 1 << 20)(min_len, "min_len")
    _int_in(max(1, min_len), 1 << 20)(max_len, "max_len")
    ts = tuple(tile_sizes)
    for t in ts:
        _positive_int(t, "tile_sizes[]")
    special = sorted({x for t in ts for x in (t - 1, t, t + 1, 2 * t - 1, 2 * t + 1, t // 2 + 1)} | {1, 2})
    special = [x for x in special if min_len <= x <= max_len]
    plain = st.integers(min_len, max_len)
    return st.one_of(st.sampled_from(special), plain) if special else plain


def head_dims(*, allowed=HEAD_DIMS) -> SearchStrategy[int]:
    allowed = tuple(allowed)
    if not allowed:
        raise ValueError("head_dims: allowed is empty")
    for e in allowed:
        _positive_int(e, "allowed[]")
    return st.sampled_from(allowed)


def dtypes(*, allowed=DEFAULT_DTYPES) -> SearchStrategy[str]:
    allowed = tuple(spec.dtype_name(d, strict=False) for d in allowed)
    for d in allowed:
        _one_of(DTYPES)(d, "allowed[]")
    if not allowed:
        raise ValueError("dtypes: allowed is empty")
    return st.sampled_from(allowed)


@st.composite
def _shapes(draw, batch, kv_heads, gqa_ratio, lq, lk, e, ev, max_heads, equal_lengths):
    b = draw(batch)
    hkv = draw(kv_heads)
    ratio = draw(gqa_ratio)
    while hkv * ratio > max_heads and ratio > 1:
        ratio -= 1
    while hkv * ratio > max_heads and hkv > 1:
        hkv -= 1
    n_q = draw(lq)
    n_k = n_q if draw(equal_lengths) else draw(lk)
    ee = draw(e)
    evv = draw(ev) if ev is not None else ee
    return Shape(batch=b, heads=hkv * ratio, kv_heads=hkv, lq=n_q, lk=n_k, e=ee, ev=evv)


def shapes(*, batch=st.integers(1, 2), kv_heads=st.sampled_from(KV_HEADS), gqa_ratio=st.sampled_from(GQA_RATIOS),
           lq=None, lk=None, e=None, ev=None, max_len=40, tile_sizes=(), max_heads=8,
           equal_lengths=st.booleans()) -> SearchStrategy[Shape]:
    """(B, H, Hkv, Lq, Lk, E, Ev): GQA ratios 1..8 (3, 5, 6, 7 included), Hkv in {1, 2, 3},
    Lq != Lk, length 1, every residue modulo ``tile_sizes``, non-power-of-two head dims.

    ``ev=None`` means Ev = E; ``max_heads`` caps H = Hkv * ratio (the ratio shrinks first).
    """
    _int_in(1, 1 << 20)(max_len, "max_len")
    _int_in(1, 1024)(max_heads, "max_heads")
    lq = lengths(max_len=max_len, tile_sizes=tile_sizes) if lq is None else _strategy(lq, "lq", _int_in(0, 1 << 24))
    lk = lengths(max_len=max_len, tile_sizes=tile_sizes) if lk is None else _strategy(lk, "lk", _int_in(0, 1 << 24))
    e = head_dims() if e is None else _strategy(e, "e", _int_in(1, 4096))
    ev = None if ev is None else _strategy(ev, "ev", _int_in(1, 4096))
    return _shapes(_strategy(batch, "batch", _int_in(1, 4096)), _strategy(kv_heads, "kv_heads", _int_in(1, 1024)),
                   _strategy(gqa_ratio, "gqa_ratio", _int_in(1, 1024)), lq, lk, e, ev, max_heads,
                   _strategy(equal_lengths, "equal_lengths", _one_of((True, False))))


# ----------------------------------------------------------------------------- regimes
def _sentinel_value(s, dtype):
    if s == "finfo.min":
        return -spec.FORMATS[dtype].max
    return float(s)


@st.composite
def _regimes(draw, names, dtype, scale, accumulator):
    name = draw(names)
    dt = draw(dtype)
    sc = draw(scale)
    top = max_abs_logit(dt, sc, accumulator=accumulator)
    if name == "standard":
        return Regime("standard", 0.0, draw(st.sampled_from((1.0, 0.25, 3.0))))
    if name == "large":
        cands = [m for m in (30.0, 1e3, 1e5, 1e8, 1e15, 1e30) if m <= top / 64]
        return Regime("large", 0.0, draw(st.sampled_from(cands or [min(30.0, top / 64)])))
    if name == "very_negative":
        cands = [c for c in (-1e4, -3e4, -1e5, -1e6, -1e10, -1e20, -1e30) if -c <= top / 4]
        off = draw(st.sampled_from(cands or [-top / 8]))
        return Regime("very_negative", off, draw(st.sampled_from((1.0, 4.0, 0.1))))
    if name == "spread":
        cands = [w for w in (30.0, 1e3, 1e4, 1e6, 1e30) if w <= top / 4]
        return Regime("spread", 0.0, draw(st.sampled_from(cands or [top / 8])))
    if name == "ties":
        return Regime("ties", draw(st.sampled_from((0.0, -1e4))) if top >= 1e5 else 0.0,
                      draw(st.sampled_from((1.0, 10.0))))
    if name == "rising":
        off = draw(st.sampled_from((0.0, -1e4))) if top >= 1e5 else 0.0
        return Regime("rising", off, draw(st.sampled_from((8.0, 30.0, 1e3, 1e4))))
    # sentinel: logits on both sides of a finite mask sentinel
    cands = [_sentinel_value(s, dt) for s in SENTINELS]
    cands = [c for c in cands if -c <= top / 4]
    return Regime("sentinel", draw(st.sampled_from(cands or [-1e4])), 2.0 ** -6)


def logit_regimes(*, names=REGIMES, dtype="float16", scale=0.125, accumulator="fp32") -> SearchStrategy[Regime]:
    """Logit regimes reachable for ``dtype`` at ``scale``: standard; large magnitudes up to the
    dtype's limits; rows far below 0 (-1e4 .. -1e30 where representable); huge spreads; exact
    ties; logits rising across keys (a new running max at every tile); the ranges of common
    mask sentinels (-1e4, -5e4, -65504, -1e6, -1e30, finfo.min)."""
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, SearchStrategy):
        names = tuple(names)
        for n in names:
            _one_of(REGIMES)(n, "names[]")
        if not names:
            raise ValueError("logit_regimes: names is empty")
        names = st.sampled_from(names)
    _one_of(("fp32", "same"))(accumulator, "accumulator")

    def check_scale(x, name):
        if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (x > 0 and math.isfinite(x)):
            raise ValueError(f"{name} must be a positive finite real, got {x!r}")

    return _regimes(names, _strategy(dtype, "dtype", _one_of(DTYPES)), _strategy(scale, "scale", check_scale),
                    accumulator)


# ----------------------------------------------------------------------------- masks, values
@st.composite
def _masks(draw, alignments, window, attn_mask, lq, allow_empty, causal_only):
    causal = draw(st.sampled_from(tuple(alignments) if causal_only else (False,) + tuple(alignments)))
    win = None
    if window and draw(st.booleans()):
        side = st.sampled_from((-1, 0, 1, 2, 3, 7, 100))
        win = (draw(side), draw(side))
    am = draw(st.sampled_from(ATTN_MASK_KINDS)) if attn_mask else None
    density, empty, full = 1.0, 0, False
    if am is not None:
        density = draw(st.sampled_from((1.0, 0.7, 0.3)))
        n = draw(lq)
        empty = draw(st.integers(0, min(2, n))) if allow_empty else 0
        full = draw(st.booleans())
    return MaskSpec(causal=causal, window=win, attn_mask=am, density=density, empty_rows=empty, full=full)


def masks(*, alignments=("top_left",), window=False, attn_mask=False, lq=st.integers(1, 8),
          allow_empty=True, causal_only=False) -> SearchStrategy[MaskSpec]:
    """Masks a target declares: no mask, causal in each declared alignment, windows (including
    0 and unbounded sides), boolean and additive attn_mask with fully-masked rows. ``causal_only``:
    every mask is causal in one of ``alignments`` (the target declares no non-causal calls)."""
    for a in alignments:
        _one_of(spec.ALIGNMENTS)(a, "alignments[]")
    _one_of((True, False))(window, "window")
    _one_of((True, False))(attn_mask, "attn_mask")
    _one_of((True, False))(causal_only, "causal_only")
    if causal_only and not tuple(alignments):
        raise ValueError("masks: causal_only=True needs at least one alignment")
    return _masks(tuple(alignments), window, attn_mask, _strategy(lq, "lq", _int_in(0, 1 << 24)), allow_empty,
                  causal_only)


def value_kinds(*, allowed=VALUE_KINDS) -> SearchStrategy[str]:
    """V = normal, ones (every allowed row outputs 1), one-hot e_(j mod Ev) (reads the attended
    set), offset (100 + noise: cancellation in v - o), large (|v| ~ 1e3)."""
    allowed = tuple(allowed)
    for a in allowed:
        _one_of(VALUE_KINDS)(a, "allowed[]")
    if not allowed:
        raise ValueError("value_kinds: allowed is empty")
    return st.sampled_from(allowed)


# ----------------------------------------------------------------------------- tilings
def tile_configs(*, configs) -> SearchStrategy[tuple]:
    """One of the target's declared tile configs (as a sorted tuple of items), or None."""
    configs = tuple(configs)
    if not configs:
        return st.just(None)
    for c in configs:
        if not isinstance(c, dict):
            raise TypeError(f"configs[] must be dicts, got {type(c).__name__}")
    return st.sampled_from([tuple(sorted(c.items())) for c in configs])


@st.composite
def _partitions(draw, lk, max_parts):
    n = draw(lk)
    k = draw(st.integers(1, max_parts))
    cuts = sorted(draw(st.lists(st.integers(0, n), min_size=k - 1, max_size=k - 1)))
    tree = draw(st.sampled_from(("left", "right", "balanced", "random")))
    return (tuple(cuts), tree, draw(st.integers(0, 2 ** 16)))


def key_partitions(*, lk, max_parts=6) -> SearchStrategy[tuple]:
    """Irregular key-block boundaries (empty blocks allowed) and a merge tree for the tiled
    reference: (cuts, tree kind, tree seed)."""
    _int_in(1, 1 << 16)(max_parts, "max_parts")
    return _partitions(_strategy(lk, "lk", _int_in(0, 1 << 24)), max_parts)


def split_counts(*, split_range=(1, 16)) -> SearchStrategy[int]:
    lo, hi = split_range
    _int_in(1, 1 << 16)(lo, "split_range[0]")
    _int_in(lo, 1 << 16)(hi, "split_range[1]")
    return st.integers(lo, hi)


# ----------------------------------------------------------------------------- problems
@st.composite
def _problems(draw, shape, dtype, regime_names, mask, values, scale, softcap, accumulator, seed):
    shp = draw(shape)
    dt = draw(dtype)
    sc = draw(scale)
    scv = spec.resolve_scale(sc, shp.e)
    reg = draw(logit_regimes(names=regime_names, dtype=dt, scale=scv, accumulator=accumulator))
    msk = draw(mask(shp) if callable(mask) else mask)
    if msk.empty_rows > shp.lq:
        msk = replace(msk, empty_rows=shp.lq)
    return Problem(shape=shp, dtype=dt, regime=reg, mask=msk, values=draw(values), scale=sc,
                   softcap=draw(softcap), seed=draw(seed))


def problems(*, shape, dtype=st.sampled_from(DEFAULT_DTYPES), regimes=REGIMES, mask=st.just(MaskSpec()),
             values=st.just("normal"), scale=st.just(None), softcap=st.just(None), accumulator="fp32",
             seed=st.integers(0, 2 ** 31 - 1)) -> SearchStrategy[Problem]:
    """Whole problems. ``mask`` may be a function of the drawn Shape returning a strategy."""
    if not isinstance(shape, SearchStrategy):
        if not isinstance(shape, Shape):
            raise TypeError(f"shape must be a Shape or a strategy, got {type(shape).__name__}")
        shape = st.just(shape)
    if not (isinstance(mask, SearchStrategy) or callable(mask) or isinstance(mask, MaskSpec)):
        raise TypeError(f"mask must be a MaskSpec, a strategy or a function of the shape, got {type(mask).__name__}")
    if isinstance(mask, MaskSpec):
        mask = st.just(mask)
    if isinstance(regimes, str):
        regimes = (regimes,)

    def check_scale(x, name):
        if x is not None:
            spec.resolve_scale(x, 1)

    def check_cap(x, name):
        spec.normalize_softcap(x)

    return _problems(shape, _strategy(dtype, "dtype", _one_of(DTYPES)), regimes, mask,
                     _strategy(values, "values", _one_of(VALUE_KINDS)), _strategy(scale, "scale", check_scale),
                     _strategy(softcap, "softcap", check_cap), accumulator,
                     _strategy(seed, "seed", _int_in(0, 2 ** 63)))

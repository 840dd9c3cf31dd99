"""Hypothesis strategies for attention problems, in the style of ``hypothesis.extra.numpy``.

Every strategy takes keyword-only arguments that accept either a value or a strategy, and
checks its arguments when it is built (ValueError/TypeError naming the argument), never while
drawing.

A drawn :class:`Problem` is a small, printable description (shape, dtype, logit regime, mask,
values, scale, softcap, seed); :func:`build` turns it into tensors deterministically, so a
falsifying example shrinks over shapes and regimes and its ``repr`` is a runnable reproducer.
The logit regimes are built through q and k (an offset channel, a pattern channel and noise
channels) so the logits really reach the regime after rounding to the input dtype:
:func:`regime_report` measures them exactly and :func:`check_regime` verifies the claim.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from flashproof import spec

__all__ = [
    "Shape", "Regime", "MaskSpec", "Problem", "Case", "Inputs", "Limits", "LIMITS",
    "REGIMES", "VALUE_KINDS", "SENTINELS", "HEAD_DIMS", "GQA_RATIOS", "KV_HEADS",
    "shapes", "lengths", "head_dims", "dtypes", "logit_regimes", "masks", "value_kinds",
    "tile_configs", "key_partitions", "split_counts", "problems",
    "build", "logits_exact", "regime_report", "check_regime", "max_abs_logit", "torch_dtype",
]

REGIMES = ("standard", "large", "very_negative", "spread", "ties", "rising", "sentinel")
VALUE_KINDS = ("normal", "ones", "onehot", "offset", "large")
#: Finite mask sentinels kernels use; logits are drawn on both sides of them.
SENTINELS = (-1e4, -5e4, -65504.0, -1e6, -1e30, "finfo.min")
#: Non-power-of-two head dims among them (bug class 18).
HEAD_DIMS = (8, 16, 24, 40, 64, 72, 80, 96)
GQA_RATIOS = (1, 2, 3, 4, 5, 6, 7, 8)
KV_HEADS = (1, 2, 3)
#: dtypes drawn by default; float64 is known too (a target opts in by declaring it)
_DTYPES = ("float16", "bfloat16", "float32")
_ALL_DTYPES = _DTYPES + ("float64",)
_MANT = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38,
        "float64": 1.7976931348623157e308}
_TINY = {"float16": 2.0 ** -14, "bfloat16": 2.0 ** -126, "float32": 2.0 ** -126, "float64": 2.0 ** -1022}


# ----------------------------------------------------------------------------- printing
def _py(x) -> str:
    """A Python expression for x (non-finite floats included)."""
    if isinstance(x, float):
        if math.isnan(x):
            return "float('nan')"
        if math.isinf(x):
            return "float('inf')" if x > 0 else "-float('inf')"
        return repr(x)
    if isinstance(x, tuple):
        inner = ", ".join(_py(y) for y in x)
        return f"({inner},)" if len(x) == 1 else f"({inner})"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{_py(k)}: {_py(v)}" for k, v in x.items()) + "}"
    return repr(x)


class _Printable:
    def __repr__(self):
        args = ", ".join(f"{f.name}={_py(getattr(self, f.name))}" for f in fields(self)
                         if getattr(self, f.name) != f.default)
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------- descriptions
@dataclass(frozen=True, repr=False)
class Shape(_Printable):
    batch: int = 1
    heads: int = 1
    kv_heads: int = 1
    lq: int = 1
    lk: int = 1
    e: int = 16
    ev: int = 16

    def __post_init__(self):
        for f in fields(self):
            x = getattr(self, f.name)
            if isinstance(x, bool) or not isinstance(x, numbers.Integral):
                raise TypeError(f"Shape.{f.name} must be an int, got {x!r}")
        for name in ("batch", "heads", "kv_heads", "e", "ev"):
            if getattr(self, name) < 1:
                raise ValueError(f"Shape.{name} must be >= 1, got {getattr(self, name)}")
        if self.lq < 0 or self.lk < 0:
            raise ValueError(f"Shape lengths must be >= 0, got lq={self.lq}, lk={self.lk}")
        if self.heads % self.kv_heads:
            raise ValueError(f"Shape.heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")

    def describe(self) -> str:
        return (f"B={self.batch} H={self.heads} Hkv={self.kv_heads} Lq={self.lq} Lk={self.lk} "
                f"E={self.e} Ev={self.ev}")


@dataclass(frozen=True, repr=False)
class Regime(_Printable):
    """A logit regime. ``offset``: every logit of a row is shifted by it (channel 0);
    ``spread``: the regime's scale parameter (noise std, rise, width or magnitude);
    ``pattern``: how the spread is laid out over keys."""

    name: str = "standard"
    offset: float = 0.0
    spread: float = 1.0

    def __post_init__(self):
        if self.name not in REGIMES:
            raise ValueError(f"Regime.name must be one of {REGIMES}, got {self.name!r}")
        for f in ("offset", "spread"):
            x = getattr(self, f)
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
                raise ValueError(f"Regime.{f} must be a finite real, got {x!r}")
        if self.spread < 0:
            raise ValueError(f"Regime.spread must be >= 0, got {self.spread}")

    def describe(self) -> str:
        return f"{self.name}(offset={self.offset:g}, spread={self.spread:g})"


@dataclass(frozen=True, repr=False)
class MaskSpec(_Printable):
    """causal: False/"top_left"/"bottom_right"; window (left, right) or None; attn_mask None,
    "bool" or "additive" (finite biases and -inf), with ``density`` of allowed pairs and
    ``empty_rows`` rows that allow no key; ``full`` makes the mask (B, H, Lq, Lk) rather
    than a broadcast (Lq, Lk)."""

    causal: Any = False
    window: Any = None
    attn_mask: Any = None
    density: float = 1.0
    empty_rows: int = 0
    full: bool = False

    def __post_init__(self):
        if self.causal not in (False, "top_left", "bottom_right"):
            raise ValueError(f"MaskSpec.causal must be False, 'top_left' or 'bottom_right', got {self.causal!r}")
        if self.window is not None:
            spec.make_mask(window=self.window)  # validates (left, right)
        if self.attn_mask not in (None, "bool", "additive"):
            raise ValueError(f"MaskSpec.attn_mask must be None, 'bool' or 'additive', got {self.attn_mask!r}")
        if not (0.0 <= float(self.density) <= 1.0):
            raise ValueError(f"MaskSpec.density must be in [0, 1], got {self.density}")
        if self.empty_rows < 0:
            raise ValueError(f"MaskSpec.empty_rows must be >= 0, got {self.empty_rows}")
        if self.attn_mask is None and (self.empty_rows or self.density != 1.0):
            raise ValueError("MaskSpec.empty_rows/density need attn_mask='bool' or 'additive'")

    def describe(self) -> str:
        parts = [f"causal={self.causal}"]
        if self.window is not None:
            parts.append(f"window={tuple(self.window)}")
        if self.attn_mask:
            parts.append(f"attn_mask={self.attn_mask}(density={self.density:g}, empty_rows={self.empty_rows}, "
                         f"{'full' if self.full else 'broadcast'})")
        return " ".join(parts)


@dataclass(frozen=True, repr=False)
class Problem(_Printable):
    shape: Shape = Shape()
    dtype: str = "float16"
    regime: Regime = Regime()
    mask: MaskSpec = MaskSpec()
    values: str = "normal"
    scale: Any = None
    softcap: Any = None
    seed: int = 0

    def __post_init__(self):
        if self.dtype not in _ALL_DTYPES:
            raise ValueError(f"Problem.dtype must be one of {_ALL_DTYPES}, got {self.dtype!r}")
        if self.values not in VALUE_KINDS:
            raise ValueError(f"Problem.values must be one of {VALUE_KINDS}, got {self.values!r}")
        spec.resolve_scale(self.scale, self.shape.e)
        spec.normalize_softcap(self.softcap)
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"Problem.seed must be a non-negative int, got {self.seed!r}")

    @property
    def scale_value(self) -> float:
        return spec.resolve_scale(self.scale, self.shape.e)

    def describe(self) -> str:
        extra = ""
        if self.scale is not None:
            extra += f" scale={self.scale:g}"
        if self.softcap is not None:
            extra += f" softcap={self.softcap:g}"
        return (f"shape: {self.shape.describe()}, dtype {self.dtype}\n"
                f"regime: {self.regime.describe()}; values: {self.values}{extra}\n"
                f"mask: {self.mask.describe()}\nseed: {self.seed}")


@dataclass(frozen=True, repr=False)
class Case(_Printable):
    """One example of a property: the problem, the tile config, and property-specific extras
    (a tuple of (name, value) pairs, so a Case is hashable and prints as Python)."""

    problem: Problem = Problem()
    tile: Any = None
    extra: tuple = ()

    def __post_init__(self):
        if self.tile is not None and not isinstance(self.tile, tuple):
            object.__setattr__(self, "tile", tuple(sorted(dict(self.tile).items())))
        if isinstance(self.extra, dict):
            object.__setattr__(self, "extra", tuple(sorted(self.extra.items())))

    @property
    def tile_dict(self) -> dict:
        return dict(self.tile or ())

    def get(self, key, default=None):
        return dict(self.extra).get(key, default)

    def describe(self) -> str:
        out = self.problem.describe()
        out += f"\ntiling: {self.tile_dict or 'target default'}"
        if self.extra:
            out += "\nextra: " + ", ".join(f"{k}={_py(v)}" for k, v in self.extra)
        return out


@dataclass(frozen=True)
class Limits:
    """Shape limits of a profile (the interpreter is slow: ci keeps shapes small)."""

    max_len: int = 40
    max_batch: int = 2
    max_heads: int = 8
    head_dims: tuple = HEAD_DIMS
    max_splits: int = 16
    max_tiles_per_prop: int = 3
    #: judge at most this many (b, h, i, j) row-key pairs per problem, on a sample of query rows
    #: (the target still runs the whole problem); None: every row
    judge_pairs: int | None = None
    #: seconds after which a property draws no new example (its corners and at least one drawn
    #: example always run); None: max_examples decides alone
    property_seconds: float | None = None
    #: at most this many distinct tile configs of the target per run (a fixed spread of them:
    #: each config is a compile on a GPU); None: all
    tile_configs: int | None = None

    def __post_init__(self):
        for name in ("max_len", "max_batch", "max_heads", "max_splits", "max_tiles_per_prop"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ValueError(f"Limits.{name} must be a positive int, got {x!r}")
        for name in ("judge_pairs", "tile_configs"):
            x = getattr(self, name)
            if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
                raise ValueError(f"Limits.{name} must be None or a positive int, got {x!r}")
        x = self.property_seconds
        if x is not None and (isinstance(x, bool) or not isinstance(x, numbers.Real) or not x > 0):
            raise ValueError(f"Limits.property_seconds must be None or > 0, got {x!r}")


LIMITS = {
    "ci": Limits(max_len=40, max_batch=2, max_heads=8, head_dims=(8, 16, 24, 40, 64, 72, 80, 96)),
    "deep": Limits(max_len=96, max_batch=3, max_heads=12, head_dims=HEAD_DIMS + (128,)),
    # gpu: real lengths and grids; the judge evaluates <= 2^18 row-key pairs of each problem (row
    # sample) and each property stops drawing after 5 s, so the run fits ~4 min (benchmarks/suite_timing.py)
    "gpu": Limits(max_len=1024, max_batch=4, max_heads=8, head_dims=HEAD_DIMS + (128, 192, 256),
                  max_tiles_per_prop=4, judge_pairs=1 << 18, property_seconds=5.0, tile_configs=6),
}


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


def torch_dtype(name):
    import torch

    return getattr(torch, name)


def max_abs_logit(dtype: str, scale: float, *, accumulator="fp32") -> float:
    """The largest |logit| a q.k in ``dtype`` can reach while the accumulator cannot overflow."""
    elem = _MAX[dtype] / 4
    acc = 65504.0 if (accumulator == "same" and dtype == "float16") else 3.4e38
    unscaled = min(elem * elem, acc / 64)
    return unscaled * scale


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


def dtypes(*, allowed=_DTYPES) -> SearchStrategy[str]:
    allowed = tuple(str(d).replace("torch.", "") for d in allowed)
    for d in allowed:
        _one_of(_ALL_DTYPES)(d, "allowed[]")
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
        return -_MAX[dtype]
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

    return _regimes(names, _strategy(dtype, "dtype", _one_of(_ALL_DTYPES)), _strategy(scale, "scale", check_scale),
                    accumulator)


# ----------------------------------------------------------------------------- masks, values
@st.composite
def _masks(draw, alignments, window, attn_mask, lq, allow_empty):
    causal = draw(st.sampled_from((False,) + tuple(alignments)))
    win = None
    if window and draw(st.booleans()):
        side = st.sampled_from((-1, 0, 1, 2, 3, 7, 100))
        win = (draw(side), draw(side))
    am = draw(st.sampled_from((None, "bool", "additive"))) if attn_mask else None
    density, empty, full = 1.0, 0, False
    if am is not None:
        density = draw(st.sampled_from((1.0, 0.7, 0.3)))
        n = draw(lq)
        empty = draw(st.integers(0, min(2, n))) if allow_empty else 0
        full = draw(st.booleans())
    return MaskSpec(causal=causal, window=win, attn_mask=am, density=density, empty_rows=empty, full=full)


def masks(*, alignments=("top_left",), window=False, attn_mask=False, lq=st.integers(1, 8),
          allow_empty=True) -> SearchStrategy[MaskSpec]:
    """Masks a target declares: no mask, causal in each declared alignment, windows (including
    0 and unbounded sides), boolean and additive attn_mask with fully-masked rows."""
    for a in alignments:
        _one_of(spec.ALIGNMENTS)(a, "alignments[]")
    _one_of((True, False))(window, "window")
    _one_of((True, False))(attn_mask, "attn_mask")
    return _masks(tuple(alignments), window, attn_mask, _strategy(lq, "lq", _int_in(0, 1 << 24)), allow_empty)


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


def problems(*, shape, dtype=st.sampled_from(_DTYPES), regimes=REGIMES, mask=st.just(MaskSpec()),
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

    return _problems(shape, _strategy(dtype, "dtype", _one_of(_ALL_DTYPES)), regimes, mask,
                     _strategy(values, "values", _one_of(VALUE_KINDS)), _strategy(scale, "scale", check_scale),
                     _strategy(softcap, "softcap", check_cap), accumulator,
                     _strategy(seed, "seed", _int_in(0, 2 ** 63)))


# ----------------------------------------------------------------------------- building tensors
@dataclass
class Inputs:
    """Tensors of one problem, with spec's options; ``opts()`` feeds targets and references."""

    q: Any
    k: Any
    v: Any
    attn_mask: Any = None
    causal: Any = False
    alignment: Any = None
    window: Any = None
    scale: Any = None
    softcap: Any = None
    problem: Any = None
    meta: dict = field(default_factory=dict)

    def opts(self) -> dict:
        return dict(attn_mask=self.attn_mask, causal=self.causal, alignment=self.alignment,
                    window=self.window, scale=self.scale, softcap=self.softcap)

    def with_(self, **kw) -> "Inputs":
        return replace(self, **kw)

    @property
    def dtype_name(self) -> str:
        return str(self.q.dtype).replace("torch.", "")


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to ``dtype`` (through torch, round-to-nearest-even), returned as float64."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(torch_dtype(dtype)).to(torch.float64).numpy()


def _pow2_below(x: float) -> float:
    return 2.0 ** math.floor(math.log2(x)) if x > 0 else 1.0


def _qk(problem: Problem, rng: np.random.Generator):
    """q (B,H,Lq,E), k (B,Hkv,Lk,E) float64 arrays, exactly representable in the dtype."""
    sh, dt, reg = problem.shape, problem.dtype, problem.regime
    b, h, hkv, lq, lk, e = sh.batch, sh.heads, sh.kv_heads, sh.lq, sh.lk, sh.e
    sc = problem.scale_value
    emax = _MAX[dt] / 4
    q = rng.standard_normal((b, h, lq, e))
    k = rng.standard_normal((b, hkv, lk, e))
    name = reg.name
    if name == "standard" or (name == "ties"):
        t = reg.spread
        q *= t
    elif name == "large":
        # std of s = scale * a * b * sqrt(E): choose a = b
        ab = reg.spread / (sc * math.sqrt(e))
        a = min(math.sqrt(ab), emax / 8)
        q *= a
        k *= ab / a
    off_ch = 0 if e >= 1 else None
    pat_ch = 1 if e >= 2 else None
    noise_from = 2 if name in ("very_negative", "rising", "spread", "sentinel") else None
    if noise_from is not None:
        # Channels >= 2 carry noise of logit std ~`noise` (0 for relative layouts).
        noise = {"very_negative": reg.spread, "rising": 0.1, "spread": 0.5, "sentinel": 0.0}[name]
        if name == "very_negative" and abs(reg.offset) * 2.0 ** -18 > noise:
            noise = 0.0  # unresolvable next to the offset in fp32: lay the variation out relatively
        ne = max(e - 2, 0)
        if ne and noise > 0:
            c = math.sqrt(noise / (sc * math.sqrt(ne)))
            q[..., 2:] *= c
            k[..., 2:] *= c
        else:
            q[..., 2:] = 0.0
            k[..., 2:] = 0.0
        q[..., :2] = 0.0
        k[..., :2] = 0.0
    if name in ("very_negative", "rising", "ties", "sentinel") and reg.offset != 0.0 and e >= 1:
        # Channel 0: q_i0 * k_j0 * scale = offset, k_j0 = beta a power of two (exact products).
        target = abs(reg.offset) / sc
        beta = _pow2_below(min(math.sqrt(target), emax))
        alpha = target / beta
        if alpha > emax:
            beta = _pow2_below(min(target / emax * 2, emax))
            alpha = target / beta
        q[..., 0] = -alpha if reg.offset < 0 else alpha
        k[..., 0] = beta
    if pat_ch is not None and name in ("very_negative", "rising", "spread", "sentinel"):
        if name == "rising":
            # s_ij += r * j: k_j1 = j * delta (integers times a power of two), q_i1 = r / (scale delta).
            r = reg.spread / max(lk - 1, 1)
            delta = 2.0 ** max(-4, math.ceil(math.log2(max(r / (sc * emax / 2), 2.0 ** -30))))
            q[..., 1] = r / (sc * delta)
            k[..., 1] = np.arange(lk) * delta
        elif name == "spread":
            # s_ij = -W * w_j, w_j in [0, 1]: q_i1 = alpha, k_j1 = -beta * w_j.
            w = rng.random((b, hkv, lk))
            target = reg.spread / sc
            beta = _pow2_below(min(math.sqrt(target), emax))
            q[..., 1] = target / beta
            k[..., 1] = -beta * w
        elif name in ("very_negative", "sentinel"):
            rel = reg.spread if name == "sentinel" else (2.0 ** -6 if not (noise > 0 and e > 2) else 0.0)
            if rel > 0:
                # Relative layout: logits = offset * (1 + rel * u_j), u_j in [-1, 1], in channel 1.
                target = abs(reg.offset) * rel / sc
                beta = _pow2_below(min(math.sqrt(target), emax))
                q[..., 1] = target / beta
                sign = np.where(np.arange(lk) % 2 == 0, 1.0, -1.0)  # both sides of the offset, always
                k[..., 1] = beta * rng.uniform(0.05, 1, (b, hkv, lk)) * sign
    if name == "ties":
        groups = max(1, min(3, lk))
        idx = rng.integers(0, groups, lk)
        k = k[:, :, idx, :]
    return _round(q, dt), _round(k, dt)


def _values(problem: Problem, rng):
    sh, dt = problem.shape, problem.dtype
    shape = (sh.batch, sh.kv_heads, sh.lk, sh.ev)
    kind = problem.values
    if kind == "normal":
        v = rng.standard_normal(shape)
    elif kind == "ones":
        v = np.ones(shape)
    elif kind == "onehot":
        v = np.zeros(shape)
        for j in range(sh.lk):
            v[:, :, j, j % sh.ev] = 1.0
    elif kind == "offset":
        v = 100.0 + rng.standard_normal(shape)
    else:  # large
        v = rng.standard_normal(shape) * min(1e3, _MAX[dt] / 64)
    return _round(v, dt)


def _attn_mask(problem: Problem, rng, allowed_struct):
    """(B,H,Lq,Lk) or (Lq,Lk) mask; empty rows have no allowed key at all."""
    ms, sh = problem.mask, problem.shape
    full = (sh.batch, sh.heads, sh.lq, sh.lk)
    shp = full if ms.full else (sh.lq, sh.lk)
    keep = rng.random(shp) < ms.density
    if ms.empty_rows:
        rows = rng.choice(sh.lq, size=min(ms.empty_rows, sh.lq), replace=False) if sh.lq else []
        keep[..., rows, :] = False
    if ms.attn_mask == "bool":
        return keep
    bias = rng.standard_normal(shp) * 2.0
    return np.where(keep, bias, -np.inf)


def build(problem: Problem, *, device="cpu") -> Inputs:
    """The tensors of ``problem`` (deterministic in ``problem.seed``) on ``device``."""
    import torch

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    rng = np.random.default_rng(problem.seed)
    q, k = _qk(problem, rng)
    v = _values(problem, rng)
    dt = torch_dtype(problem.dtype)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dt).to(device)  # noqa: E731
    ms = problem.mask
    am = None
    if ms.attn_mask is not None:
        m = _attn_mask(problem, rng, None)
        am = torch.from_numpy(m).to(device) if m.dtype == np.bool_ else t(m)
    causal = ms.causal if ms.causal else False
    return Inputs(q=t(q), k=t(k), v=t(v), attn_mask=am, causal=causal, alignment=None, window=ms.window,
                  scale=problem.scale, softcap=problem.softcap, problem=problem)


# ----------------------------------------------------------------------------- regime checks
def logits_exact(inputs: Inputs):
    """(s (B,H,Lq,Lk) float64 scaled logits, allowed bool) of the built problem.

    q and k are exact in float64; the dot products are exact here whenever E * 2^-53 relative
    is below the regime claims checked with them (always, for the dims the suite draws).
    """
    import torch

    q = inputs.q.detach().to("cpu", torch.float64).numpy()
    k = inputs.k.detach().to("cpu", torch.float64).numpy()
    b, h, lq, e = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    kk = np.repeat(k, h // hkv, axis=1)
    s = spec.resolve_scale(inputs.scale, e) * np.einsum("bhie,bhje->bhij", q, kk)
    if inputs.softcap is not None and spec.normalize_softcap(inputs.softcap) is not None:
        c = float(inputs.softcap)
        s = c * np.tanh(s / c)  # softcap on the scaled logits, before any bias or mask (spec)
    mask = spec.make_mask(causal=inputs.causal, window=inputs.window, alignment=inputs.alignment)
    allowed = np.broadcast_to(mask.matrix(lq, lk), s.shape).copy()
    if inputs.attn_mask is not None:
        am = inputs.attn_mask.detach().cpu()
        if am.dtype == torch.bool:
            allowed &= np.broadcast_to(am.numpy(), s.shape)
        else:
            a = np.broadcast_to(am.to(torch.float64).numpy(), s.shape)
            allowed &= ~np.isneginf(a)
            s = s + np.where(np.isneginf(a), 0.0, a)
    return s, allowed


def regime_report(inputs: Inputs) -> dict:
    """What the built logits actually are: per-row max, min and spread over allowed keys."""
    s, allowed = logits_exact(inputs)
    with np.errstate(invalid="ignore"):
        smax = np.where(allowed, s, -np.inf).max(axis=-1, initial=-np.inf)
        smin = np.where(allowed, s, np.inf).min(axis=-1, initial=np.inf)
    rows = allowed.any(axis=-1)
    return {"max": smax, "min": smin, "rows": rows, "logits": s, "allowed": allowed}


def check_regime(inputs: Inputs) -> None:
    """Raise AssertionError unless the built logits are in the regime the problem claims."""
    p = inputs.problem
    reg = p.regime
    r = regime_report(inputs)
    rows = r["rows"]
    if not rows.any():
        return
    smax, smin, s, allowed = r["max"][rows], r["min"][rows], r["logits"], r["allowed"]
    name = reg.name
    if name in ("very_negative", "sentinel") and reg.offset != 0.0:
        c = reg.offset
        lo, hi = c * 1.05, c * 0.95  # offset < 0: [1.05 c, 0.95 c]
        noise = 8 * reg.spread + 1e-9 if name == "very_negative" else 0.0
        assert (smax <= hi + noise).all() and (smin >= lo - noise).all(), (
            f"{name}: logits [{smin.min():g}, {smax.max():g}] not around {c:g}")
        assert (smax < -1e3).all(), f"{name}: a row's max logit {smax.max():g} is not far below 0"
        if name == "sentinel" and p.shape.e >= 2 and p.shape.lk >= 2:
            # both sides of the sentinel occur somewhere
            vals = s[allowed]
            assert (vals < c).any() and (vals > c).any(), f"sentinel {c:g}: logits not on both sides"
    elif name == "large" and p.shape.e >= 2:
        top = np.abs(np.where(allowed, s, 0.0)).max()
        assert top >= reg.spread / 8, f"large: max |logit| {top:g} < spread/8 = {reg.spread / 8:g}"
    elif name == "spread" and p.shape.e >= 2 and p.shape.lk >= 8:
        width = (smax - smin).max()
        assert width >= reg.spread / 4, f"spread: widest row {width:g} < W/4 = {reg.spread / 4:g}"
    elif name == "rising" and p.shape.e >= 2 and p.shape.lk >= 2:
        # the full row (no mask) rises key by key: every tile has a new running max
        sr = s[..., :]
        step = np.diff(sr, axis=-1)
        expect = reg.spread / max(p.shape.lk - 1, 1)
        assert (step > expect * 0.5 - 0.5).mean() > 0.9, "rising: logits do not rise along the keys"
    elif name == "ties" and p.shape.lk >= 4:
        # some row has two allowed keys with exactly equal logits
        found = False
        for idx in np.ndindex(s.shape[:-1]):
            vals = s[idx][allowed[idx]]
            if len(vals) != len(set(vals.tolist())):
                found = True
                break
        assert found or not allowed.any(), "ties: no exact tie among allowed keys"

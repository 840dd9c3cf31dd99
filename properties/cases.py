"""The suite's value objects: a problem's printable description and one example of a property.

A :class:`Problem` is a small, printable description (shape, dtype, logit regime, mask, values,
scale, softcap, seed) that ``inputs.build`` turns into tensors deterministically; a :class:`Case`
adds the tile config and property-specific extras. Their ``repr`` is Python that rebuilds them,
so a falsifying example prints as a reproducer and :func:`case_from_repr` reads it back.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any

from flashproof import spec

__all__ = ["Shape", "Regime", "MaskSpec", "Problem", "Case", "case_from_repr", "REGIMES", "VALUE_KINDS", "DTYPES",
           "DEFAULT_DTYPES", "CAUSAL_MODES", "ATTN_MASK_KINDS"]

REGIMES = ("standard", "large", "very_negative", "spread", "ties", "rising", "sentinel")
VALUE_KINDS = ("normal", "ones", "onehot", "offset", "large")
#: Storage dtypes the suite knows how to test (spec's table); float64's bound is the proofs bound at
#: u = 2^-53 (proofs/bounds.py precision_for), its reference the arb one.
DTYPES = spec.STORAGE_DTYPES
#: What a Target declares, and what is drawn, when nothing says otherwise (float64 is opt-in: most
#: kernels do not take it).
DEFAULT_DTYPES = ("float16", "bfloat16", "float32")
#: A problem's (and a call's) causal mode: none, or spec's alignment of the diagonal.
CAUSAL_MODES = (False, *spec.ALIGNMENTS)
#: A problem's (and a call's) attn_mask: none, boolean, or additive (finite biases and -inf).
ATTN_MASK_KINDS = (None, "bool", "additive")


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
        if self.causal not in CAUSAL_MODES:
            raise ValueError(f"MaskSpec.causal must be False, 'top_left' or 'bottom_right', got {self.causal!r}")
        if self.window is not None:
            spec.make_mask(window=self.window)  # validates (left, right)
        if self.attn_mask not in ATTN_MASK_KINDS:
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
        if self.dtype not in DTYPES:
            raise ValueError(f"Problem.dtype must be one of {DTYPES}, got {self.dtype!r}")
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


def case_from_repr(text):
    """The Case a reproducer or journal printed (``repr(case)``), or None."""
    names = {c.__name__: c for c in (Case, Problem, Shape, MaskSpec, Regime)}
    try:
        case = eval(text, {"__builtins__": {"float": float}}, names)  # flashproof's own printed text
    except Exception:
        return None
    return case if isinstance(case, Case) else None

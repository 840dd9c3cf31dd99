"""What attention means: masks, scale, softcap, GQA mapping and shape rules.

The maths is in spec/README.md. Every other folder asks this module, never re-derives it.
Only numpy (and the standard library) is imported here.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TOP_LEFT",
    "BOTTOM_RIGHT",
    "ALIGNMENTS",
    "UNBOUNDED",
    "Mask",
    "make_mask",
    "allowed",
    "default_scale",
    "resolve_scale",
    "normalize_softcap",
    "apply_softcap",
    "kv_head",
    "Dims",
    "check_dims",
]

TOP_LEFT = "top_left"
BOTTOM_RIGHT = "bottom_right"
ALIGNMENTS = (TOP_LEFT, BOTTOM_RIGHT)
#: A window side of -1 means "no bound on this side".
UNBOUNDED = -1


@dataclass(frozen=True)
class Mask:
    """The structural mask: causal flag, diagonal alignment and sliding window.

    Key ``j`` is allowed for query ``i`` iff
    ``i + d - left <= j <= i + d + right`` (a side of -1 is unbounded), with the diagonal
    offset ``d = 0`` for top_left and ``d = lk - lq`` for bottom_right. ``causal`` caps
    ``right`` at 0. The allowed keys of a row always form one contiguous range.
    """

    causal: bool = False
    alignment: str = TOP_LEFT
    window: tuple[int, int] = (UNBOUNDED, UNBOUNDED)

    def __post_init__(self):
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {self.alignment!r}")
        left, right = self.window
        for name, w in (("window[0] (left)", left), ("window[1] (right)", right)):
            if isinstance(w, bool) or not isinstance(w, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(w).__name__}")
            if w < UNBOUNDED:
                raise ValueError(f"{name} must be >= 0, or -1 for unbounded; got {w}")

    @property
    def left(self) -> int:
        return int(self.window[0])

    @property
    def right(self) -> int:
        """Right bound after the causal cap; -1 means unbounded."""
        r = int(self.window[1])
        if self.causal:
            return 0 if r == UNBOUNDED else min(r, 0)
        return r

    @property
    def is_full(self) -> bool:
        """True when every key is allowed for every query, whatever the lengths."""
        return self.left == UNBOUNDED and self.right == UNBOUNDED

    def diagonal(self, lq: int, lk: int) -> int:
        return 0 if self.alignment == TOP_LEFT else lk - lq

    def key_range(self, i, lq: int, lk: int):
        """Half-open range ``[lo, hi)`` of allowed keys of row ``i`` (numpy broadcasting).

        Empty rows have ``lo >= hi``.
        """
        i = np.asarray(i, dtype=np.int64)
        d = self.diagonal(lq, lk)
        lo = np.zeros_like(i) if self.left == UNBOUNDED else np.maximum(i + d - self.left, 0)
        hi = np.full_like(i, lk) if self.right == UNBOUNDED else np.minimum(i + d + self.right + 1, lk)
        return lo, hi

    def allowed(self, i, j, lq: int, lk: int):
        """Whether key ``j`` may be attended by query ``i``; works on ints and int arrays."""
        lo, hi = self.key_range(i, lq, lk)
        j = np.asarray(j, dtype=np.int64)
        out = (j >= lo) & (j < hi) & (j >= 0) & (j < lk)
        return bool(out) if out.ndim == 0 else out

    def matrix(self, lq: int, lk: int) -> np.ndarray:
        """The (lq, lk) boolean matrix of allowed pairs."""
        return self.allowed(np.arange(lq)[:, None], np.arange(lk)[None, :], lq, lk)


def make_mask(*, causal=False, window=None, alignment=None) -> Mask:
    """Normalise the user-facing mask arguments into a :class:`Mask`.

    ``causal`` is False, True (= top_left, as torch's ``is_causal``), "top_left" or
    "bottom_right". ``window`` is None or ``(left, right)`` with each side >= 0 or -1.
    ``alignment`` sets the diagonal of a non-causal window; it defaults to top_left, or to
    the alignment that ``causal`` names. Contradictions raise ValueError.
    """
    if causal is None or causal is False:
        is_causal, align = False, None
    elif causal is True:
        is_causal, align = True, TOP_LEFT
    elif isinstance(causal, str):
        if causal not in ALIGNMENTS:
            raise ValueError(f"causal must be False, True, 'top_left' or 'bottom_right'; got {causal!r}")
        is_causal, align = True, causal
    else:
        raise TypeError(f"causal must be a bool or an alignment string, got {type(causal).__name__}")
    if alignment is not None:
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if isinstance(causal, str) and alignment != causal:
            raise ValueError(f"causal={causal!r} contradicts alignment={alignment!r}")
        align = alignment
    if window is None:
        window = (UNBOUNDED, UNBOUNDED)
    else:
        try:
            window = tuple(window)
        except TypeError:
            raise TypeError(f"window must be None or a (left, right) pair, got {window!r}") from None
        if len(window) != 2:
            raise ValueError(f"window must be a (left, right) pair, got {window!r}")
    return Mask(causal=is_causal, alignment=align or TOP_LEFT, window=window)


def allowed(i, j, lq: int, lk: int, *, causal=False, window=None, alignment=None):
    """Functional form of :meth:`Mask.allowed` with the user-facing arguments."""
    return make_mask(causal=causal, window=window, alignment=alignment).allowed(i, j, lq, lk)


def default_scale(e: int) -> float:
    """1/sqrt(E) with E the real (never padded) head dim. Exact-real users: 1/sqrt(e)."""
    if isinstance(e, bool) or not isinstance(e, numbers.Integral) or e <= 0:
        raise ValueError(f"head dim E must be a positive int, got {e!r}")
    return 1.0 / math.sqrt(e)


def resolve_scale(scale, e: int) -> float:
    """The scale to use: ``scale`` if given (any finite real; 0 gives uniform weights), else 1/sqrt(e)."""
    if scale is None:
        return default_scale(e)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def normalize_softcap(softcap):
    """None, 0 and +inf mean "no softcap"; otherwise a finite positive float."""
    if softcap is None:
        return None
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise TypeError(f"softcap must be a positive real or None, got {type(softcap).__name__}")
    if softcap == 0 or softcap == math.inf:
        return None
    if not (softcap > 0) or math.isnan(softcap):
        raise ValueError(f"softcap must be > 0 (or None/0/inf for none), got {softcap!r}")
    return float(softcap)


def apply_softcap(s, softcap, tanh=np.tanh):
    """s -> c * tanh(s / c) on scaled logits, before masking. ``tanh`` picks the number type."""
    c = normalize_softcap(softcap)
    return s if c is None else c * tanh(s / c)


def kv_head(h, num_heads: int, num_kv_heads: int):
    """The KV head read by query head ``h``: ``h // (num_heads / num_kv_heads)``."""
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(
            f"query heads ({num_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    return h // (num_heads // num_kv_heads)


@dataclass(frozen=True)
class Dims:
    batch: int
    heads: int
    kv_heads: int
    lq: int
    lk: int
    e: int
    ev: int


def check_dims(q_shape, k_shape, v_shape) -> Dims:
    """Validate (B, H, L, E) shapes of q, k, v and return the dims; raise ValueError naming the
    argument at fault."""
    for name, s in (("query", q_shape), ("key", k_shape), ("value", v_shape)):
        if len(s) != 4:
            raise ValueError(f"{name} must have rank 4 (B, H, L, E), got shape {tuple(s)}")
    b, h, lq, e = (int(x) for x in q_shape)
    bk, hk, lk, ek = (int(x) for x in k_shape)
    bv, hv, lv, ev = (int(x) for x in v_shape)
    if not (b == bk == bv):
        raise ValueError(f"batch sizes differ: query {b}, key {bk}, value {bv}")
    if hk != hv:
        raise ValueError(f"key and value head counts differ: key {hk}, value {hv}")
    if lk != lv:
        raise ValueError(f"key and value lengths differ: key {lk}, value {lv}")
    if e != ek:
        raise ValueError(f"query and key head dims differ: query {e}, key {ek}")
    if e <= 0 or ev <= 0:
        raise ValueError(f"head dims must be positive: E={e}, Ev={ev}")
    if hk <= 0 or h % hk:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hk})")
    if min(b, h, lq, lk) < 0:
        raise ValueError(f"negative size in shapes {q_shape}, {k_shape}, {v_shape}")
    return Dims(b, h, hk, lq, lk, e, ev)

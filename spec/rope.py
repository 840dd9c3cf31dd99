"""Rotary position embeddings (RoPE), written once for every number type.

A query or key ``x`` (head dim ``d``, even) at position ``p`` is rotated pair by pair:

    (x_a, x_b) -> (cos(p θ_i) x_a - sin(p θ_i) x_b,  sin(p θ_i) x_a + cos(p θ_i) x_b),
    θ_i = base^(-2i/d),  i = 0 .. d/2 - 1.

Two conventions pair the coordinates differently; both are supported and must be named:

* ``"interleaved"``: pairs (2i, 2i+1) -- RoFormer, GPT-J, Meta's LLaMA reference (complex form);
* ``"half"``: pairs (i, i + d/2) -- GPT-NeoX and Hugging Face's ``rotate_half``.

They differ by a fixed permutation of the coordinates, so a kernel and its reference must agree on
one. Re-encoding cached keys from positions n to n + Δ is the rotation by Δ (:func:`reposition_keys`),
since R(n + Δ) = R(Δ) R(n) (proofs/rope.py, theorem 5). Values are never rotated.

The arithmetic comes from a :class:`TrigOps` (cos, sin, and the number type of the frequencies):
:data:`NUMPY_TRIG` computes in float64 on arrays whose last axis is the head dim;
``TrigOps(mpmath.cos, mpmath.sin, mpmath.mpf)`` gives a high-precision reference on sequences of
mpmath numbers; proofs/ passes SymPy's. Only numpy is imported here.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import numpy as np

__all__ = [
    "INTERLEAVED",
    "HALF",
    "ROPE_STYLES",
    "DEFAULT_ROPE_BASE",
    "TrigOps",
    "NUMPY_TRIG",
    "rope_pairs",
    "rope_frequencies",
    "apply_rope",
    "reposition_keys",
]

INTERLEAVED = "interleaved"
HALF = "half"
ROPE_STYLES = (INTERLEAVED, HALF)
DEFAULT_ROPE_BASE = 10000.0


class TrigOps:
    """cos, sin and the number type for one kind of number (default: numpy float64, element-wise)."""

    def __init__(self, cos: Callable = np.cos, sin: Callable = np.sin, number: Callable = np.float64):
        self.cos, self.sin, self.number = cos, sin, number

    def frequency(self, i: int, dim: int, base) -> Any:
        """θ_i = base^(-2i/dim) in this number type."""
        return self.number(base) ** (-self.number(2 * i) / self.number(dim))


NUMPY_TRIG = TrigOps()


def rope_pairs(dim: int, style: str = HALF) -> list:
    """The coordinate pairs (a, b) rotated together, in frequency order i = 0 .. dim/2 - 1."""
    if style not in ROPE_STYLES:
        raise ValueError(f"style must be one of {ROPE_STYLES}, got {style!r}")
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 2 or dim % 2:
        raise ValueError(f"RoPE needs an even head dim >= 2, got {dim!r}")
    half = dim // 2
    return [(2 * i, 2 * i + 1) for i in range(half)] if style == INTERLEAVED else [(i, i + half) for i in range(half)]


def rope_frequencies(dim: int, base=DEFAULT_ROPE_BASE, ops: TrigOps = NUMPY_TRIG) -> list:
    """[θ_0, ..., θ_{dim/2-1}], θ_i = base^(-2i/dim)."""
    rope_pairs(dim)  # validates dim
    if isinstance(base, (int, float)) and not base > 1:
        raise ValueError(f"RoPE base must be > 1, got {base!r}")
    return [ops.frequency(i, dim, base) for i in range(dim // 2)]


def apply_rope(x, positions, *, style: str = HALF, base=DEFAULT_ROPE_BASE, thetas: Sequence | None = None,
               ops: TrigOps = NUMPY_TRIG):
    """Rotate ``x`` at ``positions``.

    ``x``: a numpy array whose last axis is the head dim (computed in float64; ``positions``
    broadcasts against ``x.shape[:-1]``, e.g. shape (L,) for x of shape (..., L, E)), or a sequence
    of head-dim components of any number type (``positions`` then one scalar). ``thetas`` overrides
    the frequencies (default :func:`rope_frequencies` of ``base``)."""
    arr = isinstance(x, np.ndarray)
    if arr:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 0:
            raise ValueError("apply_rope needs x with a head-dim axis")
        positions = np.asarray(positions, dtype=np.float64)
        if not np.all(np.isfinite(positions)):
            raise ValueError("RoPE positions must be finite")
        comps = [x[..., c] for c in range(x.shape[-1])]
    else:
        comps = list(x)
    dim = len(comps)
    pairs = rope_pairs(dim, style)
    thetas = rope_frequencies(dim, base, ops) if thetas is None else list(thetas)
    if len(thetas) != len(pairs):
        raise ValueError(f"{len(thetas)} frequencies for head dim {dim} (need {len(pairs)})")
    out = list(comps)
    for (a, b), th in zip(pairs, thetas):
        angle = positions * th  # one rounding in float64: fl(p * θ)
        c, s = ops.cos(angle), ops.sin(angle)
        out[a] = c * comps[a] - s * comps[b]
        out[b] = s * comps[a] + c * comps[b]
    return np.stack(out, axis=-1) if arr else out


def reposition_keys(k, delta, *, style: str = HALF, base=DEFAULT_ROPE_BASE, thetas: Sequence | None = None,
                    ops: TrigOps = NUMPY_TRIG):
    """Cached keys encoded at positions n, re-encoded at n + ``delta``: the rotation R(delta)."""
    return apply_rope(k, delta, style=style, base=base, thetas=thetas, ops=ops)

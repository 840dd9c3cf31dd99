"""A target's domain: the calls it declares it takes, and problems generated inside it.

:class:`Call` is one call as a domain declaration sees it (sizes, dtype, options; no tensors), built
from a drawn problem or from the tensors of an actual call, so one predicate (``Target.refusal``,
its ``accepts``) serves generation and calling. :class:`Domain` is the declaration as generation
needs it (which causal modes, which lengths: multiples, minima, maxima, equal lengths): the
strategies draw inside it, and :func:`conform` moves a constructed problem's lengths into it.
:func:`in_domain` is the filter for what only ``accepts`` knows. A call outside the domain is
never a violation (:class:`OutsideDomain`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flashproof import spec

from .cases import ATTN_MASK_KINDS, CAUSAL_MODES, Problem, Shape

__all__ = ["Call", "OutsideDomain", "DECLARE_HINT", "Domain", "conform", "in_domain"]

#: Appended to the message when a target raises on an input inside its declared domain.
DECLARE_HINT = ("if the target cannot run such inputs by design, declare the constraint in its Target "
                "(causal_only, equal_lengths, causal_equal_lengths, length_multiple, min_lq / min_lk / max_lq / "
                "max_lk, head_dims, value_dim, dtypes, gqa, attn_mask, or an `accepts(call)` predicate) and the "
                "suite will stay inside it; as declared, this input is in the target's domain, so raising on it "
                "is a violation")


class OutsideDomain(ValueError):
    """The suite asked a target for a call outside the domain its Target declares (never a
    violation: the property's example is discarded; see :meth:`Target.refusal`).

    ``by_fields``: the Target's declared fields exclude the call (the strategies draw inside
    them, so this is the suite's own mistake if every example meets it); False for a refusal by
    the ``accepts`` predicate or by the target's own wrapper (an adapter)."""

    def __init__(self, *args, by_fields=False):
        super().__init__(*args)
        self.by_fields = bool(by_fields)


@dataclass(frozen=True)
class Call:
    """One call as a target's domain declaration sees it: sizes, dtype and options, no tensors.

    ``causal`` is False, "top_left" or "bottom_right" (spec's alignment resolved); ``attn_mask``
    is None, "bool" or "additive"; ``grad``: the inputs require gradients (a backward follows).
    Built from a drawn problem (:meth:`of_problem`, at generation time) or from the tensors of
    the actual call (:meth:`of_tensors`, at call time), so one predicate serves both.
    """

    dtype: str
    batch: int = 1
    heads: int = 1
    kv_heads: int = 1
    lq: int = 1
    lk: int = 1
    e: int = 16
    ev: int = 16
    causal: Any = False
    window: Any = None
    attn_mask: Any = None
    softcap: Any = None
    scale: Any = None
    grad: bool = False

    def __post_init__(self):
        if self.causal not in CAUSAL_MODES:
            raise ValueError(f"Call.causal must be one of {CAUSAL_MODES}, got {self.causal!r}")
        if self.attn_mask not in ATTN_MASK_KINDS:
            raise ValueError(f"Call.attn_mask must be None, 'bool' or 'additive', got {self.attn_mask!r}")

    @classmethod
    def of_problem(cls, problem, *, grad=False) -> "Call":
        """The call a :class:`cases.Problem` describes."""
        sh, m = problem.shape, problem.mask
        return cls(dtype=problem.dtype, batch=sh.batch, heads=sh.heads, kv_heads=sh.kv_heads, lq=sh.lq, lk=sh.lk,
                   e=sh.e, ev=sh.ev, causal=m.causal or False, window=_window(m.window), attn_mask=m.attn_mask,
                   softcap=_cap(problem.softcap), scale=problem.scale, grad=bool(grad))

    @classmethod
    def of_tensors(cls, q, k, v, *, causal=False, alignment=None, window=None, attn_mask=None, softcap=None,
                   scale=None) -> "Call":
        """The call of these tensors with spec's options."""
        kind = None
        if attn_mask is not None:
            kind = "bool" if str(getattr(attn_mask, "dtype", "")).endswith("bool") else "additive"
        grad = any(bool(getattr(x, "requires_grad", False)) for x in (q, k, v))
        return cls(dtype=spec.dtype_name(q.dtype, strict=False), batch=int(q.shape[0]), heads=int(q.shape[1]),
                   kv_heads=int(k.shape[1]), lq=int(q.shape[2]), lk=int(k.shape[2]), e=int(q.shape[-1]),
                   ev=int(v.shape[-1]), causal=_alignment_of(causal, alignment), window=_window(window),
                   attn_mask=kind, softcap=_cap(softcap), scale=scale, grad=grad)


def _alignment_of(causal, alignment):
    if causal is False or causal is None:
        return False
    if causal is True:
        return alignment or "top_left"
    return causal if causal in spec.ALIGNMENTS else False


def _window(window):
    if window is None:
        return None
    try:
        w = tuple(int(x) for x in window)
    except (TypeError, ValueError):
        return tuple(window) if isinstance(window, (tuple, list)) else window  # the target judges it
    return None if w == (-1, -1) else w


def _cap(softcap):
    if softcap is None or softcap == 0 or softcap == math.inf:
        return None
    return float(softcap)


# ----------------------------------------------------------------------------- the domain
def _round_up(n, m):
    return -(-n // m) * m


@dataclass(frozen=True)
class Domain:
    """A target's declared lengths and causal modes, as the strategies need them.

    ``causal``: the causal values a call may have (False for non-causal, then the alignments);
    ``equal``: Lq == Lk on every call; ``causal_equal``: on causal calls; lengths are multiples
    of ``multiple`` within [min_q, max_q] and [min_k, max_k] (None: no maximum). A profile's
    length limit is a cost cap applied when drawing (:meth:`lengths`), never to a declared
    minimum or multiple: at a cap below ``multiple`` the suite still draws L = ``multiple``.
    """

    causal: tuple = (False, "top_left")
    equal: bool = False
    causal_equal: bool = False
    multiple: int = 1
    min_q: int = 0
    min_k: int = 0
    max_q: Any = None
    max_k: Any = None

    @classmethod
    def of(cls, target) -> "Domain":
        modes = tuple(target.alignments) if target.causal_only else (False,) + tuple(target.alignments)
        return cls(causal=modes, equal=target.equal_lengths, causal_equal=target.causal_equal_lengths,
                   multiple=target.length_multiple, min_q=target.min_lq, min_k=target.min_lk,
                   max_q=target.max_lq, max_k=target.max_lk)

    @property
    def default(self) -> bool:
        """No length declaration beyond minima of 0 or 1: lengths are drawn as they always were."""
        return (self.multiple == 1 and self.min_q <= 1 and self.min_k <= 1 and self.max_q is None
                and self.max_k is None and not self.equal)

    @property
    def causal_only(self) -> bool:
        return False not in self.causal

    def allows(self, causal) -> bool:
        return (causal or False) in self.causal

    def square(self, causal) -> bool:
        """Whether Lq == Lk is required for calls with this causal value."""
        return self.equal or (bool(causal) and self.causal_equal)

    def span(self, axis):
        """(shortest non-empty length, longest length or None) declared for axis "q" or "k"."""
        lo, hi = (self.min_q, self.max_q) if axis == "q" else (self.min_k, self.max_k)
        m = self.multiple
        return _round_up(max(lo, 1), m), (None if hi is None else hi // m * m)

    def span_of(self, causal, axis):
        """span() of ``axis`` for calls with this causal value (both axes' intersection when square)."""
        if not self.square(causal):
            return self.span(axis)
        (a, b), (c, d) = self.span("q"), self.span("k")
        his = [h for h in (b, d) if h is not None]
        return max(a, c), (min(his) if his else None)

    def bounds(self, axis, cap, causal=False):
        """(lo, hi) of the lengths drawn for ``axis`` under a cost cap: hi = min(declared max, cap), but
        never below the shortest declared length (the declaration wins over the cost cap)."""
        lo, hi = self.span_of(causal, axis)
        top = cap if hi is None else min(hi, cap)
        top = top // self.multiple * self.multiple
        return lo, max(lo, top)

    def fit(self, n, axis, causal=False) -> int:
        """``n`` moved into the declared lengths of ``axis``: rounded up to the multiple, raised to
        the minimum, lowered to the maximum (an empty sequence stays empty where the minimum is 0)."""
        lo, hi = self.span_of(causal, axis)
        floor = self.min_q if axis == "q" else self.min_k
        if self.square(causal):
            floor = max(self.min_q, self.min_k)
        if n <= 0 and floor == 0:
            return 0
        n = max(_round_up(max(n, floor, 1), self.multiple), lo)
        return n if hi is None else min(n, hi)

    def fit_equal(self, n) -> int:
        """``n`` moved into the lengths both axes take (a call with Lq == Lk = n)."""
        return Domain(causal=self.causal, equal=True, multiple=self.multiple, min_q=self.min_q, min_k=self.min_k,
                      max_q=self.max_q, max_k=self.max_k).fit(n, "q")

    def fit_pair(self, lq, lk, causal=False):
        """(Lq, Lk) moved into the domain for calls with this causal value (square from Lq when the
        declaration requires Lq == Lk)."""
        if self.square(causal):
            n = self.fit(lq, "q", causal)
            return n, n
        return self.fit(lq, "q", causal), self.fit(lk, "k", causal)

    def unequal(self, causal=False, *, longer=None) -> bool:
        """Whether calls with this causal value may have Lq != Lk (``longer``: "q" for Lq > Lk, "k"
        for Lk > Lq, None for either)."""
        if not self.allows(causal) or self.square(causal):
            return False
        (qa, qb), (ka, kb) = self.span("q"), self.span("k")
        q_gt = qb is None or qb > ka
        k_gt = kb is None or kb > qa
        return {"q": q_gt, "k": k_gt}.get(longer, q_gt or k_gt)

    def apart(self, lq, lk, causal=False, *, longer="q"):
        """(Lq, Lk) in the domain with the ``longer`` axis ("q" or "k") strictly longer, as close to the
        given lengths as the declaration allows (only where ``unequal(causal, longer=longer)``)."""
        if not self.unequal(causal, longer=longer):
            raise ValueError(f"the domain has no calls with causal={causal!r} and L{longer} longer")
        short = "k" if longer == "q" else "q"
        n = {"q": self.fit(lq, "q", causal), "k": self.fit(lk, "k", causal)}
        if n[longer] <= n[short]:
            up = self.fit(n[short] + 1, longer, causal)
            if up > n[short]:
                n[longer] = up
            else:  # the longer axis is at its maximum: shorten the other one below it
                lo = self.span(short)[0]
                down = (n[longer] - 1) // self.multiple * self.multiple
                if down >= lo:
                    n[short] = down
                else:
                    n[longer], n[short] = self.span(longer)[1], lo
        return n["q"], n["k"]

    def lengths(self, axis, *, cap, tile_sizes=(), causal=False):
        """A strategy of lengths for ``axis`` inside the domain, up to the cost cap: every residue
        around the tile sizes when the multiple is 1 (strategies.lengths), else L = k * multiple."""
        from hypothesis import strategies as st

        from .strategies import lengths

        lo, hi = self.bounds(axis, cap, causal)
        m = self.multiple
        if m == 1:
            return lengths(min_len=lo, max_len=hi, tile_sizes=tile_sizes)
        return st.integers(lo // m, hi // m).map(lambda k: k * m)


# ----------------------------------------------------------------------------- problems
def conform(target, problem: Problem) -> Problem:
    """``problem`` with its lengths moved into the target's declared domain (Domain.fit_pair: the
    length multiple, minima, maxima, and Lq == Lk where declared for its causal mode). Its mask is
    left as it is: a property whose construction needs a causal mode the target does not declare
    draws another one, or is not applicable."""
    sh = problem.shape
    lq, lk = Domain.of(target).fit_pair(sh.lq, sh.lk, problem.mask.causal)
    if (lq, lk) == (sh.lq, sh.lk):
        return problem
    return Problem(**{**problem.__dict__, "shape": Shape(**{**sh.__dict__, "lq": lq, "lk": lk})})


def in_domain(target, problem: Problem) -> bool:
    """Whether the target's declaration (its fields and its ``accepts`` predicate) takes ``problem``."""
    return target.refusal(Call.of_problem(problem)) is None

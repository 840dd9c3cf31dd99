"""A target's domain: the calls it declares it takes, and problems moved or filtered into it.

:class:`Call` is one call as a domain declaration sees it (sizes, dtype, options; no tensors), built
from a drawn problem or from the tensors of an actual call, so one predicate (``Target.refusal``,
its ``accepts``) serves generation and calling. :func:`conform` moves a problem into the domain
where a length change does it; :func:`in_domain` is the filter for the rest. A call outside the
domain is never a violation (:class:`OutsideDomain`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from flashproof import spec

from .cases import Problem, Shape

__all__ = ["Call", "OutsideDomain", "DECLARE_HINT", "conform", "in_domain"]

#: Appended to the message when a target raises on an input inside its declared domain.
DECLARE_HINT = ("if the target cannot run such inputs by design, declare the constraint in its Target "
                "(causal_equal_lengths, min_lq / min_lk, head_dims, value_dim, dtypes, gqa, attn_mask, or an "
                "`accepts(call)` predicate) and the suite will stay inside it; as declared, this input is in "
                "the target's domain, so raising on it is a violation")


class OutsideDomain(ValueError):
    """The suite asked a target for a call outside the domain its Target declares (never a
    violation: the property's example is discarded; see :meth:`Target.refusal`)."""


_CAUSAL = (False, "top_left", "bottom_right")


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
        if self.causal not in _CAUSAL:
            raise ValueError(f"Call.causal must be one of {_CAUSAL}, got {self.causal!r}")
        if self.attn_mask not in (None, "bool", "additive"):
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


# ----------------------------------------------------------------------------- problems
def conform(target, problem: Problem) -> Problem:
    """``problem`` moved into the target's declared domain where that is a simple change of its
    lengths (generation is constrained rather than filtered): lengths raised to min_lq / min_lk,
    and causal problems made square (Lk = Lq) for a target that declares causal_equal_lengths."""
    sh = problem.shape
    lq, lk = max(sh.lq, target.min_lq), max(sh.lk, target.min_lk)
    if problem.mask.causal and target.causal_equal_lengths and lq != lk:
        lq = lk = max(lq, target.min_lq, target.min_lk)
    if (lq, lk) == (sh.lq, sh.lk):
        return problem
    return Problem(**{**problem.__dict__, "shape": Shape(**{**sh.__dict__, "lq": lq, "lk": lk})})


def in_domain(target, problem: Problem) -> bool:
    """Whether the target's declaration (its fields and its ``accepts`` predicate) takes ``problem``."""
    return target.refusal(Call.of_problem(problem)) is None

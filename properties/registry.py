"""The property registry: what a property is, the registry itself, pinned counterexamples, and the
errors a check raises.

A property is a check ``check(ctx, case)`` (raises :class:`oracle.Violation`), a strategy of
:class:`cases.Case` built from the target's declared capabilities, deterministic corner cases run
first as explicit examples, and the capability it needs. Property modules register through
``gen.prop`` (which keeps every check inside the target's declared domain), built on
:func:`register` here; suite.py runs them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .cases import Case
from .oracle import Violation

__all__ = ["Property", "PROPERTIES", "PINNED", "register", "pin", "pinned_cases", "Skip", "skip", "NotApplicable",
           "not_applicable", "TargetError", "TargetTimeout", "CouldNotRun"]


class TargetError(Violation):
    """The target raised on a valid input (a violation: the input is in its declared domain)."""


class TargetTimeout(Violation):
    """An example did not finish within the per-example time limit (a hang is the target's fault)."""


class Skip(Exception):
    """Raised by a strategy or check when the property cannot apply (the reason is reported)."""


def skip(reason):
    raise Skip(reason)


class NotApplicable(Exception):
    """Raised by a strategy when the property needs calls outside the target's declared domain
    (reported "not applicable: <reason>": never an error, never a pass)."""


def not_applicable(reason):
    raise NotApplicable(reason)


class CouldNotRun(RuntimeError):
    """replay() could not run the example here: the target does not load, its device is absent, a
    package is missing, or the case lies outside the target's declared domain (reproducer files
    exit 2 on it). Neither a pass nor a violation; the message says why."""


@dataclass(frozen=True)
class Property:
    name: str
    asserts: str
    classes: tuple
    check: Callable
    strategy: Callable
    corners: Callable | None = None
    needs: Callable | None = None
    bound: str = ""
    calls_target: bool = True
    #: multiplier on the profile's max_examples (expensive properties generate fewer)
    examples: float = 1.0

    def reason_not_declared(self, target):
        return self.needs(target) if self.needs is not None else None


PROPERTIES: dict = {}
#: Counterexamples found against real targets, pinned as explicit examples: name -> [(Case, found)].
PINNED: dict = {}


def register(name, *, asserts, classes=(), strategy, corners=None, needs=None, bound="", calls_target=True,
             examples=1.0):
    """Register ``check`` as property ``name`` (decorator)."""
    def deco(check):
        if name in PROPERTIES:
            raise ValueError(f"property {name!r} registered twice")
        PROPERTIES[name] = Property(name, asserts, tuple(classes), check, strategy, corners, needs, bound,
                                    calls_target, examples)
        return check
    return deco


def pin(name, *cases, found=""):
    """Pin counterexamples (Cases) for property ``name``: they always run first (as explicit
    examples) on every target whose declared capabilities can express them."""
    PINNED.setdefault(name, []).extend((c, found) for c in cases)


def pinned_cases(name, target) -> list:
    """The pinned cases of property ``name`` that ``target`` can express, adapted to it."""
    out = []
    for c, _found in PINNED.get(name, []):
        c = _applicable(c, target)
        if c is not None:
            out.append(c)
    return out


def _applicable(case: Case, target):
    """The pinned case adapted to the target (undeclared tiles dropped), or None if it needs a
    capability the target does not declare."""
    p = case.problem
    m = p.mask
    if p.dtype not in target.dtypes:
        return None
    if m.causal and m.causal not in target.alignments:
        return None
    if (m.window is not None and not target.window) or (m.attn_mask and not target.attn_mask):
        return None
    if (p.softcap is not None and not target.softcap) or (p.shape.heads != p.shape.kv_heads and not target.gqa):
        return None
    if target.head_dims is not None and (p.shape.e not in target.head_dims or p.shape.ev not in target.head_dims):
        return None
    from .domain import in_domain

    if not in_domain(target, p):  # lengths, causal mode or accepts(): not this target's input
        return None
    tile = case.tile
    if tile is not None and dict(tile) not in [dict(c) for c in target.tile_configs]:
        tile = None
    if tile is not None:  # a declared config these dims rule out: the Case names the tile that runs
        from .inputs import torch_dtype
        if not target.tile_fits(tile, head_dim=p.shape.e, head_dim_v=p.shape.ev, dtype=torch_dtype(p.dtype)):
            tile = None
    return Case(problem=p, tile=tile, extra=case.extra)

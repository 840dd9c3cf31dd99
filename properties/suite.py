"""The property registry and the runner shared by pytest and ``flashproof check``.

A property is a check ``check(ctx, case)`` (raises :class:`oracle.Violation`), a strategy of
:class:`strategies.Case` built from the target's declared capabilities, deterministic corner
cases run first as explicit examples, and the capability it needs. :func:`run_suite` runs each
property the target's capabilities allow under a Hypothesis profile; the others are reported
"not declared", never silently passed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from . import oracle
from .oracle import Violation
from .strategies import Case, Limits
from .targets import Target, load_target

__all__ = [
    "Property", "PROPERTIES", "prop", "Context", "Outcome", "SuiteResult", "TargetError",
    "run_suite", "run_property", "replay", "reproducer", "PINNED", "pin",
    "PASSED", "FAILED", "SKIPPED", "NOT_DECLARED", "ERROR", "XFAIL", "XPASS",
]

PASSED, FAILED, SKIPPED, NOT_DECLARED, ERROR, XFAIL, XPASS = (
    "passed", "failed", "skipped", "not declared", "error", "xfail", "xpass")


class TargetError(Violation):
    """The target raised on a valid input (a violation: the input is in its declared domain)."""


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

    def reason_not_declared(self, target: Target):
        return self.needs(target) if self.needs is not None else None


PROPERTIES: dict = {}
#: Counterexamples found against real targets, pinned as explicit examples: name -> [Case].
PINNED: dict = {}


def prop(name, *, asserts, classes=(), strategy, corners=None, needs=None, bound="", calls_target=True,
         examples=1.0):
    """Register ``check`` as a property (decorator)."""
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


def _applicable(case: Case, target: Target):
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
    tile = case.tile
    if tile is not None and dict(tile) not in [dict(c) for c in target.tile_configs]:
        tile = None
    return Case(problem=p, tile=tile, extra=case.extra)


# ----------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a property check sees: the target, the profile's limits, and helpers."""

    target: Target
    limits: Limits
    profile: str
    device: str
    calls: int = 0

    def call(self, inp, *, tile=None, return_lse=None, **override):
        """Run the target on ``inp`` (spec's options, overridable); returns (o, lse or None).

        An exception from the target on a valid input is a violation (TargetError)."""
        t = self.target
        opts = inp.opts()
        opts.update(override)
        q, k, v = opts.pop("q", inp.q), opts.pop("k", inp.k), opts.pop("v", inp.v)
        want_lse = t.lse if return_lse is None else return_lse
        if tile and not self.tile_fits(tile, q, v):
            tile = None  # this config does not fit these dims (declared by the target): its default
        self.calls += 1
        try:
            o, lse = t(q, k, v, return_lse=want_lse, tile=tile, **opts)
        except Exception as exc:
            raise TargetError(f"target {t.name!r} raised {type(exc).__name__} on a valid input: {exc}") from exc
        b, h, lq = q.shape[0], q.shape[1], q.shape[2]
        ev = v.shape[-1]
        if not isinstance(o, type(q)):  # the contract: O is a tensor like the inputs
            raise Violation(f"O must be a torch.Tensor, got {type(o).__name__}")
        if tuple(o.shape) != (b, h, lq, ev):
            raise Violation(f"O has shape {tuple(o.shape)}, expected (B, H, Lq, Ev) = {(b, h, lq, ev)}")
        if o.dtype != q.dtype:
            raise Violation(f"O has dtype {o.dtype}, expected the input dtype {q.dtype}")
        if want_lse:
            if lse is None or tuple(lse.shape) != (b, h, lq):
                raise Violation(f"LSE has shape {None if lse is None else tuple(lse.shape)}, expected (B, H, Lq) = "
                                f"{(b, h, lq)}")
        return o, lse

    def tile_fits(self, tile, q, v) -> bool:
        acc = self.target.accepts_tile
        if acc is None or not tile:
            return True
        return bool(acc(dict(tile), head_dim=int(q.shape[-1]), head_dim_v=int(v.shape[-1]), dtype=q.dtype))

    def n_tiles(self, tile, lk):
        """Key tiles of a call (for the bound), or None when the target does not say."""
        bn = dict(tile or {}).get("block_n")
        return max(1, -(-lk // int(bn))) if bn else None

    def toward_zero(self, inp) -> bool:
        return inp.dtype_name in self.target.round_toward_zero

    def u_in(self, inp) -> float:
        return oracle.U_IN[inp.dtype_name] * (2 if self.toward_zero(inp) else 1)

    def bound(self, inp, *, tile=None):
        return oracle.bound(inp, accumulator=self.target.accumulator, c_exp=self.target.c_exp,
                            n_tiles=self.n_tiles(tile, inp.k.shape[2]), toward_zero=self.toward_zero(inp))

    def judge(self, inp, o, lse, *, tile=None, label="", fa=True, ex=None, bounds=None):
        """Assert O (and LSE) within the running bound of the exact values, and the FA criterion."""
        o_b, l_b = bounds if bounds is not None else self.bound(inp, tile=tile)
        if ex is None:
            ex = oracle.exact(inp, need_o=o_b, need_lse=l_b if lse is not None else None)
        src = oracle.bound_source()
        ctx = f" ({label})" if label else ""
        oracle.assert_within(f"O{ctx}", oracle.to_np(o), ex.o, o_b + ex.o_rad,
                             what=f"the running error bound [{src} bound, {ex.source} reference]")
        if lse is not None:
            lse_np = oracle.to_np(lse)
            lb = l_b + _lse_store(lse, ex.lse)
            oracle.assert_within(f"LSE{ctx}", lse_np, ex.lse, lb + ex.lse_rad,
                                 what=f"the running LSE bound [{src} bound, {ex.source} reference]",
                                 dims="(b, h, i)")
        if fa:
            nerr = oracle.naive_error(inp, ex)
            eps = oracle.fa_eps(inp, ex, u_acc=oracle.precision(inp.dtype_name, accumulator=self.target.accumulator).u_acc,
                                c_exp=self.target.c_exp or 4.0, n_tiles=self.n_tiles(tile, inp.k.shape[2]),
                                u_in=self.u_in(inp))
            oracle.assert_fa_criterion(f"O{ctx}", oracle.to_np(o), ex, nerr, eps)
        return ex, (o_b, l_b)

    def tiles(self):
        return list(self.target.tile_configs) or [None]


def _lse_store(lse, want):
    """Extra LSE error when the target stores LSE below fp32 (the bound assumes fp32)."""
    import numpy as np

    name = str(lse.dtype).replace("torch.", "")
    u = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}.get(name, 0.0)
    return u * np.where(np.isfinite(want), np.abs(want), 0.0) * 1.01


# ----------------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    name: str
    status: str
    examples: int = 0
    seconds: float = 0.0
    message: str = ""
    reproducer: str = ""
    case: Case | None = None

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, SKIPPED, NOT_DECLARED, XFAIL, XPASS)


@dataclass
class SuiteResult:
    target: str
    profile: str
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0
    bound_source: str = ""

    @property
    def failures(self):
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def errors(self):
        return [o for o in self.outcomes if o.status == ERROR]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors

    @property
    def exit_code(self) -> int:
        from flashproof.cli import EXIT_ERROR, EXIT_OK, EXIT_VIOLATION

        if self.failures:
            return EXIT_VIOLATION
        if self.errors:
            return EXIT_ERROR
        return EXIT_OK

    def __getitem__(self, name) -> Outcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def table(self) -> str:
        w = max([len("property")] + [len(o.name) for o in self.outcomes])
        lines = [f"{'property':<{w}}  {'outcome':<12}  {'examples':>8}  {'time':>8}",
                 f"{'-' * w}  {'-' * 12}  {'-' * 8}  {'-' * 8}"]
        for o in self.outcomes:
            lines.append(f"{o.name:<{w}}  {o.status:<12}  {o.examples:>8}  {o.seconds:>7.2f}s")
        counts = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        lines.append("")
        lines.append(f"target {self.target}, profile {self.profile}, bound: {self.bound_source}; "
                     + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {self.seconds:.1f}s")
        return "\n".join(lines)

    def details(self) -> str:
        out = []
        for o in self.outcomes:
            if o.status in (FAILED, ERROR, XFAIL):
                out.append(f"=== {o.name}: {o.status} ===\n{o.message}\n{o.reproducer}".rstrip())
            elif o.status in (NOT_DECLARED, SKIPPED, XPASS) and o.message:
                out.append(f"--- {o.name}: {o.status}: {o.message}")
        return "\n\n".join(out)


# ----------------------------------------------------------------------------- reproducers
def reproducer(name, case: Case, target: Target, profile: str) -> str:
    tgt = repr(target.spec) if target.spec else "None  # the Target object you ran (no module:attr known)"
    return (f"Falsifying example of {name!r} against {target.name} (profile {profile}):\n"
            + "\n".join("  " + line for line in case.describe().splitlines())
            + "\nRe-run it with:\n"
            f"  from flashproof.properties import replay\n"
            f"  from flashproof.properties.strategies import Case, MaskSpec, Problem, Regime, Shape\n"
            f"  replay({name!r}, {case!r},\n         target={tgt})\n")


def replay(name, case, *, target=None, profile="ci"):
    """Re-run one property on one Case; raises Violation (with the message) if it fails."""
    _load_properties()
    if name not in PROPERTIES:
        raise ValueError(f"unknown property {name!r}; known: {sorted(PROPERTIES)}")
    if not isinstance(case, Case):
        raise TypeError(f"case must be a strategies.Case, got {type(case).__name__}")
    t = load_target(target)
    ctx = _context(t, profile)
    PROPERTIES[name].check(ctx, case)
    return True


def _context(target, profile) -> Context:
    from .profiles import limits_for

    lim = limits_for(profile)
    if target.max_len is not None:
        lim = Limits(**{**lim.__dict__, "max_len": min(lim.max_len, target.max_len)})
    if target.head_dims is not None:
        hd = tuple(e for e in lim.head_dims if e in target.head_dims) or tuple(sorted(target.head_dims))[:4]
        lim = Limits(**{**lim.__dict__, "head_dims": hd})
    return Context(target=target, limits=lim, profile=profile, device=target.device())


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def _shrink_budget(seconds):
    """Cap Hypothesis's shrinking time (its engine reads this module constant per run)."""
    try:
        from hypothesis.internal.conjecture import engine
    except Exception:  # internal layout changed: keep Hypothesis's default
        yield
        return
    old = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if old is not None:
        engine.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        if old is not None:
            engine.MAX_SHRINKING_SECONDS = old


def run_property(p: Property, target: Target, *, profile="ci", ctx: Context | None = None) -> Outcome:
    from hypothesis import example, given, settings
    from hypothesis.errors import HypothesisException

    from .profiles import SHRINK_SECONDS, settings_for

    t0 = time.perf_counter()
    reason = p.reason_not_declared(target)
    if reason:
        return Outcome(p.name, NOT_DECLARED, message=reason)
    ctx = ctx or _context(target, profile)
    state = {"n": 0, "case": None}
    try:
        strategy = p.strategy(ctx)
        corners = list(p.corners(ctx)) if p.corners else []
    except _Skip as s:
        return Outcome(p.name, SKIPPED, message=str(s), seconds=time.perf_counter() - t0)
    for c, _found in PINNED.get(p.name, []):
        c = _applicable(c, target)
        if c is not None and c not in corners:
            corners.append(c)

    def test(case):
        state["n"] += 1
        state["case"] = case
        p.check(ctx, case)

    fn = given(strategy)(test)
    for c in reversed(corners):
        fn = example(c)(fn)
    base_settings = settings_for(profile)
    fn = settings(base_settings, max_examples=max(1, round(base_settings.max_examples * p.examples)))(fn)
    base = profile.replace("flashproof-", "")
    known = target.known_deviations.get(p.name)
    from hypothesis.reporting import with_reporter

    reports = []
    budget = SHRINK_SECONDS.get(base, 300)
    try:
        # Hypothesis's own reports (its shrink-deadline warning) are collected: ours say it all.
        with _shrink_budget(budget), with_reporter(reports.append):
            fn()
    except Violation as exc:
        status = XFAIL if known else FAILED
        msg = str(exc) + (f"\nKnown deviation of {target.name}: {known}" if known else "")
        if any("shrink" in r for r in reports):
            msg += f"\n(shrinking stopped at the {profile} profile's {budget} s budget: the example may not be minimal)"
        if isinstance(exc, TargetError) and exc.__cause__ is not None:
            msg += "\n" + "".join(traceback.format_exception_only(type(exc.__cause__), exc.__cause__)).rstrip()
        case = state["case"]
        return Outcome(p.name, status, state["n"], time.perf_counter() - t0, msg,
                       reproducer(p.name, case, target, profile) if case is not None else "", case)
    except _Skip as s:
        return Outcome(p.name, SKIPPED, state["n"], time.perf_counter() - t0, str(s))
    except (HypothesisException, Exception) as exc:
        tb = traceback.format_exc()
        case = state["case"]
        return Outcome(p.name, ERROR, state["n"], time.perf_counter() - t0,
                       f"flashproof could not run this property: {type(exc).__name__}: {exc}\n{tb}",
                       reproducer(p.name, case, target, profile) if case is not None else "", case)
    status = XPASS if known else PASSED
    return Outcome(p.name, status, state["n"], time.perf_counter() - t0,
                   f"known deviation not reproduced: {known}" if known else "")


class _Skip(Exception):
    """Raised by a strategy or check when the property cannot apply (the reason is reported)."""


def skip(reason):
    raise _Skip(reason)


def _load_properties():
    from . import props_forward, props_masks, props_decode, props_backward, pins  # noqa: F401  (register)


def select_properties(select=None):
    _load_properties()
    names = list(PROPERTIES)
    if select is None:
        return names
    if isinstance(select, str):
        select = [select]
    chosen = []
    for pat in select:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"select: {pat!r} matches no property; known: {names}")
        chosen += [n for n in hit if n not in chosen]
    return [n for n in names if n in chosen]


def run_suite(target, *, profile="ci", select=None, fail_fast=False, progress=None) -> SuiteResult:
    """Run every property the target's capabilities allow; returns per-property outcomes.

    ``target``: a Target, an SDPA callable, or a "module:attr" string. ``select``: property
    names or fnmatch patterns. ``fail_fast``: stop after the first failed property.
    ``progress``: optional callable(Outcome) called after each property.
    """
    from .profiles import register_profiles

    register_profiles()
    names = select_properties(select)
    t = load_target(target)
    t0 = time.perf_counter()
    res = SuiteResult(target=t.name, profile=profile, bound_source=oracle.bound_source())
    ctx = _context(t, profile)
    for n in names:
        out = run_property(PROPERTIES[n], t, profile=profile, ctx=ctx)
        res.outcomes.append(out)
        if progress is not None:
            progress(out)
        if fail_fast and out.status == FAILED:
            break
    res.seconds = time.perf_counter() - t0
    return res

"""Running the suite, shared by pytest and ``flashproof check``: one property (:func:`run_property`),
the whole suite (:func:`run_suite`), one falsifying example again (:func:`replay`), and the
selection of properties by name.

:func:`run_suite` runs each property the target's capabilities allow under a profile; the
others are reported "not declared", never silently passed. The pieces it drives live beside
it: registry.py (the properties), context.py (what a check sees), timeouts.py (the per-example
limit), state.py (database keys, reproducer files, the journal), outcomes.py (what is reported),
hypothesis_internals.py (the one place that reaches into Hypothesis).
"""
from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time
import traceback

from . import oracle
from .cases import Case
from .context import Context, make_context
from .hypothesis_internals import collecting_reports, set_database_key, shrink_budget, use_seed
from .oracle import Violation
from .outcomes import (ERROR, FAILED, NOT_APPLICABLE, NOT_DECLARED, NOT_RUN, PASSED, SKIPPED, TIMEOUT, XFAIL, XPASS,
                       Outcome, SuiteInterrupted, SuiteResult, reproducer)
from .profiles import DERANDOMIZED_SEED, get_profile, profile_name, register_profiles, settings_for
from .registry import (PROPERTIES, CouldNotRun, NotApplicable, Property, Skip, TargetError, TargetTimeout,
                       pinned_cases)
from .state import Journal, db_key, prepare_state_dir, run_key, save_reproducer
from .length_budget import apply_length_budget
from .loading import load_target
from .memory import track
from .targets import Target, TargetLoadError
from .timeouts import TimedOut, load_target_within, resolve_example_timeout, run_example, timeout_message

__all__ = ["run_property", "run_suite", "replay", "select_properties", "load_properties"]


def run_property(p: Property, target: Target, *, profile="ci", ctx: Context | None = None) -> Outcome:
    """Run one property; its options for time limit, database and reproducer files come from
    ``ctx`` (built with the profile's default time limit when not given)."""
    t0 = time.perf_counter()
    reason = p.reason_not_declared(target)
    if reason:
        return Outcome(p.name, NOT_DECLARED, message=reason)
    ctx = ctx or make_context(target, profile, example_timeout=resolve_example_timeout(None, profile))
    if ctx.hung:
        return Outcome(p.name, NOT_RUN, message=ctx.hung)
    # garbage and the allocator's cache released before and after: nothing one property leaves
    # counts against the next one's free memory (memory.track)
    with track(ctx.memory) as use:
        out = _run_property(p, target, profile, ctx, t0)
    if ctx.memory is not None:
        out.peak_bytes, out.retained_bytes = use.peak, use.retained
    return out


def _run_property(p, target, profile, ctx, t0):
    from hypothesis import example, given, settings
    from hypothesis.errors import HypothesisException, Unsatisfiable

    state = {"n": 0, "case": None, "slowest": 0.0, "file": ""}
    try:
        strategy = p.strategy(ctx)
        corners = list(p.corners(ctx)) if p.corners else []
    except Skip as s:
        return Outcome(p.name, SKIPPED, message=str(s), seconds=time.perf_counter() - t0)
    except NotApplicable as s:
        return Outcome(p.name, NOT_APPLICABLE, message=str(s), seconds=time.perf_counter() - t0)
    for c in pinned_cases(p.name, target):
        if c not in corners:
            corners.append(c)
    known = target.known_deviations.get(p.name)

    def test(case):
        state["n"] += 1
        state["case"] = case
        t = time.perf_counter()
        try:
            run_example(ctx, p.check, case, p.name)
        except Violation as exc:
            if not state["file"] and not known:  # on disk before shrinking starts: a kill keeps it
                state["file"] = _save(ctx, p.name, case, FAILED, str(exc), minimal=False)
            raise
        finally:
            state["slowest"] = max(state["slowest"], time.perf_counter() - t)

    fn = given(strategy)(test)
    for c in reversed(corners):
        fn = example(c)(fn)
    base_settings = settings_for(profile)
    db = {}
    if ctx.database is False:
        db = {"database": None}
    elif ctx.database:
        from hypothesis.database import DirectoryBasedExampleDatabase

        db = {"database": DirectoryBasedExampleDatabase(os.fspath(ctx.database))}
    fn = settings(base_settings, max_examples=max(1, round(base_settings.max_examples * p.examples)), **db)(fn)
    set_database_key(fn, db_key(p.name, target, profile))
    if base_settings.derandomize:
        use_seed(fn, DERANDOMIZED_SEED)
    reports = []
    budget = get_profile(profile).shrink_seconds

    def done(status, message="", *, reproduce=False):
        case = state["case"] if reproduce else None
        out = Outcome(p.name, status, state["n"], time.perf_counter() - t0, message,
                      reproducer(p.name, case, target, profile) if case is not None else "", case, state["slowest"])
        if case is not None and status in (FAILED, TIMEOUT):
            out.reproducer_file = _save(ctx, p.name, case, status, message, minimal=status == FAILED) or state["file"]
        return out

    try:
        # Hypothesis's own reports (its shrink-deadline warning) are collected: ours say it all.
        with shrink_budget(budget), collecting_reports(reports):
            fn()
    except TimedOut as exc:
        return done(TIMEOUT, timeout_message(p.name, exc.limit, exc), reproduce=True)
    except Violation as exc:
        status = XFAIL if known else FAILED
        msg = str(exc) + (f"\nKnown deviation of {target.name}: {known}" if known else "")
        if any("shrink" in r for r in reports):
            msg += (f"\n(shrinking stopped at the {profile_name(profile)} profile's {budget} s budget: the example may "
                    f"not be minimal)")
        if isinstance(exc, TargetError) and exc.__cause__ is not None:
            msg += "\n" + "".join(traceback.format_exception_only(type(exc.__cause__), exc.__cause__)).rstrip()
        return done(status, msg, reproduce=True)
    except Skip as s:
        return done(SKIPPED, str(s))
    except Unsatisfiable as exc:
        why = _outside_accepts(ctx, p.name)
        if why:
            return done(NOT_APPLICABLE, why)
        tb = traceback.format_exc()
        return done(ERROR, f"flashproof could not run this property (a suite bug: its strategy should draw inside the "
                           f"target's declared domain): {type(exc).__name__}: {exc}\n{tb}", reproduce=True)
    except (HypothesisException, Exception) as exc:
        tb = traceback.format_exc()
        return done(ERROR, f"flashproof could not run this property: {type(exc).__name__}: {exc}\n{tb}", reproduce=True)
    status = XPASS if known else PASSED
    return done(status, f"known deviation not reproduced: {known}" if known else "")


def _outside_accepts(ctx, name) -> str:
    """Why every example of ``name`` was discarded, when the target's ``accepts()`` predicate or its own
    wrapper refused them all (its declared fields never did: the strategies draw inside those); ""
    otherwise (then an Unsatisfiable is the suite's own bug)."""
    from .gen import refusals

    reasons, by_fields = refusals(ctx, name)
    if not reasons or by_fields:
        return ""
    top = max(reasons, key=reasons.get)
    n = sum(reasons.values())
    return (f"every example drawn was outside the target's declared domain, refused by its accepts() or its own "
            f"wrapper ({n} refusals; most often: {top}); if that is a length multiple, a causal-only or an "
            f"equal-length kernel, declare it in the Target (length_multiple, causal_only, equal_lengths, "
            f"min/max lengths) and the suite draws inside it")


def _save(ctx, name, case, status, message, *, minimal):
    """save_reproducer, but a full disk or a read-only folder never costs the run its verdict."""
    try:
        return save_reproducer(ctx, name, case, status=status, message=message, minimal=minimal)
    except OSError as exc:
        print(f"flashproof: could not write the reproducer of {name!r}: {exc}", file=sys.stderr)
        return ""


def replay(name, case, *, target=None, profile="ci", example_timeout=None):
    """Re-run one property on one Case: True when the property holds on it; Violation (with the
    message) when the violation is reproduced, TargetTimeout (a Violation) if it does not finish
    within ``example_timeout`` seconds (None: the profile's default, 0: no limit); CouldNotRun when
    it cannot run here (the target does not load, its device is absent, a package is missing, the
    property is not declared by the target, or the case is outside its declared domain), with the
    reason. A reproducer file exits 0, 1 and 2 on these."""
    from .gen import Undeclared

    load_properties()
    if name not in PROPERTIES:
        raise ValueError(f"unknown property {name!r}; known: {sorted(PROPERTIES)}")
    if not isinstance(case, Case):
        raise TypeError(f"case must be a cases.Case, got {type(case).__name__}")
    limit = resolve_example_timeout(example_timeout, profile)
    try:
        t = load_target(target)
        ctx = make_context(t, profile, example_timeout=limit)
    except (TargetLoadError, ImportError, RuntimeError) as exc:  # RuntimeError: its device is absent here
        raise CouldNotRun(f"{type(exc).__name__}: {exc}") from exc
    why = PROPERTIES[name].reason_not_declared(t)
    if why:
        raise CouldNotRun(f"{t.name} does not declare what {name!r} needs: {why}")
    try:
        run_example(ctx, PROPERTIES[name].check, case, name)
    except TimedOut as exc:
        raise TargetTimeout(timeout_message(name, limit, exc)) from None
    except Undeclared as exc:
        raise CouldNotRun(f"the case is outside {t.name}'s declared domain: {exc}") from None
    return True


def load_properties():
    """Import the property catalogues (each registers its properties) and the pins, once."""
    # the import order is the registry's order (the order properties run in): forward first
    from . import props_forward  # noqa: F401  (each module registers its properties)
    from . import props_invariance  # noqa: F401
    from . import props_precision  # noqa: F401
    from . import props_determinism  # noqa: F401
    from . import props_masks  # noqa: F401
    from . import props_nan  # noqa: F401
    from . import props_decode  # noqa: F401
    from . import props_backward  # noqa: F401
    from . import props_rope  # noqa: F401
    from . import pins  # noqa: F401


def select_properties(select=None):
    """Property names in registry order: all, or those matching ``select`` (names or fnmatch
    patterns); ValueError for a pattern that matches none."""
    load_properties()
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


def run_suite(target, *, profile="ci", select=None, fail_fast=False, progress=None, example_timeout=None,
              state_dir=None, db=None, resume=False, notify=None, max_len=None) -> SuiteResult:
    """Run every property the target's capabilities allow; returns per-property outcomes.

    ``target``: a Target, an SDPA callable, or a "module:attr" string. ``select``: property
    names or fnmatch patterns. ``fail_fast``: stop after the first failed (or timed-out) property.
    ``progress``: optional callable(Outcome) called after each property.
    ``example_timeout``: seconds one example may take (None: the profile's default, 0: no limit);
    past it the property is a TIMEOUT violation.
    ``state_dir``: a folder for the run's state (None: none): the Hypothesis database
    (``<state_dir>/hypothesis``, or ``db``), a reproducer file per failure (``reproducers/``,
    written as soon as the failure is known) and ``journal.jsonl`` (one line per finished property).
    ``db``: the Hypothesis database folder (None: ``<state_dir>/hypothesis``, or the profile's own
    setting without a state_dir; False: none). ``resume``: skip the properties a journal of the same
    target, profile and suite already finished, reporting their recorded outcomes (``resumed``).
    ``notify``: optional callable(str) for what the run says about its state files and its length.
    ``max_len``: the longest Lq/Lk drawn (an int pins it; None: the profile's, raised for a fast
    target at ci and deep by the length budget, length_budget.py).

    Ctrl-C raises SuiteInterrupted, whose ``result`` holds what finished.
    """
    register_profiles()
    limit = resolve_example_timeout(example_timeout, profile)
    if db is not None and db is not False and not isinstance(db, (str, os.PathLike)):
        raise TypeError(f"db must be a folder path, None or False, got {type(db).__name__}")
    if state_dir is not None and not isinstance(state_dir, (str, os.PathLike)):
        raise TypeError(f"state_dir must be a folder path or None, got {type(state_dir).__name__}")
    if resume and state_dir is None:
        raise ValueError("resume=True needs state_dir (the journal lives there)")
    names = select_properties(select)
    t = load_target_within(target, limit)
    t0 = time.perf_counter()
    res = SuiteResult(target=t.name, profile=profile_name(profile), bound_source=oracle.bound_source(),
                      nan_policy=t.nan_policy, empty_rows=t.empty_rows)
    journal, done = None, {}
    if state_dir is not None:
        state_dir = prepare_state_dir(state_dir)
        if db is None:
            db = os.path.join(state_dir, "hypothesis")
        journal = Journal(os.path.join(state_dir, "journal.jsonl"), run_key(t, profile))
        done, note = journal.start(resume=resume)
        if note:
            res.notes.append(note)
            if notify is not None:
                notify(note)
    ctx = make_context(t, profile, example_timeout=limit, database=db,
                       reproducer_dir=os.path.join(state_dir, "reproducers") if state_dir is not None else None)
    choice = apply_length_budget(ctx, max_len=max_len)
    res.length = choice
    res.device = ctx.memory.describe() if ctx.memory is not None else str(ctx.device)
    res.notes.append(choice.note())
    if notify is not None:
        notify(choice.note())
    try:
        for n in names:
            out = done.get(n)
            if out is None:
                out = run_property(PROPERTIES[n], t, profile=profile, ctx=ctx)
                if journal is not None and out.status != NOT_RUN:
                    journal.record(out)
            res.outcomes.append(out)
            if progress is not None:
                progress(out)
            if fail_fast and out.status in (FAILED, TIMEOUT):
                break
    except KeyboardInterrupt as exc:  # Ctrl-C (SIGTERM under flashproof check): report what finished
        finished = {o.name for o in res.outcomes}
        res.outcomes += [Outcome(n, NOT_RUN, message="the run was interrupted")
                         for n in names if n not in finished]
        res.interrupted = True
        res.signum = int(getattr(exc, "signum", signal.SIGINT))
        res.seconds = time.perf_counter() - t0
        res.abandoned = [th for _, th in ctx.abandoned]
        raise SuiteInterrupted(res, res.signum) from None
    res.seconds = time.perf_counter() - t0
    res.abandoned = [th for _, th in ctx.abandoned]
    return res

"""Every place the suite reaches past Hypothesis's public API, each with the reason the public API
does not serve. Nothing else in flashproof touches Hypothesis internals; if a Hypothesis release
moves one of them, this module is the one to mend.

- :func:`set_database_key`: Hypothesis keys its example database by the test function's source,
  and every property runs the same inner function (suite.run_property's closure), so without
  their own key all properties would replay each other's saved failures.
- :func:`use_seed`: the derandomized (ci) profile draws from a pinned seed. The public ``@seed``
  also sets ``database=None``, and ``--db`` must still replay saved failures.
- :func:`shrink_budget`: no setting caps how long Hypothesis shrinks one failure (its engine reads
  a module constant); a profile's ``shrink_seconds`` must.
- :func:`collecting_reports`: Hypothesis's own reports (its shrink-deadline warning) are collected
  so the outcome's message says it, instead of being printed in the middle of the run.
- :data:`Reject`: what ``hypothesis.reject()`` raises. The suite raises it (as gen.Undeclared) from
  the worker thread that runs an example, where ``reject()`` itself has no test context.
"""
from __future__ import annotations

import contextlib

from hypothesis.errors import UnsatisfiedAssumption as Reject

__all__ = ["Reject", "set_database_key", "use_seed", "shrink_budget", "collecting_reports"]


def set_database_key(fn, key: bytes):
    """Key ``fn``'s saved examples (a @given test) by ``key`` instead of its source."""
    fn._hypothesis_internal_database_key = key
    return fn


def use_seed(fn, seed: int):
    """What ``@seed(seed)`` does, without the ``database=None`` it adds."""
    fn._hypothesis_internal_use_seed = seed
    return fn


@contextlib.contextmanager
def shrink_budget(seconds):
    """Cap Hypothesis's shrinking time at ``seconds`` (its engine reads this module constant per run)."""
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


@contextlib.contextmanager
def collecting_reports(reports: list):
    """Hypothesis's report lines go to ``reports`` instead of being printed."""
    from hypothesis.reporting import with_reporter

    with with_reporter(reports.append):
        yield reports

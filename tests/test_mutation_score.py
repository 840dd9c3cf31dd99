"""The suite proves its own power: the ci profile kills every planted-bug kernel of the zoo
(tests/mutants/) and passes every correct peer.

* test_bugs_are_real: independently of the suite, each mutant deviates from
  flashproof.reference on its own trigger input, and the correct base does not;
* test_mutation_score[<mutant>]: run_suite(mutant, profile="ci", fail_fast=True) fails at least
  one property for every mutant, for the right reason: the correct base passes the killing
  example when it is replayed against it; one test per mutant (pytest-xdist spreads them), the
  score and the killer of each in the terminal summary (conftest.py), each also in its assertion;
* test_correct_peers_pass: the full ci suite passes the tiled base and torch SDPA math in
  fp32/fp64 (zero false alarms). flashproof's own kernel (the suite's default target, slow under
  the Triton interpreter) is the fourth correct peer; the full ci suite runs against it in
  tests/test_properties_suite.py::test_whole_ci_suite_against_the_default_target, so it is not
  run a second time here.

docs/mutants.md has the zoo's table (bug, class, trigger, killing property).
"""
from __future__ import annotations

import time
import warnings

import pytest

from mutants.base import TiledAttention
from mutants.registry import describe, mutant_targets, peer_targets
from mutants.triggers import bound_ratio, deviation
from mutants.zoo import LONG_MUTANTS, MUTANTS

try:
    from flashproof.properties import run_suite
except ImportError:
    try:  # before the package re-exports it
        from flashproof.properties.suite import run_suite
    except ImportError:  # the property suite has not landed yet
        run_suite = None

NEEDS_SUITE = pytest.mark.skipif(run_suite is None, reason="flashproof.properties.run_suite does not exist yet")


def test_zoo_covers_every_bug_class():
    """Classes 1-19 of BUG-CLASSES.md each have at least one mutant (20 is about the suite itself)."""
    covered = set()
    for cls in MUTANTS:
        for part in cls.bug_class.replace(" ", "/").split("/"):
            if part.isdigit():
                covered.add(int(part))
    assert len(MUTANTS) >= 24, f"only {len(MUTANTS)} mutants"
    assert covered >= set(range(1, 20)), f"bug classes without a mutant: {sorted(set(range(1, 20)) - covered)}"


@pytest.mark.parametrize("cls", [c for c in MUTANTS if c not in LONG_MUTANTS.values()], ids=lambda c: c.__name__)
def test_bugs_are_real(cls):
    """(The long-accumulation mutants break the derived bound by a few times, below the crude
    thresholds of triggers.TOL: test_long_mutants_need_long_inputs shows their bugs against the bound.)"""
    trig = cls().trigger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        base = deviation(TiledAttention(), trig)
        bad = deviation(cls(), trig)
    assert base is None, f"the correct base disagrees with the reference on {cls.__name__}'s trigger: {base}"
    assert bad is not None, f"{cls.__name__} ({describe(cls)}) agrees with the reference on its trigger"


@pytest.mark.parametrize("cls", list(LONG_MUTANTS.values()), ids=list(LONG_MUTANTS))
def test_long_mutants_need_long_inputs(cls):
    """Each long-accumulation mutant breaks the derived bound on its trigger at 4096 keys (128 tiles
    of 32) and stays within it on the same construction at 32 and 40 keys (1 and 2 tiles: the ci
    profile's base max_len 40), where the correct base is within it everywhere: only the length
    budget's longer levels reach them (zoo.LONG_MUTANTS). Measured: 6.5x (bf16 carry), 4.3x (fp16 carry), 14x (rescale) at 4096;
    <= 0.36x at 32 and 40."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        long_ = bound_ratio(cls(), cls().trigger(4096))
        short = {lk: bound_ratio(cls(), cls().trigger(lk)) for lk in (32, 40)}
        base = {lk: bound_ratio(TiledAttention(), cls().trigger(lk)) for lk in (32, 40, 4096)}
    assert long_ > 1, f"{cls.__name__} stays within the bound at 4096 keys: {long_:.3g} x the bound"
    assert max(short.values()) <= 1, f"{cls.__name__} breaks the bound on a short input: {short}"
    assert max(base.values()) <= 1, f"the correct base breaks the bound on {cls.__name__}'s trigger: {base}"


@NEEDS_SUITE
@pytest.mark.parametrize("cls", list(LONG_MUTANTS.values()), ids=list(LONG_MUTANTS))
def test_long_mutants_are_killed_by_the_length_budget(cls, monkeypatch):
    """The normal ci suite kills each long-accumulation mutant with an example of more than 2 tiles of keys:
    the length budget times the zoo's kernel and raises max_len from the profile's base 40 to 512. A mutant
    that computes bit for bit what the correct base does up to 40 keys (the carried ones: 64) passes the
    whole ci suite with max_len pinned at 40, so the budget is what kills it."""
    from flashproof.properties import profiles
    from flashproof.properties.outcomes import PASSED
    from mutants.registry import target_of

    monkeypatch.setitem(profiles.PROFILES, "ci", profiles.PROFILES["ci"].replace(shrink_seconds=0))
    base = profiles.PROFILES["ci"].limits.max_len
    if cls.same_as_base_up_to >= base:
        short = run_suite(target_of(cls()), profile="ci", max_len=base)
        assert _killer(short) is None and short.ok, (
            f"{cls.__name__} is killed at max_len {base} already: not a long-input mutant\n{short.table()}")
        assert PASSED in {o.status for o in short.outcomes}
    result = run_suite(target_of(cls()), profile="ci", fail_fast=True)
    killer = _killer(result)
    assert result.length.how == "budget" and result.length.max_len > base, result.length.note()
    assert killer is not None, (f"{cls.__name__} survives the ci suite: {result.table().splitlines()[-1]}; "
                                f"{result.length.note()}")
    assert killer.case.problem.shape.lk > 2 * cls.block_n, (killer.name, killer.case)


def _first_line(text, n=150):
    lines = (text or "").strip().splitlines()
    return lines[0][:n] if lines else ""


def _killer(result):
    """The Outcome of the first property the target violated, or None.

    Only a FAILED property (a spec/bound violation) kills; an ERROR (flashproof could not run the
    property) does not.
    """
    fails = result.failures
    return fails[0] if fails else None


def _base_also_fails(outcome, base_target):
    """Whether the correct base fails the killing example too (then the kill is a false alarm)."""
    from flashproof.properties import replay
    from flashproof.properties.oracle import Violation

    if outcome.case is None:
        return False
    try:
        replay(outcome.name, outcome.case, target=base_target, profile="ci")
    except Violation:
        return True
    return False


@pytest.fixture
def no_shrinking(monkeypatch):
    # A mutant is killed as soon as Hypothesis finds its first failing example; shrinking only
    # minimises the reproducer (up to 30 s per kill at ci), so it is switched off for the zoo to
    # keep the score inside its CI budget. Generation (what is tried) is unchanged.
    from flashproof.properties import profiles

    monkeypatch.setitem(profiles.PROFILES, "ci", profiles.PROFILES["ci"].replace(shrink_seconds=0))


@NEEDS_SUITE
@pytest.mark.parametrize("target", mutant_targets(), ids=lambda t: t.name.split(".", 1)[-1])
def test_mutation_score(target, request, no_shrinking):
    """One mutant of the score: the ci suite (fail_fast) kills it, for the right reason. Each mutant
    is its own test (pytest-xdist spreads them); conftest.py sums the score in the terminal summary."""
    t = time.monotonic()
    result = run_suite(target, profile="ci", fail_fast=True)
    killer = _killer(result)
    wrong = killer is not None and _base_also_fails(killer, peer_targets()[0])
    dt = time.monotonic() - t
    if killer is None or wrong:
        errs = "; ".join(f"{o.name} ERROR {_first_line(o.message, 80)}" for o in result.errors)
        why = (f"failed only {killer.name}, which the correct base fails on the same example"
               if wrong else target.description)
        line = f"  SURVIVED {target.name:34s} ({dt:5.1f}s)  {why}" + (f" [{errs}]" if errs else "")
    else:
        line = f"  killed   {target.name:34s} ({dt:5.1f}s)  by {killer.name}: {_first_line(killer.message)}"
    request.node.user_properties.append(("flashproof_mutant", {"killed": killer is not None and not wrong,
                                                                "line": line, "seconds": dt,
                                                                "max_len": result.length.max_len}))
    print("\n" + line)
    assert killer is not None and not wrong, line + "\n(survivor analysis: docs/mutants.md)"


@NEEDS_SUITE
@pytest.mark.parametrize("target", peer_targets(), ids=lambda t: t.name)
def test_correct_peers_pass(target, request):
    t0 = time.monotonic()
    result = run_suite(target, profile="ci", fail_fast=False)
    bad = result.failures + result.errors
    counts = {}
    for o in result.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    line = (f"peer {target.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
            + f" ({time.monotonic() - t0:.0f}s, {result.length.note().split(' (')[0]})")
    request.node.user_properties.append(("flashproof_peer", line))
    assert not bad, line + "; false alarms / errors:\n" + "\n\n".join(
        f"{o.name} {o.status}: {o.message}\n{o.reproducer}" for o in bad)

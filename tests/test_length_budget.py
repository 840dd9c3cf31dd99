"""The length budget (properties/length_budget.py): the rule, its determinism given the timing,
what clamps it, and where the chosen level shows (report, JSON, reproducer files).

Timing is made deterministic with a fake clock that the fake target itself advances by a cost
model, so every threshold of the rule is tested exactly, independently of this machine's load.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from flashproof.properties import length_budget as lb
from flashproof.properties.context import make_context
from flashproof.properties.profiles import PROFILES, Limits
from flashproof.properties.suite import run_suite
from flashproof.properties.targets import Target

F = torch.nn.functional
CI = PROFILES["ci"].limits


class Clock:
    """Seconds that pass only when the fake target says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def costed(clock, per_pair, *, overhead=0.0, **kw):
    """A correct SDPA target whose every call costs ``overhead + per_pair * Lq * Lk`` fake seconds."""
    def fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        clock.now += overhead + per_pair * q.shape[2] * k.shape[2]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    return Target(name=kw.pop("name", "costed"), sdpa=fn, attn_mask=True, gqa=True, **kw)


def _choose(target, *, profile="ci", clock=None, **kw):
    ctx = make_context(target, profile, example_timeout=30)
    return lb.choose_max_len(ctx, clock=clock, **kw)


# ----------------------------------------------------------------------------- the rule
def test_ladder_thresholds_are_exact():
    """t(L) = c L^2: the level taken is the largest whose prediction from the level below is within
    the budget (predictions are exact for a quadratic cost)."""
    budget = CI.call_seconds
    for level in (40, 128, 256, 512):
        # just within the budget at `level`, just over at the next one
        c = budget / level ** 2
        for scale, want in ((0.9999, level), (1.0001, {40: 40, 128: 40, 256: 128, 512: 256}[level])):
            chosen, timings, why = lb.ladder(lambda n: (c * scale * n * n, n), 40, CI.length_levels, budget)
            assert chosen == want, (level, scale, chosen, timings, why)
    chosen, timings, why = lb.ladder(lambda n: (1e-9, n), 40, (128, 256, 512), budget)
    assert (chosen, why) == (512, "the cap") and [n for n, _ in timings] == [40, 128, 256]  # 512 is never timed
    chosen, _, why = lb.ladder(lambda n: (None, "the probe raised"), 40, (128,), budget)
    assert chosen == 40 and "the probe raised" in why


def test_prediction_is_quadratic_and_conservative_for_overhead():
    assert lb.predicted(0.01, 40, 128) == pytest.approx(0.01 * (128 / 40) ** 2)
    # a call dominated by a fixed overhead: the prediction over-estimates (the rule errs short, never long)
    cost = lambda n: 0.05 + 1e-8 * n * n  # noqa: E731
    assert lb.predicted(cost(40), 40, 512) > cost(512)


@pytest.mark.parametrize("per_pair, overhead, want", [
    (1e-9, 0.0, 512),                       # torch SDPA-like
    (0.3 / 256 ** 2 * 0.9, 0.0, 256),       # 0.27 s at 256: 512 predicts 1.08 s
    (0.3 / 128 ** 2 * 0.9, 0.0, 128),
    (0.3 / 128 ** 2 * 1.1, 0.0, 40),
    (0.0, 0.2, 40),                          # an interpreter-like overhead per call: 0.2 s x 10.24 > 0.3
])
def test_choice_from_the_timing(per_pair, overhead, want):
    clock = Clock()
    # the probe is 1 x 4 heads: the fake's per-pair cost counts one head's Lq * Lk
    choice = _choose(costed(clock, per_pair, overhead=overhead), clock=clock)
    assert choice.max_len == want and choice.how == "budget", choice.note()
    assert choice.timings[0][0] == 40
    assert f"max_len {want} (length budget:" in choice.note()


def test_same_timing_same_level_same_examples(monkeypatch):
    """Deterministic given the timing: the same measured costs choose the same level, and the ci
    profile (derandomized) then draws the same examples."""
    import types

    runs = []
    for _ in range(2):
        clock = Clock()
        monkeypatch.setattr(lb, "time", types.SimpleNamespace(process_time=clock, perf_counter=clock))
        res = run_suite(costed(clock, 0.3 / 256 ** 2 * 0.9), profile="ci",
                        select=["output_within_error_bound", "kv_perm*"])
        runs.append(res)
    a, b = runs
    assert a.length == b.length and a.length.max_len == 256
    assert [(o.name, o.status, o.examples) for o in a.outcomes] == [(o.name, o.status, o.examples) for o in b.outcomes]


def test_the_cpu_clock_ignores_time_spent_waiting():
    """On the CPU the default clock is the process's CPU time: a call that sleeps (as a process
    descheduled by a busy machine would wait) costs nothing."""
    import time

    def sleepy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        time.sleep(0.2)
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)

    choice = _choose(Target(name="sleepy", sdpa=sleepy))
    assert choice.max_len == 512, choice.note()


# ----------------------------------------------------------------------------- what clamps and pins it
def test_declared_max_len_clamps_the_levels():
    clock = Clock()
    t = costed(clock, 1e-9, max_len=200)
    choice = _choose(t, clock=clock)
    assert choice.max_len == 128 and choice.levels == (128,), choice.note()
    ctx = make_context(t, "ci", example_timeout=30)
    lb.apply_length_budget(ctx, choice)
    assert ctx.limits.max_len == 128 and ctx.length is choice
    t.max_len = 100
    choice = _choose(t, clock=clock)
    assert choice.how == "profile" and choice.max_len == 40 and "declares max_len 100" in choice.note()


def test_pinned_and_profiles_without_levels():
    t = Target(name="torch", sdpa=F.scaled_dot_product_attention)
    choice = _choose(t, max_len=300)
    assert (choice.max_len, choice.how) == (300, "pinned") and "pinned" in choice.note()
    ctx = make_context(t, "ci")
    lb.apply_length_budget(ctx, max_len=300)
    assert ctx.limits.max_len == 300 and ctx.limits.length_levels == ()
    gpu = _choose(t, profile="gpu")
    assert (gpu.max_len, gpu.how) == (PROFILES["gpu"].limits.max_len, "profile")
    for bad in (0, -3, True, "512"):
        with pytest.raises(ValueError, match="max_len must be a positive int"):
            _choose(t, max_len=bad)


def test_limits_validate_the_budget():
    with pytest.raises(ValueError, match="length_levels"):
        Limits(max_len=40, length_levels=(40, 128), call_seconds=1.0)
    with pytest.raises(ValueError, match="length_levels"):
        Limits(max_len=40, length_levels=(256, 128), call_seconds=1.0)
    with pytest.raises(ValueError, match="needs call_seconds"):
        Limits(max_len=40, length_levels=(128,))
    with pytest.raises(ValueError, match="call_seconds"):
        Limits(max_len=40, length_levels=(128,), call_seconds=0)


def test_a_probe_outside_the_domain_or_raising_keeps_the_base():
    def refuses(call):
        return "only E = 8" if call.e != 8 else None

    t = Target(name="picky", sdpa=F.scaled_dot_product_attention, accepts=refuses)
    choice = _choose(t)
    assert choice.max_len == 40 and "outside the target's domain" in choice.stopped

    def raises(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        raise RuntimeError("kernel launch failed")

    choice = _choose(Target(name="raises", sdpa=raises))
    assert choice.max_len == 40 and "raised RuntimeError" in choice.stopped


def test_a_probe_that_hangs_leaves_the_verdict_to_the_properties():
    """The timing call's hang is not the run's: the first property calls the target again and
    reports the TIMEOUT (tests/test_suite_robustness.py runs the same through run_suite)."""
    import threading
    import time

    def hangs(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if threading.current_thread().name.startswith("flashproof-example:"):
            time.sleep(3)
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)

    ctx = make_context(Target(name="hangs", sdpa=hangs), "ci", example_timeout=0.5)
    choice = lb.choose_max_len(ctx)
    assert choice.max_len == 40 and "ran past the 0.5 s example limit" in choice.stopped
    assert not ctx.hung and ctx.abandoned == []


# ----------------------------------------------------------------------------- where the level shows
def test_the_level_shows_in_the_result_table_notes_and_reproducer_files(tmp_path):
    clock = Clock()

    def wrong(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        clock.now += 1e-9 * q.shape[2] * k.shape[2]
        return 1.01 * F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                                     enable_gqa=enable_gqa)

    notes = []
    res = run_suite(Target(name="wrong", sdpa=wrong, attn_mask=True, gqa=True, spec=f"{__name__}:nothing"),
                    profile="ci", select=["output_within_error_bound"], state_dir=tmp_path, notify=notes.append,
                    max_len=256)
    assert res.length.max_len == 256 and notes == [res.length.note()] and res.length.note() in res.notes
    assert "max_len 256 (pinned" in res.table()
    o = res.outcomes[0]
    assert o.status == "failed" and o.reproducer_file
    text = open(o.reproducer_file).read()
    assert "# drawn at max_len 256 (pinned" in text
    doc = json.load(open(os.path.splitext(o.reproducer_file)[0] + ".json"))
    assert doc["max_len"] == 256 and doc["length"]["how"] == "pinned"


def test_decide_once_shares_one_decision(tmp_path):
    from flashproof.properties.state import decide_once

    calls = []

    def decide():
        calls.append(1)
        return {"max_len": 512}

    path = os.fspath(tmp_path / "length-budget.json")
    assert decide_once(path, run="r1", key={"t": "x"}, decide=decide) == ({"max_len": 512}, True)
    assert decide_once(path, run="r1", key={"t": "x"}, decide=decide) == ({"max_len": 512}, False)
    assert len(calls) == 1
    assert decide_once(path, run="r2", key={"t": "x"}, decide=decide)[1]  # another session decides again
    assert decide_once(path, run="r2", key={"t": "y"}, decide=decide)[1]  # another target too
    assert len(calls) == 3

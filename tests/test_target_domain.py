"""The domain language (properties/targets.py, properties/domain.py): causal_only, equal_lengths,
causal_equal_lengths, length_multiple, min/max lengths, head dims. Each declaration is validated
(contradictions refused when the Target is built), the strategies draw inside the declared domain
(not by filtering), a property that needs calls outside it is "not applicable" with its reason,
never an ERROR, and a profile's length limit composes with the declaration (its maximum wins, its
multiple holds at any limit).

The fake targets are flashproof's tiled peer (correct, strict, batch invariant) declaring exactly
the combination under test.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashproof.properties import gen, profiles, run_suite
from flashproof.properties.cases import MaskSpec, Shape
from flashproof.properties.context import make_context
from flashproof.properties.domain import Call, Domain
from flashproof.properties.outcomes import ERROR, FAILED, NOT_APPLICABLE, PASSED
from flashproof.properties.peers import tiled_attention
from flashproof.properties.targets import Target


def _forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None, attn_mask=None,
             return_lse=False):
    # one tile per 64 rows / keys: the peer's Python loop stays short at the lengths the domains force
    return tiled_attention(q, k, v, causal=causal, alignment=alignment, window=window, scale=scale, softcap=softcap,
                           attn_mask=attn_mask, return_lse=return_lse, block_m=64, block_n=64)


FULL = dict(lse=True, alignments=("top_left", "bottom_right"), window=True, softcap=True, attn_mask=True, gqa=True,
            backward=True, dtypes=("float16", "bfloat16", "float32"))


def fake(name="domain_fake", **declared) -> Target:
    return Target(name=name, forward=_forward, **{**FULL, **declared})


# ============================================================================ validation
@pytest.mark.parametrize("kw, exc, words", [
    (dict(min_lq=10, max_lq=5), ValueError, "min_lq=10 > max_lq=5"),
    (dict(length_multiple=64, max_lk=40), ValueError, "length_multiple=64"),
    (dict(length_multiple=16, min_lq=17, max_lq=31), ValueError, "no Lq in [17, 31]"),
    (dict(equal_lengths=True, min_lq=100, max_lk=50), ValueError, "share no non-zero length"),
    (dict(causal_only=True, causal_equal_lengths=True, min_lk=64, max_lq=32), ValueError, "share no non-zero length"),
    (dict(causal_only=True, alignments=()), ValueError, "causal_only=True needs a causal alignment"),
    (dict(length_multiple=0), ValueError, "length_multiple must be an int >= 1"),
    (dict(length_multiple=True), ValueError, "length_multiple"),
    (dict(max_lq=0), ValueError, "max_lq must be an int >= 1 or None"),
    (dict(max_lk=2.5), ValueError, "max_lk"),
    (dict(equal_lengths="yes"), TypeError, "equal_lengths must be a bool"),
    (dict(causal_only=1), TypeError, "causal_only must be a bool"),
    (dict(batch_invariant=None), TypeError, "batch_invariant must be a bool"),
    (dict(nan_policy="lenient"), ValueError, "nan_policy must be one of ('strict', 'ieee')"),
    (dict(head_dims=()), ValueError, "head_dims must be positive ints"),
])
def test_contradictory_or_bad_declarations_are_refused_at_construction(kw, exc, words):
    with pytest.raises(exc) as info:
        fake(**kw)
    assert words in str(info.value), str(info.value)


def test_each_declaration_is_a_refusal_reason():
    t = fake(causal_only=True, alignments=("bottom_right",), equal_lengths=False, length_multiple=16, max_lq=32,
             max_lk=64, min_lk=16)
    ok = Call(dtype="float16", lq=16, lk=48, causal="bottom_right")
    assert t.refusal(ok) is None
    for call, words in ((dataclasses.replace(ok, causal=False), "causal_only"),
                        (dataclasses.replace(ok, lk=40), "length_multiple=16"),
                        (dataclasses.replace(ok, lq=48), "max_lq=32"),
                        (dataclasses.replace(ok, lk=80), "max_lk=64")):
        assert words in (t.refusal(call) or ""), (call, t.refusal(call))
    e = fake(equal_lengths=True)
    assert "equal_lengths" in e.refusal(Call(dtype="float16", lq=3, lk=4))
    assert e.refusal(Call(dtype="float16", lq=4, lk=4)) is None


# ============================================================================ the Domain object
def test_domain_fits_lengths_into_the_declaration():
    d = Domain.of(fake(length_multiple=64, max_lq=256, min_lk=100))
    assert d.fit(1, "q") == 64 and d.fit(65, "q") == 128 and d.fit(1000, "q") == 256
    assert d.fit(1, "k") == 128 and d.fit(0, "k") == 128 and d.fit(0, "q") == 0  # min_lq 0: empty stays empty
    assert d.fit_pair(5, 5) == (64, 128) and d.fit_equal(5) == 128
    assert d.bounds("q", cap=40) == (64, 64)  # a cost cap below the multiple still draws L = 64
    assert d.bounds("q", cap=1000) == (64, 256) and d.bounds("k", cap=1000) == (128, 960)
    assert d.apart(64, 64, longer="q") == (192, 64) or d.apart(64, 64, longer="q")[0] > 64
    lq, lk = d.apart(64, 64, longer="k")
    assert lk > lq and lq % 64 == 0 and lk % 64 == 0
    sq = Domain.of(fake(causal_equal_lengths=True, min_lq=3))
    assert sq.fit_pair(5, 9, "top_left") == (5, 5) and sq.fit_pair(5, 9, False) == (5, 9)
    assert not sq.unequal("top_left") and sq.unequal(False)
    assert Domain.of(fake()).default and not Domain.of(fake(length_multiple=2)).default


def test_apart_is_refused_where_the_domain_has_no_such_lengths():
    d = Domain.of(fake(equal_lengths=True))
    with pytest.raises(ValueError, match="no calls"):
        d.apart(3, 5)
    top = Domain.of(fake(max_lq=8))
    assert top.apart(8, 3, longer="q") == (8, 3) and top.apart(20, 30, longer="q") == (8, 7)


@pytest.mark.parametrize("declared", [
    dict(length_multiple=16, max_lk=96),
    dict(causal_only=True, alignments=("bottom_right",), length_multiple=8, max_lq=16),
    dict(equal_lengths=True, min_lq=5, alignments=()),
    dict(causal_equal_lengths=True, min_lk=2, head_dims=(8, 16, 24)),
], ids=["multiple16", "causal_br_multiple8", "equal_noncausal", "causal_square_min2"])
def test_strategies_draw_inside_the_domain(declared):
    """Every problem case_strategy draws is inside the declaration (no filtering needed), under the ci
    cap and under a raised cap (as the adaptive length budget sets ctx.limits.max_len)."""
    t = fake(**declared)
    for cap in (40, 200):
        ctx = make_context(t, "ci")
        ctx.limits = ctx.limits.replace(max_len=cap, length_levels=())  # as the length budget sets it
        dom = Domain.of(t)
        longest = []

        @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(gen.case_strategy(ctx))
        def check(case):
            p = case.problem
            assert t.refusal(Call.of_problem(p)) is None, (p, t.refusal(Call.of_problem(p)))
            longest.append(max(p.shape.lq, p.shape.lk))
        check()
        assert max(longest) <= max(cap, dom.multiple) or max(longest) <= max(dom.span("k")[0], dom.span("q")[0])


def test_a_declared_maximum_wins_over_a_raised_profile_limit():
    t = fake(max_lq=24, max_lk=48, length_multiple=8)
    ctx = make_context(t, "ci")
    ctx.limits = ctx.limits.replace(max_len=512, length_levels=())  # as the length budget sets it
    seen = set()

    @settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(gen.problem_strategy(ctx))
    def check(p):
        assert p.shape.lq <= 24 and p.shape.lk <= 48 and p.shape.lq % 8 == 0 and p.shape.lk % 8 == 0
        seen.add(p.shape.lk)
    check()
    assert max(seen) > 24  # keys longer than the queries are drawn: the caps are separate


def test_masks_follow_causal_only():
    t = fake(causal_only=True, alignments=("bottom_right",))
    ctx = make_context(t, "ci")

    @settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(gen.problem_strategy(ctx))
    def check(p):
        assert p.mask.causal == "bottom_right"
    check()
    c = gen.corner(ctx, shape=Shape(1, 1, 1, 9, 35, 16, 16), mask=MaskSpec(window=(2, 1)))
    assert c.problem.mask.causal == "bottom_right" and c.problem.mask.window == (2, 1)  # the corner, made causal


# ============================================================================ the suite inside any domain
#: Declaration combinations covering each value of causal-only / non-causal-only / both alignments, equal
#: lengths / square causal, length_multiple in {1, 16, 64, 128}, min and max lengths, head dims (one, a
#: few, multiples of 8), dtypes, value_dim, window, softcap, lse, gqa, attn_mask and backward on and off:
#: every property's strategy runs against each (reduced examples), and none may end in ERROR (a Hypothesis
#: Unsatisfiable is the suite drawing outside the domain) or FAILED (the fake is correct).
COMBOS = {
    "causal_tl_equal_m64": dict(causal_only=True, alignments=("top_left",), equal_lengths=True, length_multiple=64,
                                attn_mask=False, head_dims=(16, 72), dtypes=("float16",)),
    "causal_br_m16_max": dict(causal_only=True, alignments=("bottom_right",), length_multiple=16, max_lq=32, max_lk=64,
                              head_dims=(16, 32), window=False, attn_mask=False, dtypes=("bfloat16",)),
    "noncausal_equal_m128": dict(alignments=(), equal_lengths=True, length_multiple=128, head_dims=(16, 24),
                                 lse=False, softcap=False, gqa=False, window=False, dtypes=("float16",)),
    "square_causal_minmax": dict(causal_equal_lengths=True, min_lq=3, min_lk=5, max_lq=20, max_lk=24, value_dim=False,
                                 head_dims=(8, 16, 24, 40), dtypes=("float16", "float32")),
    "one_head_dim_m16": dict(length_multiple=16, min_lk=32, head_dims=(64,), dtypes=("float32",), backward=False),
    "causal_both_q1": dict(causal_only=True, max_lq=1, max_lk=40, window=False, head_dims=(16,), dtypes=("float32",)),
    "equal_both_attn_mask": dict(equal_lengths=True, min_lq=2, window=False, softcap=False, lse=False,
                                 head_dims=tuple(range(8, 129, 8)), dtypes=("float16",)),
}


@pytest.fixture
def reduced_ci():
    """The ci profile with one drawn example per property (after its corners and pins), one batch element
    and at most 4 heads, no shrinking (a failure is reported as found): what the strategies can draw is
    unchanged, each example is cheaper. Its Hypothesis settings are registered for the test and the
    original ones again after it (a monkeypatch would leave the reduced ones registered)."""
    ci = profiles.PROFILES["ci"]
    profiles.PROFILES["ci"] = ci.replace(settings={**ci.settings, "max_examples": 1}, shrink_seconds=0,
                                         limits=ci.limits.replace(max_batch=1, max_heads=4))
    profiles._registered = False
    profiles.register_profiles()
    try:
        yield
    finally:
        profiles.PROFILES["ci"] = ci
        profiles._registered = False
        profiles.register_profiles()
    assert profiles.settings_for("ci").max_examples == ci.settings["max_examples"]


@pytest.mark.parametrize("name", list(COMBOS))
def test_no_property_errors_inside_any_declared_domain(name, reduced_ci):
    res = run_suite(fake(name=name, **COMBOS[name]), profile="ci")
    bad = [o for o in res.outcomes if o.status in (ERROR, FAILED)]
    assert not bad, "\n\n".join(f"{o.name} {o.status}: {o.message[:3000]}" for o in bad)
    na = [o for o in res.outcomes if o.status == NOT_APPLICABLE]
    assert all(o.message for o in na)
    assert sum(o.status == PASSED for o in res.outcomes) >= 12, res.table()


def test_causal_only_equal_length_multiple_of_64_target_runs_the_whole_ci_suite():
    """Issue 15's Done-when: a causal-only, equal-length, length-multiple-of-64 target at the ci profile:
    the whole suite, no subset, no ERROR row (and no FAILED: the fake is correct); what needs Lq != Lk
    is "not applicable" with its reason, and the properties that drew only non-causal problems before
    draw causal ones inside the domain and pass."""
    t = fake(name="causal_square_m64", causal_only=True, equal_lengths=True, length_multiple=64)
    res = run_suite(t, profile="ci")
    print(res.table())
    bad = [o for o in res.outcomes if o.status in (ERROR, FAILED)]
    assert not bad, "\n\n".join(f"{o.name} {o.status}: {o.message[:3000]}\n{o.reproducer}" for o in bad)
    for name in ("kv_permutation_invariant", "duplicate_key_adds_ln2", "single_key_with_sentinel_logit",
                 "invalid_window_rejected", "attended_set_exact", "fp32_weight_ratios_exact"):
        assert res[name].status == PASSED, (name, res[name].status, res[name].message)
    for name in ("causal_alignment_on_unequal_lengths", "lse_merge_of_parts_equals_whole"):
        assert res[name].status == NOT_APPLICABLE and res[name].message, (name, res[name].status)


def _multiple_of_64_accepts(call):
    if call.lq % 64 or call.lk % 64:
        return f"Lq={call.lq}, Lk={call.lk}: the kernel takes multiples of 64 only"
    return None


def test_a_domain_known_only_to_accepts_is_not_applicable_with_a_hint():
    """The same limit declared only as an accepts() predicate: the strategies cannot draw inside it, so the
    properties whose every draw it refuses are "not applicable" with the predicate's reason and the hint to
    declare length_multiple, never ERROR."""
    t = fake(name="accepts_only", accepts=_multiple_of_64_accepts)
    res = run_suite(t, profile="ci", select=["output_within_error_bound", "attended_set_exact"])
    for o in res.outcomes:
        assert o.status == NOT_APPLICABLE, (o.name, o.status, o.message)
        assert "multiples of 64 only" in o.message and "length_multiple" in o.message


@given(st.sampled_from(list(COMBOS)), st.integers(0, 2 ** 20), st.integers(0, 2 ** 20))
@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_fit_pair_and_apart_land_inside_the_domain(name, a, b):
    t = fake(**COMBOS[name])
    d = Domain.of(t)
    e = (t.head_dims or (16,))[0]

    def why(lq, lk, causal):
        return t.refusal(Call(dtype=t.dtypes[0], lq=lq, lk=lk, e=e, ev=e, causal=causal))
    for causal in d.causal:
        lq, lk = d.fit_pair(a % 300, b % 300, causal)
        assert why(lq, lk, causal) is None or (lq == 0 or lk == 0), (lq, lk, causal, why(lq, lk, causal))
        for longer in ("q", "k"):
            if d.unequal(causal, longer=longer):
                lq, lk = d.apart(a % 300, b % 300, causal, longer=longer)
                assert (lq > lk) if longer == "q" else (lk > lq)
                assert why(lq, lk, causal) is None, (lq, lk, causal, why(lq, lk, causal))

"""properties/strategies.py: argument validation, regimes that really reach what they claim
after rounding to the input dtype, coverage of tile residues, printable/replayable cases."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashproof.properties import inputs as I
from flashproof.properties import strategies as S
from flashproof.properties.cases import Case, MaskSpec, Problem, Regime, Shape

FAST = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, exc, word", [
    (lambda: S.shapes(max_len=0), ValueError, "max_len"),
    (lambda: S.shapes(batch=0), ValueError, "batch"),
    (lambda: S.shapes(kv_heads=-1), ValueError, "kv_heads"),
    (lambda: S.shapes(e=2.5), TypeError, "e"),
    (lambda: S.shapes(max_heads=0), ValueError, "max_heads"),
    (lambda: S.lengths(tile_sizes=(0,)), ValueError, "tile_sizes"),
    (lambda: S.lengths(max_len=0), ValueError, "max_len"),
    (lambda: S.head_dims(allowed=()), ValueError, "allowed"),
    (lambda: S.dtypes(allowed=("float8",)), ValueError, "allowed"),
    (lambda: S.logit_regimes(names=("bogus",)), ValueError, "names"),
    (lambda: S.logit_regimes(names=()), ValueError, "names"),
    (lambda: S.logit_regimes(scale=-1.0), ValueError, "scale"),
    (lambda: S.logit_regimes(dtype="int8"), ValueError, "dtype"),
    (lambda: S.logit_regimes(accumulator="fp16"), ValueError, "accumulator"),
    (lambda: S.masks(alignments=("diagonal",)), ValueError, "alignments"),
    (lambda: S.masks(window="yes"), ValueError, "window"),
    (lambda: S.value_kinds(allowed=()), ValueError, "allowed"),
    (lambda: S.value_kinds(allowed=("zeros",)), ValueError, "allowed"),
    (lambda: S.tile_configs(configs=[(16, 16)]), TypeError, "configs"),
    (lambda: S.key_partitions(lk=4, max_parts=0), ValueError, "max_parts"),
    (lambda: S.split_counts(split_range=(0, 4)), ValueError, "split_range"),
    (lambda: S.split_counts(split_range=(5, 4)), ValueError, "split_range"),
    (lambda: S.problems(shape=3), TypeError, "shape"),
    (lambda: S.problems(shape=Shape(), values="zeros"), ValueError, "values"),
    (lambda: S.problems(shape=Shape(), scale=float("inf")), ValueError, "scale"),
    (lambda: S.problems(shape=Shape(), softcap=-1.0), ValueError, "softcap"),
])
def test_strategies_reject_bad_arguments_when_built(make, exc, word):
    with pytest.raises(exc, match=word):
        make()


@pytest.mark.parametrize("make, exc", [
    (lambda: Shape(heads=3, kv_heads=2), ValueError),
    (lambda: Shape(batch=0), ValueError),
    (lambda: Shape(lq=1.5), TypeError),
    (lambda: Regime("bogus"), ValueError),
    (lambda: Regime("standard", offset=math.inf), ValueError),
    (lambda: Regime("standard", spread=-1.0), ValueError),
    (lambda: MaskSpec(causal=True), ValueError),
    (lambda: MaskSpec(window=(-2, 0)), ValueError),
    (lambda: MaskSpec(empty_rows=1), ValueError),
    (lambda: MaskSpec(attn_mask="bool", density=2.0), ValueError),
    (lambda: Problem(dtype="int8"), ValueError),
    (lambda: Problem(seed=-1), ValueError),
    (lambda: Problem(scale=float("nan")), ValueError),
])
def test_descriptions_validate(make, exc):
    with pytest.raises(exc):
        make()


# ----------------------------------------------------------------------------- regimes
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("regime", S.REGIMES)
def test_each_regime_reaches_its_claim_after_rounding(regime, dtype):
    shape = S.shapes(batch=st.integers(1, 2), max_len=24, e=st.sampled_from((1, 2, 8, 40, 72)),
                     equal_lengths=st.booleans())
    strat = S.problems(shape=shape, dtype=dtype, regimes=(regime,),
                       scale=st.sampled_from((None, 0.25, 0.3, 1.0)))
    seen = []

    @FAST
    @given(strat)
    def check(problem):
        inp = I.build(problem)
        for name, t in (("q", inp.q), ("k", inp.k), ("v", inp.v)):
            assert torch.isfinite(t).all(), f"{name} overflowed {dtype} in {problem!r}"
        I.check_regime(inp)  # raises with the measured logits if the claim does not hold
        seen.append(problem.regime)

    check()
    assert seen


def test_very_negative_rows_are_far_below_zero_with_spread():
    p = Problem(shape=Shape(1, 1, 1, 4, 20, 16, 16), dtype="float16", regime=Regime("very_negative", -1e4, 4.0))
    r = I.regime_report(I.build(p))
    assert (r["max"] < -9e3).all() and (r["min"] > -1.1e4).all()
    assert (r["max"] - r["min"]).min() > 1.0  # real variation survives rounding: softmax is not a tie


def test_rising_regime_has_a_new_max_at_every_key():
    p = Problem(shape=Shape(1, 1, 1, 2, 64, 16, 16), dtype="bfloat16", regime=Regime("rising", 0.0, 1e3))
    s, _ = I.logits_exact(I.build(p))
    assert (np.diff(s, axis=-1) > 0).all()


def test_sentinel_regime_straddles_the_sentinel_exactly_representable():
    for dt, sval in (("float16", -65504.0), ("bfloat16", -1e30), ("float32", -1e6)):
        p = Problem(shape=Shape(1, 1, 1, 3, 30, 16, 16), dtype=dt, regime=Regime("sentinel", sval, 2.0 ** -6))
        inp = I.build(p)
        s, _ = I.logits_exact(inp)
        assert (s < sval).any() and (s > sval).any(), dt


def test_ties_are_exact():
    p = Problem(shape=Shape(1, 1, 1, 2, 12, 40, 40), dtype="float32", regime=Regime("ties", 0.0, 10.0))
    s, _ = I.logits_exact(I.build(p))
    assert len(np.unique(s[0, 0, 0])) <= 3


def test_fp16_large_regime_passes_65504_unscaled():
    p = Problem(shape=Shape(1, 1, 1, 4, 16, 64, 64), dtype="float16", regime=Regime("large", 0.0, 3e4))
    inp = I.build(p)
    s, _ = I.logits_exact(inp)
    assert np.abs(s).max() * 8 > 65504 and torch.isfinite(inp.q).all() and torch.isfinite(inp.k).all()


def test_unreachable_offsets_are_not_drawn_for_float16():
    @FAST
    @given(S.logit_regimes(names=("very_negative", "sentinel", "large", "spread"), dtype="float16", scale=0.125))
    def check(reg):
        assert abs(reg.offset) <= I.max_abs_logit("float16", 0.125) / 4
        if reg.name == "large":
            assert reg.spread <= I.max_abs_logit("float16", 0.125) / 64
    check()


# ----------------------------------------------------------------------------- shapes, masks
def test_lengths_hit_every_tile_boundary():
    seen = set()

    @settings(max_examples=300, derandomize=True, deadline=None, database=None)
    @given(S.lengths(max_len=70, tile_sizes=(16, 32)))
    def collect(n):
        seen.add(n)
    collect()
    assert {1, 15, 16, 17, 31, 32, 33, 63, 65} <= seen


def test_tail_sweep_covers_every_residue():
    from flashproof.properties.props_forward import _tail_lengths

    for t in (8, 16, 32):
        assert {n % t for n in _tail_lengths(t, 32)} == set(range(t))


def test_shapes_cover_gqa_ratios_and_odd_head_dims():
    ratios, hkv, dims, unequal = set(), set(), set(), False

    @settings(max_examples=300, derandomize=True, deadline=None, database=None)
    @given(S.shapes(max_heads=24, max_len=40))
    def collect(s):
        nonlocal unequal
        ratios.add(s.heads // s.kv_heads)
        hkv.add(s.kv_heads)
        dims.add(s.e)
        unequal |= s.lq != s.lk
    collect()
    assert {3, 5, 6, 7} <= ratios and hkv == {1, 2, 3} and {40, 72, 80, 96} <= dims and unequal


def test_masks_produce_empty_rows_and_both_alignments():
    seen = set()

    @settings(max_examples=200, derandomize=True, deadline=None, database=None)
    @given(S.masks(alignments=("top_left", "bottom_right"), window=True, attn_mask=True, lq=st.just(5)))
    def collect(m):
        seen.add(m.causal)
        if m.empty_rows:
            seen.add("empty")
        if m.window is not None:
            seen.add("window")
        seen.add(m.attn_mask)
    collect()
    assert {"top_left", "bottom_right", False, "empty", "window", "bool", "additive", None} <= seen


def test_built_empty_rows_allow_no_key():
    p = Problem(shape=Shape(2, 2, 1, 6, 9, 8, 8), mask=MaskSpec(attn_mask="bool", density=0.7, empty_rows=2, full=True))
    _, allowed = I.logits_exact(I.build(p))
    assert (~allowed.any(axis=-1)).sum() >= 2 * 2 * 2


def test_build_is_deterministic_and_exact_in_dtype():
    p = Problem(shape=Shape(1, 2, 1, 5, 7, 40, 24), dtype="bfloat16", regime=Regime("spread", 0.0, 1e3), seed=7)
    a, b = I.build(p), I.build(p)
    for x, y in ((a.q, b.q), (a.k, b.k), (a.v, b.v)):
        assert torch.equal(x, y) and x.dtype == torch.bfloat16
    assert a.q.shape == (1, 2, 5, 40) and a.k.shape == (1, 1, 7, 40) and a.v.shape == (1, 1, 7, 24)


@FAST
@given(S.problems(shape=S.shapes(max_len=20), regimes=S.REGIMES,
                  mask=lambda s: S.masks(alignments=("top_left", "bottom_right"), window=True, attn_mask=True,
                                         lq=s.lq),
                  values=S.value_kinds(), scale=st.sampled_from((None, 0.5)), softcap=st.sampled_from((None, 5.0))),
       S.tile_configs(configs=[{"block_m": 16, "block_n": 32}]))
def test_case_repr_is_python_that_rebuilds_the_case(problem, tile):
    case = Case(problem=problem, tile=tile, extra=(("x", math.inf), ("cuts", (0, 3))))
    again = eval(repr(case), {"Case": Case, "Problem": Problem, "Shape": Shape, "Regime": Regime,
                              "MaskSpec": MaskSpec})
    assert again == case

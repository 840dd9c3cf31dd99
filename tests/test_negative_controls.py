"""The proofs' harness generalises beyond proofs/negative_controls.py: fresh wrong merges written
here (not in the project) FAIL a theorem without crashing it, and fresh correct merges written the
way kernels are (Python branches, numpy, float constants) are PROVED: no false alarm."""
import math
import sys

import numpy as np
import pytest

from flashproof import spec
from flashproof.proofs import harness, merge_algebra, negative_controls, overflow, rescaling, streaming
from flashproof.spec import State


# --- correct merges written differently from spec.merge ---------------------------------------------

def kernel_style(a, b, ops=spec.SCALAR):
    """Correct: early exits on empty states, Python branches on the maxima, numpy for the vector."""
    if a.l == 0:
        return State(b.m, b.l, list(b.acc))
    if b.l == 0:
        return State(a.m, a.l, list(a.acc))
    if a.m >= b.m:
        hi, lo = a, b
    else:
        hi, lo = b, a
    w = ops.exp(lo.m - hi.m)
    acc = np.asarray(list(hi.acc), dtype=object) + w * np.asarray(list(lo.acc), dtype=object)
    return State(hi.m, hi.l + w * lo.l, list(acc))


def float_constants(a, b, ops=spec.SCALAR):
    """Correct: the empty result written with float('-inf') and 0.0."""
    if a.l == 0 and b.l == 0:
        return State(float("-inf"), 0.0, [0.0] * len(a.acc))
    return spec.merge(a, b, ops)


@pytest.mark.parametrize("op", [kernel_style, float_constants], ids=lambda f: f.__name__)
def test_correct_merges_written_differently_are_proved(op):
    for mod in (rescaling, merge_algebra, streaming, overflow):
        p = mod.prove(op)
        bad = [f"{c.name}: {c.detail}" for c in p.checks if not c.ok]
        assert p.ok, f"{mod.__name__} rejects a correct merge: {bad[:2]}"


# --- fresh wrong merges -----------------------------------------------------------------------------

def partial_chunk_dropped(a, b, ops=spec.SCALAR):
    """BLOCK_D = 64 loop over full chunks only: the partial last chunk is added unscaled."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = ops.exp(a.m - c), ops.exp(b.m - c)
    n = len(a.acc)
    full = (n // 64) * 64
    acc = [a.acc[i] + b.acc[i] for i in range(n)]
    for start in range(0, full, 64):
        for i in range(start, start + 64):
            acc[i] = alpha * a.acc[i] + beta * b.acc[i]
    return State(m, alpha * a.l + beta * b.l, acc)


def sorted_pair_nan_when_empty(a, b, ops=spec.SCALAR):
    """Correct for every non-empty pair; two empty states give exp(-inf - -inf) = NaN."""
    hi, lo = (a, b) if a.m >= b.m else (b, a)
    w = ops.exp(lo.m - hi.m)
    return State(hi.m, hi.l + w * lo.l, [x + w * y for x, y in zip(hi.acc, lo.acc)])


def single_key_shortcut(a, b, ops=spec.SCALAR):
    """A 'fast path' for a one-key state (l == 1) that forgets to rescale it."""
    if b.l == 1 and a.l != 0:
        m = ops.maximum(a.m, b.m)
        alpha = ops.exp(a.m - m)
        return State(m, alpha * a.l + 1, [alpha * x + y for x, y in zip(a.acc, b.acc)])
    return spec.merge(a, b, ops)


def width_72_only(a, b, ops=spec.SCALAR):
    """Wrong only for head dim 72 (a special-cased tile)."""
    out = spec.merge(a, b, ops)
    return State(out.m, out.l, list(b.acc)) if len(a.acc) == 72 else out


def returns_dict(a, b, ops=spec.SCALAR):
    out = spec.merge(a, b, ops)
    return {"m": out.m, "l": out.l, "acc": out.acc}


def exits(a, b, ops=spec.SCALAR):
    sys.exit(3)


def recursion(a, b, ops=spec.SCALAR):
    return recursion(a, b, ops)


def exp2_base(a, b, ops=spec.SCALAR):
    """Uses 2**(x) where e**x is meant (a base-2 kernel that forgot the log2(e) scale)."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = 2 ** (a.m - c), 2 ** (b.m - c)
    return State(m, alpha * a.l + beta * b.l, [alpha * x + beta * y for x, y in zip(a.acc, b.acc)])


def overflowing_tie_break(a, b, ops=spec.SCALAR):
    """Exact in the reals: rescales with e^{m_b} / e^{m_a} when b's max is the larger."""
    if a.l == 0 or b.l == 0:
        return spec.merge(a, b, ops)
    if a.m >= b.m:
        w = ops.exp(b.m) / ops.exp(a.m)
        return State(a.m, a.l + w * b.l, [x + w * y for x, y in zip(a.acc, b.acc)])
    w = ops.exp(a.m - b.m)
    return State(b.m, w * a.l + b.l, [w * x + y for x, y in zip(a.acc, b.acc)])


FRESH = [partial_chunk_dropped, sorted_pair_nan_when_empty, single_key_shortcut, width_72_only, returns_dict,
         exits, recursion, exp2_base, overflowing_tie_break]


@pytest.mark.parametrize("op", FRESH, ids=lambda f: f.__name__)
def test_fresh_wrong_merges_fail_without_crashing(op):
    theorem, check, reason, crash = negative_controls.run_control(op)
    assert crash is None, f"a proof crashed on {op.__name__}: {crash}"
    assert theorem is not None, f"{op.__name__} was PROVED by theorems 1, 8, 2 and 3"
    print(f"{op.__name__}: {theorem}: {reason}")


def test_a_hanging_merge_fails_by_timeout(monkeypatch):
    monkeypatch.setattr(harness, "CALL_SECONDS", 0.5)

    def hangs_on_ties(a, b, ops=spec.SCALAR):
        while a.m == b.m and a.l != 0:
            pass
        return spec.merge(a, b, ops)

    p = merge_algebra.prove(hangs_on_ties, stop_on_failure=True)
    assert not p.ok
    assert "did not return" in next(c.detail for c in p.checks if not c.ok)


def test_guard_reports_what_the_operator_did():
    a = State(1.0, 1.0, [1.0, 2.0])
    with pytest.raises(harness.OperatorFailure, match="mutated its input state a"):
        harness.guard(negative_controls.mutates_input)(a, a, spec.SCALAR)
    with pytest.raises(harness.OperatorFailure, match="length 1 for inputs of width 2"):
        harness.guard(negative_controls.acc_one_short)(a, a, spec.SCALAR)
    with pytest.raises(harness.OperatorFailure, match="raised SystemExit"):
        harness.guard(exits)(a, a, spec.SCALAR)
    assert a.acc == [1.0, 2.0]
    out = harness.guard(spec.merge)(a, a, spec.SCALAR)
    assert out.l == 2.0 and out.acc == [2.0, 4.0]


def test_variant_overflow_theorem_rejects_fresh_unsafe_variant():
    def shift_by_mean(merge, s, v, dim, ops):
        live = [x for x in s if not ops.is_neg_inf(x)]
        c = sum(live, ops.zero) / len(live) if live else ops.zero  # exact, but exp(s_j - mean) > 1
        p = [ops.exp_shifted(x, c) for x in s]
        return spec.finalize(State(c, ops.total(p), ops.weighted_sum(s, p, v, dim)), ops)

    p = overflow.prove(variants={"shift by the mean": shift_by_mean}, stop_on_failure=True)
    assert not p.ok
    assert "not provably <= 0" in next(c.detail for c in p.checks if not c.ok)


def test_case_split_is_exhaustive():
    assert len(harness.cases(2)) == 6 and len(harness.cases(3)) == 26
    names = {c.name for c in harness.cases(2)}
    assert {"m_a = m_b (tie)", "m_a < m_b", "m_b < m_a", "both empty"} <= names
    assert math.isclose(len(harness.cases(4)), 1 + 4 + 6 * 3 + 4 * 13 + 75)

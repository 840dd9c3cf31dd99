"""Theorem 7 (negative controls): the proofs reject wrong merge operators, and never crash on them.

Each control below is a deliberately wrong merge (or streaming variant), kept here and nowhere
else. They cover the classes a kernel gets wrong: head-dim chunking, ties, empty states, off-by-one
in l, swapped or one-sided weights, kernel-style Python branches with a bug in one branch, strict
vs non-strict comparisons, exact-but-overflowing forms, wrong types and lengths, exceptions,
mutation of the inputs, float rounding, state kept between calls. Every control must FAIL at least
one of theorems 2, 8, 1, 3 (tried in that order, fastest to fail first, stopping at the first FAILED), no
proof may crash on it, and the true ``spec.merge`` must be PROVED by all four. The table records,
per control, the first theorem that fails and its first failed check.

``python -m flashproof.proofs.negative_controls`` prints the table.
"""
from __future__ import annotations

import math
import sys
import time
import traceback

from flashproof import spec
from flashproof.spec import State

from . import merge_algebra, overflow, rescaling, streaming
from .core import Proof, timed

__all__ = ["CONTROLS", "VARIANT_CONTROLS", "EXACT_IN_THE_REALS", "THEOREMS_UNDER_TEST", "prove", "main", "run_control", "format_table"]


def _rescale(a, b, ops):
    """The correct weights (used by the controls that are wrong elsewhere)."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    return m, ops.exp(a.m - c), ops.exp(b.m - c)


def no_acc_rescale(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(a.acc, b.acc))


def wrong_sign(a, b, ops=spec.SCALAR):
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = ops.exp(c - a.m), ops.exp(c - b.m)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def no_l_rescale(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    return State(m, a.l + b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def _chunked(chunk):
    def merge(a, b, ops=spec.SCALAR):
        m, alpha, beta = _rescale(a, b, ops)
        acc = [alpha * x + beta * y if i < chunk else x + y for i, (x, y) in enumerate(zip(a.acc, b.acc))]
        return State(m, alpha * a.l + beta * b.l, acc)
    merge.__name__ = f"head_dim_chunk_{chunk}"
    return merge


def last_component_unscaled(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    n = len(a.acc)
    acc = [alpha * a.acc[i] + beta * b.acc[i] for i in range(n - 1)] + [a.acc[n - 1] + b.acc[n - 1]]
    return State(m, alpha * a.l + beta * b.l, acc)


def acc_one_short(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    acc = ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc))
    return State(m, alpha * a.l + beta * b.l, list(acc)[:-1])


def components_reversed(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    acc = [alpha * x + beta * y for x, y in zip(a.acc, b.acc)]
    return State(m, alpha * a.l + beta * b.l, acc[::-1])


def _kernel_style(a, b, ops, tie):
    """m, alpha, beta as a kernel writes them, with plain Python comparisons; ``tie`` handles a == b."""
    if a.m > b.m:
        return a.m, 1, ops.exp(b.m - a.m)
    if b.m > a.m:
        return b.m, ops.exp(a.m - b.m), 1
    return tie()


def tie_returns_a(a, b, ops=spec.SCALAR):
    out = _kernel_style(a, b, ops, lambda: None)
    if out is None:  # strict comparisons both ways: a tie falls through
        return a
    m, alpha, beta = out
    return State(m, alpha * a.l + beta * b.l, [alpha * x + beta * y for x, y in zip(a.acc, b.acc)])


def tie_halves(a, b, ops=spec.SCALAR):
    m, alpha, beta = _kernel_style(a, b, ops, lambda: (a.m, ops.exp(a.m - a.m) / 2, ops.exp(b.m - b.m) / 2))
    return State(m, alpha * a.l + beta * b.l, [alpha * x + beta * y for x, y in zip(a.acc, b.acc)])


def nonstrict_double_count(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    l, acc = alpha * a.l, [alpha * x for x in a.acc]
    if a.m >= b.m:  # non-strict twice: at a tie both branches add b
        l, acc = l + beta * b.l, [x + beta * y for x, y in zip(acc, b.acc)]
    if a.m <= b.m:
        l, acc = l + beta * b.l, [x + beta * y for x, y in zip(acc, b.acc)]
    return State(m, l, acc)


def branch_bug(a, b, ops=spec.SCALAR):
    if a.m > b.m:
        m, beta = a.m, ops.exp(b.m - a.m)
        return State(m, a.l + beta * b.l, [x + beta * y for x, y in zip(a.acc, b.acc)])
    m, alpha = b.m, ops.exp(a.m - b.m)  # else-branch forgets to rescale a's l
    return State(m, a.l + b.l, [alpha * x + y for x, y in zip(a.acc, b.acc)])


def both_empty_nan(a, b, ops=spec.SCALAR):
    m = ops.maximum(a.m, b.m)
    alpha, beta = ops.exp(a.m - m), ops.exp(b.m - m)  # no shift: -inf - (-inf) = NaN for two empty states
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def max_initialised_to_zero(a, b, ops=spec.SCALAR):
    ma, mb = ops.shift(a.m), ops.shift(b.m)  # an empty side counts as a logit 0
    m = ops.maximum(ma, mb)
    alpha, beta = ops.exp(ma - m), ops.exp(mb - m)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def empty_gets_plus_inf(a, b, ops=spec.SCALAR):
    if a.l == 0 and b.l == 0:
        return State(-ops.neg_inf, ops.zero, ops.zeros(len(a.acc)))
    return spec.merge(a, b, ops)


def l_plus_one(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    return State(m, alpha * a.l + beta * b.l + 1,
                 ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def swapped_weights(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    return State(m, beta * a.l + alpha * b.l, ops.vec_add(ops.vec_scale(beta, a.acc), ops.vec_scale(alpha, b.acc)))


def min_instead_of_max(a, b, ops=spec.SCALAR):
    m = a.m if a.m <= b.m else b.m
    c = ops.shift(m)
    alpha, beta = ops.exp(a.m - c), ops.exp(b.m - c)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def rescale_one_side(a, b, ops=spec.SCALAR):
    m, alpha, _ = _rescale(a, b, ops)
    return State(m, alpha * a.l + b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), b.acc))


def new_max_only_for_l(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    gamma = ops.exp(b.m - ops.shift(a.m))  # acc stays at a's max: right only when m_a >= m_b
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(a.acc, ops.vec_scale(gamma, b.acc)))


def returns_a(a, b, ops=spec.SCALAR):
    return State(a.m, a.l, list(a.acc))


def mutates_input(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    for i in range(len(a.acc)):  # right result, but rescales a's accumulator in place
        a.acc[i] = alpha * a.acc[i] + beta * b.acc[i]
    return State(m, alpha * a.l + beta * b.l, list(a.acc))


def abs_acc(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    return State(m, alpha * a.l + beta * b.l, [alpha * abs(x) + beta * abs(y) for x, y in zip(a.acc, b.acc)])


def sign_branch(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    acc = [alpha * x + beta * y if x >= 0 else x + beta * y for x, y in zip(a.acc, b.acc)]
    return State(m, alpha * a.l + beta * b.l, acc)


def rounds_to_float(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    return State(m, float(alpha * a.l + beta * b.l), [float(alpha * x + beta * y) for x, y in zip(a.acc, b.acc)])


def alpha_exp_ratio(a, b, ops=spec.SCALAR):
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = ops.exp(a.m) / ops.exp(c), ops.exp(b.m) / ops.exp(c)  # exact, overflows near 89 in fp32
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def unshifted_sums(a, b, ops=spec.SCALAR):
    alpha, beta = ops.exp(a.m), ops.exp(b.m)  # keeps e^m l with shift 0: exact, overflows
    return State(ops.zero if (a.l != 0 or b.l != 0) else ops.neg_inf, alpha * a.l + beta * b.l,
                 ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def python_math_exp(a, b, ops=spec.SCALAR):
    m = max(a.m, b.m)
    c = 0 if m == -math.inf else m
    alpha, beta = math.exp(a.m - c), math.exp(b.m - c)
    return State(m, alpha * a.l + beta * b.l, [alpha * x + beta * y for x, y in zip(a.acc, b.acc)])


def raises_on_empty(a, b, ops=spec.SCALAR):
    assert a.l != 0 and b.l != 0, "empty state"
    return spec.merge(a, b, ops)


def normalised_output(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    l = alpha * a.l + beta * b.l
    return State(m, l, [(alpha * x + beta * y) / l for x, y in zip(a.acc, b.acc)])  # keeps o, not acc


def returns_none_when_empty(a, b, ops=spec.SCALAR):
    if a.l == 0 or b.l == 0:
        return None  # forgot the return value of the early exit
    return spec.merge(a, b, ops)


def max_instead_of_sum(a, b, ops=spec.SCALAR):
    m, alpha, beta = _rescale(a, b, ops)
    take_a = alpha * a.l >= beta * b.l
    return State(m, alpha * a.l if take_a else beta * b.l,
                 ops.vec_scale(alpha, a.acc) if take_a else ops.vec_scale(beta, b.acc))


class WrongAfterCalls:
    """Right for its first ``n`` calls, then drops b's rescale (state kept between calls)."""

    def __init__(self, n=20):
        self.n, self.calls = n, 0

    def __call__(self, a, b, ops=spec.SCALAR):
        self.calls += 1
        return spec.merge(a, b, ops) if self.calls <= self.n else rescale_one_side(b, a, ops)


def wrong_signature(a, b):
    return spec.merge(a, b)


#: name -> wrong merge operator
CONTROLS = {
    "missing rescale of acc": no_acc_rescale,
    "wrong sign in the exponent": wrong_sign,
    "dropped l rescale": no_l_rescale,
    "head-dim chunking: only acc[0], acc[1] rescaled": _chunked(2),
    "head-dim chunking: components past 128 not rescaled": _chunked(128),
    "off-by-one head-dim loop: last component not rescaled": last_component_unscaled,
    "acc one component short": acc_one_short,
    "acc components reversed": components_reversed,
    "kernel-style strict branches: a tie returns a": tie_returns_a,
    "tie: weights 1/2 each": tie_halves,
    "non-strict comparisons twice: a tie adds b twice": nonstrict_double_count,
    "kernel-style branch, bug in the else branch (l of a not rescaled)": branch_bug,
    "both empty: no shift, -inf - (-inf) = NaN": both_empty_nan,
    "running max initialised to 0": max_initialised_to_zero,
    "two empty states give m = +inf": empty_gets_plus_inf,
    "off-by-one in l (l + 1)": l_plus_one,
    "swapped weights": swapped_weights,
    "min instead of max": min_instead_of_max,
    "only a rescaled (beta = 1)": rescale_one_side,
    "new max for l only, acc kept at a's max": new_max_only_for_l,
    "returns its first input": returns_a,
    "right result, mutates its input": mutates_input,
    "right only for acc >= 0 (rescales |acc|)": abs_acc,
    "kernel-style branch on the sign of acc": sign_branch,
    "rounds to float": rounds_to_float,
    "alpha = e^{m_a} / e^{m} (exact, overflows)": alpha_exp_ratio,
    "exp without shift (m = 0, e^{m_i} l_i)": unshifted_sums,
    "math.exp instead of the ops": python_math_exp,
    "raises on an empty state": raises_on_empty,
    "keeps the normalised output acc / l": normalised_output,
    "returns None for an empty side": returns_none_when_empty,
    "max instead of sum of the two sides": max_instead_of_sum,
    "right for 20 calls, then wrong (state between calls)": WrongAfterCalls,  # a class: fresh per run
    "wrong signature (no ops argument)": wrong_signature,
}


#: the controls that are exact in the reals: only theorem 8 (overflow) can reject them
EXACT_IN_THE_REALS = ("alpha = e^{m_a} / e^{m} (exact, overflows)",)


def _shift_first_key(merge, s, v, dim, ops):
    """v2 with the shift taken as the first key's logit, not the max (exact, overflows)."""
    c = ops.shift(s[0]) if s else ops.zero
    p = [ops.exp_shifted(x, c) for x in s]
    return spec.finalize(State(c, ops.total(p), ops.weighted_sum(s, p, v, dim)), ops)


#: name -> wrong streaming variant (judged by theorem 8 with the true merge)
VARIANT_CONTROLS = {
    "v1 naive (stupid attention): exp of the raw logits": overflow.UNSAFE_VARIANTS["v1 naive (stupid attention)"],
    "v2 shifted by the first key, not the max": _shift_first_key,
}

#: the theorems a control is judged by, in the order tried (cheapest first)
THEOREMS_UNDER_TEST = {
    "merge_algebra": ("theorem 2", merge_algebra.prove),
    "overflow": ("theorem 8", overflow.prove),
    "rescaling": ("theorem 1", rescaling.prove),
    "streaming": ("theorem 3", streaming.prove),
}


def run_control(op, *, variant=False) -> tuple:
    """(first failing theorem or None, its first failed check, that check's reason, crash text or None)."""
    for key, (label, fn) in THEOREMS_UNDER_TEST.items():
        if variant and key != "overflow":
            continue
        try:
            res = fn(variants={"variant": op}, stop_on_failure=True) if variant else fn(op, stop_on_failure=True)
        except BaseException:  # noqa: BLE001 -- a crash is recorded, never raised: it fails theorem 7
            return label, "", "", traceback.format_exc(limit=3)
        if not res.ok:
            bad = next(c for c in res.checks if not c.ok)
            return label, bad.name, bad.detail, None
    return None, "", "", None


@timed
def prove(*, baseline=None) -> Proof:
    """``baseline``: {theorem key: Proof} of spec.merge from this run (re-run if absent)."""
    p = Proof("negative_controls", "Negative controls: wrong merges are rejected (theorem 7)",
              rf"For each of the {len(CONTROLS)} wrong merges $\tilde\oplus$ and {len(VARIANT_CONTROLS)} wrong "
              r"streaming variants below, at least one of theorems 2, 8, 1, 3 is FAILED and none crashes, while "
              r"`spec.merge` is PROVED by all four.")
    for key, (label, fn) in THEOREMS_UNDER_TEST.items():
        base = (baseline or {}).get(key) or fn()
        p.check(f"{label} ({key}) with spec.merge: PROVED", base.ok)
    table = []
    for kind, controls in (("merge", CONTROLS), ("variant", VARIANT_CONTROLS)):
        for name, op in controls.items():
            op = op() if isinstance(op, type) else op
            t0 = time.perf_counter()
            label, check, reason, crash = run_control(op, variant=kind == "variant")
            dt = time.perf_counter() - t0
            if crash:
                last = crash.strip().splitlines()[-1]
                p.check(f"{kind} '{name}': no proof crashes", False, detail=last)
                table.append((name, kind, label, "CRASH", "", last, dt))
                continue
            p.check(f"{kind} '{name}': FAILED by {label}" if label else f"{kind} '{name}': FAILED by some theorem",
                    label is not None, detail=f"{check} -- {reason}" if label else "every theorem PROVED it")
            table.append((name, kind, label or "none", "FAILED" if label else "PROVED (bad)", check, reason, dt))
    p.extra["table"] = table
    p.step("Each control differs from a correct merge in one place. Theorems are tried in the order 2, 8, 1, 3 "
           "(theorem 2's case-by-case check of the merge fails fastest) with stop at the first failed check; the table lists the first theorem that "
           "fails and that check. A control that raises, hangs, returns the wrong type or length, or mutates "
           "its inputs is a FAILED check naming what it did, never a crash of the proof.")
    return p


def format_table(table, width: int = 140) -> str:
    """The table as text: control, kind, first failing theorem, result, the failed check's reason."""
    rows = [("control", "kind", "theorem", "result", "reason (first failed check)")]
    rows += [(n, k, t, r, (why or chk) if len(why or chk) <= width else (why or chk)[:width - 3] + "...")
             for n, k, t, r, chk, why, _ in table]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join([c.ljust(w[i]) for i, c in enumerate(r[:4])] + [r[4]]) for r in rows)


def main(argv=None) -> int:
    pr = prove()
    print(pr.summary())
    print(format_table(pr.extra["table"]))
    return 0 if pr.ok else 1


if __name__ == "__main__":
    sys.exit(main())

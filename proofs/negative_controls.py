"""Theorem 7 (negative controls): the algebraic proofs reject subtly wrong merge operators.

Each algebraic proof (theorems 1-3) takes the operator under test as an argument. Fed one of the
planted-bug merges below, it must FAIL; this module runs every (proof, mutant) pair and is PROVED
only if every pair fails while the true spec.merge passes. The mutants are deliberately wrong
variants of the merge, kept here and nowhere else.
"""
from __future__ import annotations

import sys

from flashproof import spec
from flashproof.spec import State

from . import merge_algebra, rescaling, streaming
from .core import Proof, timed

__all__ = ["MUTANTS", "prove", "main", "ALGEBRAIC_PROOFS"]


def merge_no_acc_rescale(a: State, b: State, ops=spec.SCALAR) -> State:
    """WRONG on purpose: acc is summed without the rescale by alpha, beta."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = ops.exp(a.m - c), ops.exp(b.m - c)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(a.acc, b.acc))


def merge_wrong_sign(a: State, b: State, ops=spec.SCALAR) -> State:
    """WRONG on purpose: exp(c - m_a) instead of exp(m_a - c)."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = ops.exp(c - a.m), ops.exp(c - b.m)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def merge_no_l_rescale(a: State, b: State, ops=spec.SCALAR) -> State:
    """WRONG on purpose: l is summed without the rescale (acc is rescaled)."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha, beta = ops.exp(a.m - c), ops.exp(b.m - c)
    return State(m, a.l + b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


MUTANTS = {
    "missing rescale of acc": merge_no_acc_rescale,
    "wrong sign in the exponent": merge_wrong_sign,
    "dropped l rescale": merge_no_l_rescale,
}

ALGEBRAIC_PROOFS = {
    "theorem 1 (rescaling)": rescaling.prove,
    "theorem 2 (merge algebra)": merge_algebra.prove,
    "theorem 3 (streaming)": streaming.prove,
}


@timed
def prove(*, baseline=None) -> Proof:
    """``baseline``: {proof name: Proof} of the true operator from this run (re-run if absent)."""
    p = Proof("negative_controls", "Negative controls: wrong merges are rejected (theorem 7)",
              r"For each algebraic proof $T$ and each planted-bug merge $\tilde\oplus$ (missing rescale "
              r"of acc, wrong sign in the exponent, dropped $\ell$ rescale): $T(\oplus)$ is PROVED and "
              r"$T(\tilde\oplus)$ is FAILED.")
    table = []
    for pname, fn in ALGEBRAIC_PROOFS.items():
        base = (baseline or {}).get(pname) or fn()
        p.check(f"{pname} with spec.merge: PROVED", base.ok)
        for mname, mut in MUTANTS.items():
            res = fn(mut, stop_on_failure=True)
            failed = [c.name for c in res.checks if not c.ok]
            p.check(f"{pname} with mutant '{mname}': FAILED", not res.ok,
                    detail=f"first failed check: {failed[0]}" if failed else "no check failed")
            table.append((pname, mname, "FAILED" if not res.ok else "PROVED (bad)", failed[0] if failed else ""))
    p.extra["table"] = table
    p.step("Each mutant differs from spec.merge in one term; the first check it fails is listed in the "
           "report table.")
    return p


def main(argv=None) -> int:
    pr = prove()
    print(pr.summary())
    for row in pr.extra["table"]:
        print("   ", " | ".join(row))
    return 0 if pr.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Theorem 3: the streaming variants of softmax attention compute the same weighted sum.

(1) naive: sum_j e^{s_j} v_j / sum_j e^{s_j};
(2) two-pass: m = max_j s_j first, then sum_j e^{s_j - m} v_j / sum_j e^{s_j - m};
(3) one-pass online: keys one at a time, state <- state (+) state(key);
(4) block-wise online: blocks of keys, state <- state (+) block_state(block).
(3) and (4) use the merge operator under test. Proved for symbolic rows of 4 keys (every block
split), for rows of symbolic length n (two-pass = naive by linearity; online = naive by induction
on n, the step being the homomorphism of theorem 2), and spot-checked with mpmath.
"""
from __future__ import annotations

import random
import sys

import mpmath
import sympy as sp

from flashproof import spec
from flashproof.spec import State

from .core import MP, SYMPY, Proof, is_zero, sums_equal, proof_main, timed

__all__ = ["prove", "main", "STATEMENT"]

STATEMENT = (
    r"Naive $\frac{\sum_j e^{s_j}v_j}{\sum_j e^{s_j}}$, two-pass max-shifted "
    r"$\frac{\sum_j e^{s_j-m}v_j}{\sum_j e^{s_j-m}}$ ($m=\max_j s_j$), one-pass online "
    r"(fold of $\oplus$ over single keys) and block-wise online (fold of $\oplus$ over blocks) are "
    r"equal, as are their LSEs, for rows of any length."
)


def _compositions(n):
    """All ways to cut n keys into consecutive non-empty blocks."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in _compositions(n - first):
            yield [first] + rest


def _online(merge, xs, ys, sizes, ops):
    st = spec.identity(len(ys[0]), ops)
    i = 0
    for b in sizes:
        st = merge(st, spec.block_state(xs[i:i + b], ys[i:i + b], len(ys[0]), ops), ops)
        i += b
    return spec.finalize(st, ops)


@timed
def prove(merge=spec.merge, *, stop_on_failure=False) -> Proof:
    p = Proof("streaming", "Streaming variants agree: naive, two-pass, online, block-wise (theorem 3)",
              STATEMENT)
    n = 4
    xs = list(sp.symbols(f"s1:{n + 1}", real=True))
    ys = [[sp.Symbol(f"v{i}{c}", real=True) for c in range(2)] for i in range(n)]
    z = sum(sp.exp(x) for x in xs)
    naive_o = [sum(sp.exp(x) * y[c] for x, y in zip(xs, ys)) / z for c in range(2)]
    naive_lse = sp.log(z)
    m = sp.Max(*xs)
    z2 = sum(sp.exp(x - m) for x in xs)
    two_o = [sum(sp.exp(x - m) * y[c] for x, y in zip(xs, ys)) / z2 for c in range(2)]
    two_lse = m + sp.log(z2)
    ok = p.check("two-pass (max-shifted) = naive, 4 keys, Max symbolic",
                 all(is_zero(a - b) for a, b in zip(two_o, naive_o)) and is_zero(sp.exp(two_lse) - z))
    one_o, one_lse = _online(merge, xs, ys, [1] * n, SYMPY)
    ok &= p.check("one-pass online (fold of merge over single keys) = naive",
                  all(is_zero(a - b) for a, b in zip(one_o, naive_o)) and is_zero(sp.exp(one_lse) - z))
    if stop_on_failure and not ok:
        return p
    comp_ok = True
    for sizes in _compositions(n):
        o_b, lse_b = _online(merge, xs, ys, sizes, SYMPY)
        comp_ok &= all(is_zero(a - b) for a, b in zip(o_b, naive_o)) and is_zero(sp.exp(lse_b) - z)
        if stop_on_failure and not comp_ok:
            break
    ok &= p.check("block-wise online = naive for all 8 block splits of 4 keys", comp_ok)
    if stop_on_failure and not ok:
        return p
    # symbolic length n
    j = sp.Symbol("j", integer=True)
    nn = sp.Symbol("n", integer=True, positive=True)
    s, v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    M = sp.Symbol("M", real=True)
    naive_num, naive_den = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, nn)), sp.Sum(sp.exp(s[j]), (j, 1, nn))
    two_num, two_den = sp.Sum(sp.exp(s[j] - M) * v[j], (j, 1, nn)), sp.Sum(sp.exp(s[j] - M), (j, 1, nn))
    ok &= p.check("two-pass = naive for rows of symbolic length n (any shift M)",
                  sums_equal(two_num * naive_den, naive_num * two_den)
                  and sums_equal(sp.exp(M) * two_den, naive_den))
    # induction on n: state(1..n) (+) state(n+1) = state(1..n+1)
    mn, mk = sp.symbols("m_n m_k", real=True)
    st_n = State(mn, sp.Sum(sp.exp(s[j] - mn), (j, 1, nn)), [sp.Sum(sp.exp(s[j] - mn) * v[j], (j, 1, nn))])
    st_k = spec.block_state([s[nn + 1]], [[v[nn + 1]]], 1, SYMPY)
    st = merge(st_n, st_k, SYMPY)
    M2 = sp.Max(mn, s[nn + 1])
    want = State(M2, sp.Sum(sp.exp(s[j] - M2), (j, 1, nn + 1)), [sp.Sum(sp.exp(s[j] - M2) * v[j], (j, 1, nn + 1))])
    step_ok = sp.simplify(st.m - want.m) == 0 and sums_equal(st.l, want.l) and sums_equal(st.acc[0], want.acc[0])
    base = spec.block_state([s[1]], [[v[1]]], 1, SYMPY)
    base_ok = is_zero(base.l - 1) and is_zero(base.acc[0] - v[1]) and base.m == s[1]
    ok &= p.check("one-pass online = naive for symbolic n: induction base (n = 1) and step n -> n+1", base_ok and step_ok)
    p.step("Two-pass vs naive: $e^{-M}$ factors out of numerator and denominator (linearity), for "
           "any $M$.", r"\frac{\sum_j e^{s_j-M}v_j}{\sum_j e^{s_j-M}}=\frac{e^{-M}\sum_j e^{s_j}v_j}{e^{-M}\sum_j e^{s_j}}")
    p.step("Online vs naive, induction on $n$: the state after $n$ keys is $\\mathrm{state}(s_{1..n})$; "
           "merging the state of key $n+1$ gives $\\mathrm{state}(s_{1..n+1})$ (checked with a symbolic "
           "$n$); finalize of $\\mathrm{state}(s_{1..n})$ is the naive result. Block-wise is the same with "
           "blocks (theorem 2's homomorphism).",
           r"\mathrm{state}(s_{1..n})\oplus\mathrm{state}(s_{n+1})=\mathrm{state}(s_{1..n+1})")
    num = _numeric(merge)
    p.check("all four variants agree at 40 random rows with mpmath (logits up to +-700)", num[0],
            kind="numeric", detail=num[1])
    return p


def _numeric(merge):
    rng = random.Random(3)
    worst = mpmath.mpf(0)
    with mpmath.workdps(60):
        for _ in range(40):
            n = rng.randint(1, 10)
            xs = [mpmath.mpf(rng.uniform(-700, 700)) for _ in range(n)]
            ys = [[mpmath.mpf(rng.uniform(-3, 3))] for _ in range(n)]
            z = mpmath.fsum(mpmath.exp(x) for x in xs)
            naive = mpmath.fsum(mpmath.exp(x) * y[0] for x, y in zip(xs, ys)) / z
            m = max(xs)
            two = mpmath.fsum(mpmath.exp(x - m) * y[0] for x, y in zip(xs, ys)) / mpmath.fsum(
                mpmath.exp(x - m) for x in xs)
            one, lse1 = _online(merge, xs, ys, [1] * n, MP)
            cuts = sorted(rng.sample(range(1, n), rng.randint(0, n - 1))) if n > 1 else []
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
            blk, lse2 = _online(merge, xs, ys, sizes, MP)
            worst = max(worst, abs(two - naive), abs(one[0] - naive), abs(blk[0] - naive),
                        abs(lse1 - mpmath.log(z)), abs(lse2 - mpmath.log(z)))
    return worst < mpmath.mpf(10) ** -40, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

"""Theorem 3: the streaming variants of softmax attention compute the same weighted sum.

The variants (the "stupid attention" v1-v3 and the flash loop), each written once here over any
``ops`` (SymPy, mpmath, float32...) so that this theorem and theorem 8 (overflow) run the same code:

* v1 :func:`naive`: sum_j e^{s_j} v_j / sum_j e^{s_j} (no shift);
* v2 :func:`two_pass`: m = max_j s_j first, then sum_j e^{s_j - m} v_j / sum_j e^{s_j - m};
* v3 :func:`online`: keys one at a time, state <- state (+) state(key);
* v4 :func:`blocked`: the flash loop, blocks of keys, state <- state (+) block_state(block).

v3 and v4 use the merge operator under test. Proved for rows of 3 keys at every pattern of tied and
masked logits and every block split, 4 keys at a sample of patterns, rows of symbolic length n
(two-pass = naive by linearity; online = naive by induction on n with the step checked in every
case: the new key above, tied with, or below the running max, masked, or an empty prefix), and
spot-checked with mpmath.
"""
from __future__ import annotations

import random
import sys

import mpmath
import sympy as sp

from flashproof import spec
from flashproof.spec import State

from . import harness as H
from .core import MP, SYMPY, Proof, exact_equal, is_zero, operator_free, proof_main, sums_equal, timed

__all__ = ["prove", "main", "STATEMENT", "naive", "two_pass", "online", "blocked", "compositions"]

STATEMENT = (
    r"Naive $\frac{\sum_j e^{s_j}v_j}{\sum_j e^{s_j}}$ (v1), two-pass max-shifted "
    r"$\frac{\sum_j e^{s_j-m}v_j}{\sum_j e^{s_j-m}}$ ($m=\max_j s_j$, v2), one-pass online "
    r"(fold of the merge under test over single keys, v3) and block-wise online (the flash loop: fold over "
    r"blocks, v4) are equal, as are their LSEs, for rows of any length, with ties, masked keys and empty "
    r"rows (output 0, LSE $-\infty$). Machine-checked at every pattern of tied and masked logits of 3 keys and "
    r"13 of 4 keys (every block split, value width 2) and, for symbolic length $n$, by induction with the step "
    r"checked in all 6 cases (width 3, every column one function of its own); other widths: theorem 2."
)


def naive(s, v, dim, ops=spec.SCALAR):
    """v1, "stupid attention": exp of the raw logits, no shift (exact, but overflows: theorem 8)."""
    p = [ops.exp_shifted(x, ops.zero) for x in s]  # exp(s_j - 0); a masked key gives exactly 0
    return spec.finalize(State(ops.zero, ops.total(p), ops.weighted_sum(s, p, v, dim)), ops)


def two_pass(s, v, dim, ops=spec.SCALAR):
    """v2: the row max first, then exp(s_j - max) (one state of the whole row)."""
    return spec.finalize(spec.block_state(s, v, dim, ops), ops)


def online(merge, s, v, dim, ops=spec.SCALAR):
    """v3: one key at a time, state <- merge(state, state(key))."""
    return blocked(merge, s, v, dim, [1] * len(s), ops)


def blocked(merge, s, v, dim, sizes, ops=spec.SCALAR):
    """v4, the flash loop: blocks of ``sizes`` keys, state <- merge(state, block_state(block))."""
    st = spec.identity(dim, ops)
    i = 0
    for b in sizes:
        st = merge(st, spec.block_state(s[i:i + b], v[i:i + b], dim, ops), ops)
        i += b
    return spec.finalize(st, ops)


def compositions(n):
    """All ways to cut n keys into consecutive non-empty blocks."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in compositions(n - first):
            yield [first] + rest


def _values(n, dim, rep):
    if rep is None:
        return [[sp.Symbol(f"v{i}{c}", real=True) for c in range(dim)] for i in range(n)]
    return [[sp.Rational(((3 * i + 2 * c + rep) % 7) - 3, 2) for c in range(dim)] for i in range(n)]


def _agree(got, s, v, dim):
    """Reasons the (o, lse) ``got`` is not naive attention over the unmasked keys."""
    o, lse = got
    live = [(x, y) for x, y in zip(s, v) if x != -sp.oo]
    if not live:
        ok = exact_equal(lse, -sp.oo) and all(exact_equal(x, 0) for x in o)
        return [] if ok else [f"empty row: ({list(o)}, {lse}) instead of (0, -oo)"]
    z = sum(sp.exp(x) for x, _ in live)
    if not exact_equal(sp.exp(lse), z):
        return [f"exp(lse) = exp({lse}) != sum exp(s)"]
    for c in range(dim):  # o e^lse = (acc / l) e^m l = e^m acc: no quotient left to simplify
        if not exact_equal(o[c] * sp.exp(lse), sum(sp.exp(x) * y[c] for x, y in live)):
            return [f"o[{c}] = {o[c]} != naive softmax(S) V"]
    return []


@timed
def prove(merge=spec.merge, *, stop_on_failure=False) -> Proof:
    p = Proof("streaming", "Streaming variants agree: naive, two-pass, online, block-wise (theorem 3)",
              STATEMENT)
    F = H.guard(merge)
    # --- two-pass = naive (no operator), Max symbolic
    n = 4
    xs = list(sp.symbols(f"s1:{n + 1}", real=True))
    ys = [[sp.Symbol(f"v{i}{c}", real=True) for c in range(2)] for i in range(n)]
    z = sum(sp.exp(x) for x in xs)
    naive_o = [sum(sp.exp(x) * y[c] for x, y in zip(xs, ys)) / z for c in range(2)]
    two_o, two_lse = two_pass(xs, ys, 2, SYMPY)
    nv_o, nv_lse = naive(xs, ys, 2, SYMPY)
    ok = p.check("two-pass (max-shifted, v2) = naive (v1), 4 keys, Max symbolic", operator_free("thm3 two-pass", lambda:
                 all(is_zero(a - b) for a, b in zip(two_o, naive_o)) and is_zero(sp.exp(two_lse) - z)
                 and all(is_zero(a - b) for a, b in zip(nv_o, naive_o)) and is_zero(sp.exp(nv_lse) - z)))
    # --- online and block-wise with the operator: every pattern of 3 keys x every split; 4 keys sampled
    def variants(case, rep, n_keys):
        s = H.case_m(case, rep)
        v = _values(n_keys, 2, rep)
        for name, got in [("two-pass", two_pass(s, v, 2, SYMPY)), ("one-pass online", online(F, s, v, 2, SYMPY))] + \
                         [(f"block-wise {sizes}", blocked(F, s, v, 2, sizes, SYMPY)) for sizes in compositions(n_keys)]:
            errs = _agree(got, s, v, 2)
            if errs:
                return [f"{name}: {errs[0]}"]
        return []

    ok &= H.by_cases(p, "two-pass, one-pass online and block-wise (all 4 splits) = naive, rows of 3 keys, all "
                        "26 patterns of tied and masked logits (empty row included)",
                     H.cases(3), lambda c, r: variants(c, r, 3), reps=1)
    pats4 = H.cases(4)[::12]
    ok &= H.by_cases(p, f"... rows of 4 keys, all 8 block splits, {len(pats4)} of the 150 patterns",
                     pats4, lambda c, r: variants(c, r, 4), reps=1)
    if stop_on_failure and not ok:
        return p

    def max_symbolic():
        errs = []
        o1, l1 = online(F, xs, ys, 2, SYMPY)
        if not (all(is_zero(a - b) for a, b in zip(o1, naive_o)) and is_zero(sp.exp(l1) - z)):
            errs.append("one-pass online != naive")
        return errs

    ok &= H.record(p, "one-pass online = naive, 4 keys, Max left symbolic (no case split)", max_symbolic,
                  undecidable_ok="the operator branches on the order of the maxima; the patterns above cover it")
    if stop_on_failure and not ok:
        return p
    # --- symbolic length n
    j = sp.Symbol("j", integer=True)
    nn = sp.Symbol("n", integer=True, positive=True)
    s, v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    M = sp.Symbol("M", real=True)
    naive_num, naive_den = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, nn)), sp.Sum(sp.exp(s[j]), (j, 1, nn))
    two_num, two_den = sp.Sum(sp.exp(s[j] - M) * v[j], (j, 1, nn)), sp.Sum(sp.exp(s[j] - M), (j, 1, nn))
    ok &= p.check("two-pass = naive for rows of symbolic length n (any shift M)",
                  operator_free("thm3 two-pass n", lambda: sums_equal(two_num * naive_den, naive_num * two_den)
                                and sums_equal(sp.exp(M) * two_den, naive_den)))
    # induction on n: state(1..n) (+) state(key n+1) = state(1..n+1), in every case of the step
    V = sp.IndexedBase("V", real=True)
    width = 3

    def step(case, rep):
        mn, x = H.case_m(case, rep)  # the prefix's max and the new key's logit (-oo: empty / masked)
        vk = [V[nn + 1, c] for c in range(width)]
        if mn == -sp.oo:
            prefix = spec.identity(width, SYMPY)  # all n keys so far masked
        else:
            prefix = State(mn, sp.Sum(sp.exp(s[j] - mn), (j, 1, nn)),
                           [sp.Sum(sp.exp(s[j] - mn) * V[j, c], (j, 1, nn)) for c in range(width)])
        key = spec.block_state([x], [vk], width, SYMPY)
        got = F(prefix, key, SYMPY)
        if mn == -sp.oo and x == -sp.oo:
            return [] if H.merge_errors(got, (prefix, key), (mn, x)) == [] else [f"state = {tuple(got)} != (-oo, 0, 0)"]
        Mx = sp.Max(*[m_ for m_ in (mn, x) if m_ != -sp.oo])
        want_l = (sp.Sum(sp.exp(s[j] - Mx), (j, 1, nn)) if mn != -sp.oo else 0) + (sp.exp(x - Mx) if x != -sp.oo else 0)
        if not exact_equal(got.m, Mx):
            return [f"m = {got.m} != max = {Mx}"]
        if not sums_equal(got.l, want_l):
            return [f"l = {got.l} != sum over keys 1..n+1 of e^(s_j - m)"]
        t, holders = H.componentwise(got.acc, [prefix.acc, key.acc])
        if t is None:
            return [holders]
        acc0 = t.xreplace({h: acc[0] for h, acc in zip(holders, (prefix.acc, key.acc))})
        want = (sp.Sum(sp.exp(s[j] - Mx) * V[j, 0], (j, 1, nn)) if mn != -sp.oo else 0) + \
               (sp.exp(x - Mx) * V[nn + 1, 0] if x != -sp.oo else 0)
        return [] if sums_equal(acc0, want) else ["acc != sum over keys 1..n+1 of e^(s_j - m) v_j"]

    base = spec.block_state([s[1]], [[v[1]]], 1, SYMPY)
    base_ok = is_zero(base.l - 1) and is_zero(base.acc[0] - v[1]) and base.m == s[1]
    ok &= p.check("one-pass online = naive for symbolic n: induction base (n = 1)", base_ok)
    ok &= H.by_cases(p, "... induction step n -> n+1 through the operator, all 6 cases (key above, tied with, "
                        "below the running max; key masked; all n keys masked; both), width 3, every column "
                        "one function of its own", H.cases(2), step, reps=0)
    p.step("Two-pass vs naive: $e^{-M}$ factors out of numerator and denominator (linearity), for "
           "any $M$.", r"\frac{\sum_j e^{s_j-M}v_j}{\sum_j e^{s_j-M}}=\frac{e^{-M}\sum_j e^{s_j}v_j}{e^{-M}\sum_j e^{s_j}}")
    p.step("Online vs naive, induction on $n$: the state after $n$ keys is $\\mathrm{state}(s_{1..n})$; "
           "merging the state of key $n+1$ gives $\\mathrm{state}(s_{1..n+1})$, checked with a symbolic $n$ "
           "in each case of the step (the new logit above, equal to or below the running max, masked, or all "
           "earlier keys masked); finalize of $\\mathrm{state}(s_{1..n})$ is the naive result. Block-wise is "
           "the same with blocks (theorem 2's homomorphism).",
           r"\mathrm{state}(s_{1..n})\oplus\mathrm{state}(s_{n+1})=\mathrm{state}(s_{1..n+1})")
    res, why = H.attempt(_numeric, F)
    p.check("all four variants agree at 40 random rows with mpmath (logits up to +-700)", bool(res and res[0]),
            kind="numeric", detail=res[1] if res else f"{why[0]}: {why[1]}")
    return p


def _numeric(merge):
    rng = random.Random(3)
    worst = mpmath.mpf(0)
    with mpmath.workdps(60):
        for _ in range(40):
            n = rng.randint(1, 10)
            xs = [mpmath.mpf(rng.uniform(-700, 700)) for _ in range(n)]
            ys = [[mpmath.mpf(rng.uniform(-3, 3))] for _ in range(n)]
            o0, l0 = naive(xs, ys, 1, MP)
            two, lt = two_pass(xs, ys, 1, MP)
            one, lse1 = online(merge, xs, ys, 1, MP)
            cuts = sorted(rng.sample(range(1, n), rng.randint(0, n - 1))) if n > 1 else []
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
            blk, lse2 = blocked(merge, xs, ys, 1, sizes, MP)
            worst = max(worst, abs(two[0] - o0[0]), abs(one[0] - o0[0]), abs(blk[0] - o0[0]),
                        abs(lt - l0), abs(lse1 - l0), abs(lse2 - l0))
    return worst < mpmath.mpf(10) ** -40, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

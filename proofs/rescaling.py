"""Theorem 1: the online-softmax rescaling identity, for key blocks of symbolic length.

For blocks A1 = (1..a) and A2 = (a+1..a+b) of logits s_j and values v_j, any shifts m1, m2 and
m = max(m1, m2) (any m works: the shift cancels), with l_i = sum_{A_i} e^{s_j - m_i}:

    softmax([A1, A2]) = [alpha softmax(A1), beta softmax(A2)],
    softmax([A1, A2]) [V1; V2] = alpha softmax(A1) V1 + beta softmax(A2) V2,
    alpha = l1 e^{m1 - m} / l,  beta = l2 e^{m2 - m} / l,  l = sum_{A1 ++ A2} e^{s_j - m}.

The merge operator under test (default flashproof.spec.merge) must realise it: finalize of the
merge of the two block states equals the softmax-weighted sum over the concatenation.
"""
from __future__ import annotations

import random
import sys

import mpmath
import sympy as sp

from flashproof import spec

from . import harness as H
from .core import MP as _MP, SYMPY, Proof, exact_equal, is_zero, operator_free, proof_main, sums_equal, timed

__all__ = ["prove", "main", "STATEMENT", "WIDTHS"]

#: accumulator widths of the symbolic-length check (theorem 2 covers every width in harness.WIDTHS)
WIDTHS = (1, 3, 65)

STATEMENT = (
    r"For blocks $A_1=(1..a)$, $A_2=(a+1..a+b)$ of symbolic lengths, shifts $m_1,m_2$, "
    r"$m=\max(m_1,m_2)$, $\ell_i=\sum_{j\in A_i}e^{s_j-m_i}$, $\ell=\sum_{j\in A_1\|A_2}e^{s_j-m}$: "
    r"$\mathrm{softmax}([A_1,A_2])=[\alpha\,\mathrm{softmax}(A_1),\ \beta\,\mathrm{softmax}(A_2)]$ and "
    r"$\mathrm{softmax}([A_1,A_2])\begin{bmatrix}V_1\\V_2\end{bmatrix}=\alpha\,\mathrm{softmax}(A_1)V_1"
    r"+\beta\,\mathrm{softmax}(A_2)V_2$ with $\alpha=\ell_1e^{m_1-m}/\ell$, $\beta=\ell_2e^{m_2-m}/\ell$; "
    r"and $\mathrm{finalize}(\mathrm{state}(A_1)\oplus\mathrm{state}(A_2))$ equals it, for the merge under test, "
    r"in every case of the shifts ($m_1<m_2$, $m_1=m_2$, $m_1>m_2$, either or both blocks empty), every "
    r"accumulator column at widths 1, 3 and 65."
)


@timed
def prove(merge=spec.merge, *, stop_on_failure=False) -> Proof:
    """Prove theorem 1 for the merge operator ``merge`` (a wrong one must make this FAIL)."""
    p = Proof("rescaling", "Rescaling identity of blockwise softmax (theorem 1)", STATEMENT)
    j, k = sp.symbols("j k", integer=True)
    a, b = sp.symbols("a b", integer=True, positive=True)
    s, v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    m1, m2 = sp.symbols("m1 m2", real=True)
    m = sp.Max(m1, m2)
    l1 = sp.Sum(sp.exp(s[j] - m1), (j, 1, a))
    l2 = sp.Sum(sp.exp(s[j] - m2), (j, a + 1, a + b))
    l = sp.Sum(sp.exp(s[j] - m), (j, 1, a + b))
    alpha = l1 * sp.exp(m1 - m) / l
    beta = l2 * sp.exp(m2 - m) / l
    # (i) the normaliser splits: l = e^{m1-m} l1 + e^{m2-m} l2 (linearity + range join), for any m
    p.step("Linearity of finite sums and joining adjacent ranges give, for any shifts:",
           r"e^{m_1-m}\ell_1+e^{m_2-m}\ell_2=\sum_{j=1}^{a}e^{s_j-m}+\sum_{j=a+1}^{a+b}e^{s_j-m}=\ell")
    ok = p.check("l = e^{m1-m} l1 + e^{m2-m} l2 (symbolic lengths a, b; m = Max(m1, m2) left symbolic)",
                 operator_free("thm1 l split", lambda: sums_equal(sp.exp(m1 - m) * l1 + sp.exp(m2 - m) * l2, l)))
    mm = sp.Symbol("mu", real=True)
    lmu = sp.Sum(sp.exp(s[j] - mm), (j, 1, a + b))
    ok &= p.check("... and for an arbitrary common shift mu (no case split on which block holds the max)",
                  operator_free("thm1 l split mu", lambda: sums_equal(
                      sp.exp(m1 - mm) * l1 + sp.exp(m2 - mm) * sp.Sum(sp.exp(s[j] - m2), (j, a + 1, a + b)), lmu)))
    # (ii) probabilities: for j in A1, e^{s_j-m}/l = alpha e^{s_j-m1}/l1 (and A2 likewise)
    sm1 = sp.exp(s[k] - m1) / l1
    sm2 = sp.exp(s[k] - m2) / l2
    ok &= p.check("softmax([A1,A2])_k = alpha softmax(A1)_k for k in A1",
                  operator_free("thm1 alpha", lambda: is_zero(sp.exp(s[k] - m) / l - alpha * sm1)))
    ok &= p.check("softmax([A1,A2])_k = beta softmax(A2)_k for k in A2",
                  operator_free("thm1 beta", lambda: is_zero(sp.exp(s[k] - m) / l - beta * sm2)))
    p.step("Per key, the common factor cancels:",
           r"\frac{e^{s_k-m}}{\ell}=\frac{\ell_1e^{m_1-m}}{\ell}\cdot\frac{e^{s_k-m_1}}{\ell_1}")
    # (iii) the weighted sum
    o = sp.Sum(sp.exp(s[j] - m) * v[j], (j, 1, a + b)) / l
    o1 = sp.Sum(sp.exp(s[j] - m1) * v[j], (j, 1, a)) / l1
    o2 = sp.Sum(sp.exp(s[j] - m2) * v[j], (j, a + 1, a + b)) / l2
    ok &= p.check("softmax([A1,A2])[V1;V2] = alpha softmax(A1)V1 + beta softmax(A2)V2 (symbolic lengths)",
                  operator_free("thm1 weighted sum", lambda: sums_equal(o * l, (alpha * o1 + beta * o2) * l)))
    p.step("Multiplying by l and using linearity:",
           r"\sum_{j\in A_1\|A_2}e^{s_j-m}v_j=e^{m_1-m}\sum_{A_1}e^{s_j-m_1}v_j+e^{m_2-m}\sum_{A_2}e^{s_j-m_2}v_j")
    if stop_on_failure and not ok:
        return p
    F = H.guard(merge)
    V = sp.IndexedBase("V", real=True)  # value matrix: V[j, c] is column c of key j
    # (iv) the operator realises it: finalize(state(A1) (+) state(A2)), symbolic lengths, by cases
    def realise(case, rep):
        ma, mb = H.case_m(case, rep)
        proven_l, proven_t = set(), set()  # already proved at an earlier width: a repeat needs no proof
        for w in WIDTHS:
            st = [spec.identity(w, SYMPY) if mk == -sp.oo else
                  spec.State(mk, sp.Sum(sp.exp(s[j] - mk), (j, lo, hi)),
                             [sp.Sum(sp.exp(s[j] - mk) * V[j, c], (j, lo, hi)) for c in range(w)])
                  for mk, lo, hi in ((ma, 1, a), (mb, a + 1, a + b))]
            mg = F(st[0], st[1], SYMPY)
            live = [(mk, lo, hi) for mk, lo, hi in ((ma, 1, a), (mb, a + 1, a + b)) if mk != -sp.oo]
            if not live:
                o_m, lse_m = spec.finalize(mg, SYMPY)
                if not (exact_equal(lse_m, -sp.oo) and all(exact_equal(x, 0) for x in o_m)):
                    return [f"width {w}: finalize(empty + empty) = ({o_m}, {lse_m}), not (0, -oo)"]
                continue
            M = sp.Max(*[mk for mk, _, _ in live])
            l_cat = sum(sp.Sum(sp.exp(s[j] - M), (j, lo, hi)) for _, lo, hi in live)
            if not exact_equal(mg.m, M):
                return [f"width {w}: the merged shift is {mg.m}, not max(m1, m2) = {M}"]
            if mg.l not in proven_l and not sums_equal(mg.l, l_cat):
                return [f"width {w}: l != the l of the concatenation"]
            t, holders = H.componentwise(mg.acc, [x.acc for x in st])
            if t is None:
                return [f"width {w}: {holders}"]
            acc0 = t.xreplace({h: x.acc[0] for h, x in zip(holders, st)})
            want = sum(sp.Sum(sp.exp(s[j] - M) * V[j, 0], (j, lo, hi)) for _, lo, hi in live)
            if t not in proven_t and not sums_equal(acc0, want):
                return [f"width {w}: acc/l is not the softmax-weighted sum of the concatenation"]
            proven_l.add(mg.l)
            proven_t.add(t)
        return []

    ok &= H.by_cases(p, f"merge: finalize(state(A1) + state(A2)) = (softmax([A1,A2])[V1;V2], lse), blocks of "
                        f"symbolic length, all 6 cases of the shifts (m1 = m2 tie; A1, A2 or both empty), "
                        f"accumulator widths {', '.join(map(str, WIDTHS))} (every column one function of its own)",
                     H.cases(2), realise, reps=0)
    p.step("The operator: in every case of the split (theorem 2's harness: $m_1<m_2$, $m_1=m_2$, $m_1>m_2$, "
           "either block or both empty) the merged state is $(m,\\ell,\\ell\\,o)$ with $m=\\max(m_1,m_2)$, "
           "so finalize gives $(o, m+\\log\\ell)$, the softmax-weighted sum and the LSE of the concatenation. "
           "Every accumulator column is the same function of its own column (checked), so column 0's "
           "identity proves every column; theorem 2 covers every width in $W$ and a symbolic width.")
    if stop_on_failure and not ok:
        return p
    # (v) concrete blocks through spec.block_state: every pattern of ties and masked keys, plus mpmath
    def blocks(case, rep, n1):
        xs = H.case_m(case, rep)
        ys = [[sp.Symbol(f"y{i}_{c}", real=True) for c in range(2)] for i in range(len(xs))] if rep is None else \
             [[sp.Rational(((3 * i + c + rep) % 5) - 2, 3) for c in range(2)] for i in range(len(xs))]
        s1 = spec.block_state(xs[:n1], ys[:n1], 2, SYMPY)
        s2 = spec.block_state(xs[n1:], ys[n1:], 2, SYMPY)
        live = [(x, y) for x, y in zip(xs, ys) if x != -sp.oo]
        mg = F(s1, s2, SYMPY)
        o_m, lse_m = spec.finalize(mg, SYMPY)
        if not live:
            ok_ = exact_equal(lse_m, -sp.oo) and all(exact_equal(x, 0) for x in o_m)
            return [] if ok_ else [f"all keys masked: finalize = ({o_m}, {lse_m}), not (0, -oo)"]
        z = sum(sp.exp(x) for x, _ in live)
        # o = acc / l and lse = m + log l with e^m l = sum e^s and e^m acc = sum e^s v: no quotient to simplify
        if not exact_equal(sp.exp(mg.m) * mg.l, z):
            return [f"e^m l = {sp.exp(mg.m) * mg.l} != sum exp(s)"]
        for c in range(2):
            if not exact_equal(sp.exp(mg.m) * mg.acc[c], sum(sp.exp(x) * y[c] for x, y in live)):
                return [f"e^m acc[{c}] = {sp.exp(mg.m) * mg.acc[c]} != sum exp(s) v"]
            if not exact_equal(o_m[c] * mg.l, mg.acc[c]):
                return [f"finalize: o[{c}] = {o_m[c]} != acc/l"]
        return [] if exact_equal(sp.exp(lse_m), z) else [f"exp(lse) = exp({lse_m}) != sum exp(s)"]

    for n1, n2 in ((1, 1), (2, 1), (1, 2), (2, 2)):
        pats = H.cases(n1 + n2)
        pats = pats if n1 + n2 < 4 else pats[::5]
        ok &= H.by_cases(p, f"spec.block_state blocks of {n1}+{n2} keys: finalize(merge) = softmax(S)V, exp(lse) = "
                            f"sum exp(s), {len(pats)} patterns of tied and masked logits",
                         pats, lambda c, r, n1=n1: blocks(c, r, n1), reps=1)
        if stop_on_failure and not ok:
            return p
    rng = random.Random(1)
    res, why = H.attempt(_numeric_rescaling, F, rng)
    p.check("rescaling identity at 20 random (a, b, s, v) with mpmath (50 digits)", bool(res and res[0]),
            kind="numeric", detail=res[1] if res else f"{why[0]}: {why[1]}")
    return p


def _numeric_rescaling(merge, rng):
    worst = mpmath.mpf(0)
    with mpmath.workdps(50):
        for _ in range(20):
            na, nb = rng.randint(1, 6), rng.randint(1, 6)
            s = [mpmath.mpf(rng.uniform(-40, 40)) for _ in range(na + nb)]
            v = [mpmath.mpf(rng.uniform(-3, 3)) for _ in range(na + nb)]
            m1, m2 = max(s[:na]), max(s[na:])
            m = max(m1, m2)
            l1 = mpmath.fsum(mpmath.exp(x - m1) for x in s[:na])
            l2 = mpmath.fsum(mpmath.exp(x - m2) for x in s[na:])
            l = mpmath.fsum(mpmath.exp(x - m) for x in s)
            al, be = l1 * mpmath.exp(m1 - m) / l, l2 * mpmath.exp(m2 - m) / l
            o = mpmath.fsum(mpmath.exp(x - m) * y for x, y in zip(s, v)) / l
            o1 = mpmath.fsum(mpmath.exp(x - m1) * y for x, y in zip(s[:na], v[:na])) / l1
            o2 = mpmath.fsum(mpmath.exp(x - m2) * y for x, y in zip(s[na:], v[na:])) / l2
            worst = max(worst, abs(o - (al * o1 + be * o2)), abs(al + be - 1))
            st1 = spec.State(m1, l1, [o1 * l1])
            st2 = spec.State(m2, l2, [o2 * l2])
            mg = merge(st1, st2, _MP)
            worst = max(worst, abs(mg.acc[0] / mg.l - o), abs(mg.m + mpmath.log(mg.l) - (m + mpmath.log(l))))
    return worst < mpmath.mpf(10) ** -40, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

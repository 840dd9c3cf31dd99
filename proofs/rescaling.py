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

from .core import MP as _MP, SYMPY, Proof, is_zero, spot_check, sums_equal, proof_main, timed

__all__ = ["prove", "main"]

STATEMENT = (
    r"For blocks $A_1=(1..a)$, $A_2=(a+1..a+b)$ of symbolic lengths, shifts $m_1,m_2$, "
    r"$m=\max(m_1,m_2)$, $\ell_i=\sum_{j\in A_i}e^{s_j-m_i}$, $\ell=\sum_{j\in A_1\|A_2}e^{s_j-m}$: "
    r"$\mathrm{softmax}([A_1,A_2])=[\alpha\,\mathrm{softmax}(A_1),\ \beta\,\mathrm{softmax}(A_2)]$ and "
    r"$\mathrm{softmax}([A_1,A_2])\begin{bmatrix}V_1\\V_2\end{bmatrix}=\alpha\,\mathrm{softmax}(A_1)V_1"
    r"+\beta\,\mathrm{softmax}(A_2)V_2$ with $\alpha=\ell_1e^{m_1-m}/\ell$, $\beta=\ell_2e^{m_2-m}/\ell$; "
    r"and $\mathrm{finalize}(\mathrm{state}(A_1)\oplus\mathrm{state}(A_2))$ equals it."
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
                 sums_equal(sp.exp(m1 - m) * l1 + sp.exp(m2 - m) * l2, l))
    mm = sp.Symbol("mu", real=True)
    lmu = sp.Sum(sp.exp(s[j] - mm), (j, 1, a + b))
    ok &= p.check("... and for an arbitrary common shift mu (no case split on which block holds the max)",
                  sums_equal(sp.exp(m1 - mm) * l1 + sp.exp(m2 - mm) * sp.Sum(sp.exp(s[j] - m2), (j, a + 1, a + b)), lmu))
    # (ii) probabilities: for j in A1, e^{s_j-m}/l = alpha e^{s_j-m1}/l1 (and A2 likewise)
    sm1 = sp.exp(s[k] - m1) / l1
    sm2 = sp.exp(s[k] - m2) / l2
    ok &= p.check("softmax([A1,A2])_k = alpha softmax(A1)_k for k in A1",
                  is_zero(sp.exp(s[k] - m) / l - alpha * sm1))
    ok &= p.check("softmax([A1,A2])_k = beta softmax(A2)_k for k in A2",
                  is_zero(sp.exp(s[k] - m) / l - beta * sm2))
    p.step("Per key, the common factor cancels:",
           r"\frac{e^{s_k-m}}{\ell}=\frac{\ell_1e^{m_1-m}}{\ell}\cdot\frac{e^{s_k-m_1}}{\ell_1}")
    # (iii) the weighted sum
    o = sp.Sum(sp.exp(s[j] - m) * v[j], (j, 1, a + b)) / l
    o1 = sp.Sum(sp.exp(s[j] - m1) * v[j], (j, 1, a)) / l1
    o2 = sp.Sum(sp.exp(s[j] - m2) * v[j], (j, a + 1, a + b)) / l2
    ok &= p.check("softmax([A1,A2])[V1;V2] = alpha softmax(A1)V1 + beta softmax(A2)V2 (symbolic lengths)",
                  sums_equal(o * l, (alpha * o1 + beta * o2) * l))
    p.step("Multiplying by l and using linearity:",
           r"\sum_{j\in A_1\|A_2}e^{s_j-m}v_j=e^{m_1-m}\sum_{A_1}e^{s_j-m_1}v_j+e^{m_2-m}\sum_{A_2}e^{s_j-m_2}v_j")
    if stop_on_failure and not ok:
        return p
    # (iv) the operator realises it: finalize(state(A1) (+) state(A2)) on symbolic-length states
    st1 = spec.State(m1, l1, [sp.Sum(sp.exp(s[j] - m1) * v[j], (j, 1, a))])
    st2 = spec.State(m2, l2, [sp.Sum(sp.exp(s[j] - m2) * v[j], (j, a + 1, a + b))])
    mg = merge(st1, st2, SYMPY)
    ok &= p.check("merge: l of state(A1) (+) state(A2) equals the l of the concatenation (shift Max(m1,m2))",
                  sp.simplify(mg.m - m) == 0 and sums_equal(mg.l, l))
    ok &= p.check("merge: acc/l equals alpha o1 + beta o2 (the rescaling identity)",
                  sums_equal(mg.acc[0] / mg.l * l, (alpha * o1 + beta * o2) * l))
    p.step("The operator: with m = max(m1, m2) the merged state is (m, l, l o), so finalize gives "
           "(o, m + log l), the softmax-weighted sum and the LSE of the concatenation.")
    if stop_on_failure and not ok:
        return p
    # (v) concrete blocks through spec.block_state, plus mpmath spot checks
    rng = random.Random(1)
    for n1, n2 in ((1, 1), (2, 1), (1, 3), (2, 2)):
        xs = sp.symbols(f"x1:{n1 + n2 + 1}", real=True)
        ys = sp.symbols(f"y1:{n1 + n2 + 1}", real=True)
        s1 = spec.block_state(list(xs[:n1]), [[y] for y in ys[:n1]], 1, SYMPY)
        s2 = spec.block_state(list(xs[n1:]), [[y] for y in ys[n1:]], 1, SYMPY)
        o_m, lse_m = spec.finalize(merge(s1, s2, SYMPY), SYMPY)
        z = sum(sp.exp(x) for x in xs)
        o_ref = sum(sp.exp(x) * y for x, y in zip(xs, ys)) / z
        ok_sym = is_zero(o_m[0] - o_ref) and is_zero(sp.exp(lse_m) - z)
        ok_num, det = spot_check([o_m[0], sp.exp(lse_m)], [o_ref, z], list(xs) + list(ys),
                                 n=6, seed=rng.randrange(10 ** 6))
        ok &= p.check(f"spec.block_state blocks of {n1}+{n2} keys: finalize(merge) = softmax(S)V, "
                      f"exp(lse) = sum exp(s)", ok_sym)
        ok &= p.check(f"... mpmath spot check ({n1}+{n2} keys)", ok_num, kind="numeric", detail=det)
        if stop_on_failure and not ok:
            return p
    # mpmath spot check of the symbolic-length identity at concrete lengths
    ok_num = _numeric_rescaling(merge, rng)
    p.check("rescaling identity at 20 random (a, b, s, v) with mpmath (50 digits)", ok_num[0],
            kind="numeric", detail=ok_num[1])
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

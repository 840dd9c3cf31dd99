"""Theorem 4: the attention backward, derived by SymPy differentiation of the symbolic softmax.

With S = scale Q K^T, P = softmax(S) (rows), O = P V and an upstream gradient dO, SymPy
differentiates the scalar <dO, O> and finds dS = P o (dP - D) with dP = dO V^T and
D_i = rowsum(dO o O) = rowsum(P o dP); dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q.
P recomputed from the LSE, exp(S - LSE), equals the forward P, and d LSE / d S = P.
"""
from __future__ import annotations

import random
import sys

import mpmath
import sympy as sp

from .core import Proof, is_zero, spot_check, sums_equal, proof_main, timed

__all__ = ["prove", "main", "STATEMENT"]

STATEMENT = (
    r"For $P=\mathrm{softmax}(S)$ row-wise, $O=PV$ and upstream $dO$: $\frac{\partial\langle dO,O\rangle}"
    r"{\partial S}=dS=P\circ(dP-D\mathbf 1^\top)$ with $dP=dO\,V^\top$ and $D_i=\sum_e dO_{ie}O_{ie}="
    r"\sum_j P_{ij}dP_{ij}$; $dV=P^\top dO$, $dQ=\sigma\,dS\,K$, $dK=\sigma\,dS^\top Q$ for $S=\sigma QK^\top$; "
    r"$\exp(S-\mathrm{LSE})=P$ and $\partial\,\mathrm{LSE}/\partial S=P$. Also for rows of symbolic length."
)


@timed
def prove() -> Proof:
    p = Proof("backward", "Backward: dS = P o (dP - D), P from the LSE (theorem 4)", STATEMENT)
    lq, lk, e, ev = 2, 3, 2, 2
    Q = sp.Matrix(lq, e, lambda i, c: sp.Symbol(f"q{i}{c}", real=True))
    Kk = sp.Matrix(lk, e, lambda j, c: sp.Symbol(f"k{j}{c}", real=True))
    V = sp.Matrix(lk, ev, lambda j, c: sp.Symbol(f"v{j}{c}", real=True))
    dO = sp.Matrix(lq, ev, lambda i, c: sp.Symbol(f"g{i}{c}", real=True))
    sigma = sp.Symbol("sigma", positive=True)
    S = sp.Matrix(lq, lk, lambda i, j: sp.Symbol(f"s{i}{j}", real=True))
    Z = [sum(sp.exp(S[i, j]) for j in range(lk)) for i in range(lq)]
    P = sp.Matrix(lq, lk, lambda i, j: sp.exp(S[i, j]) / Z[i])
    O = P * V
    loss = sum(dO[i, c] * O[i, c] for i in range(lq) for c in range(ev))
    dP = dO * V.T
    D = [sum(dO[i, c] * O[i, c] for c in range(ev)) for i in range(lq)]
    D2 = [sum(P[i, j] * dP[i, j] for j in range(lk)) for i in range(lq)]
    dS = sp.Matrix(lq, lk, lambda i, j: P[i, j] * (dP[i, j] - D[i]))
    grad = sp.Matrix(lq, lk, lambda i, j: sp.diff(loss, S[i, j]))
    p.check("SymPy d<dO, O>/dS equals P o (dP - D), 2x3 scores, Ev = 2",
            all(is_zero(grad[i, j] - dS[i, j]) for i in range(lq) for j in range(lk)))
    p.check("D_i = rowsum(dO o O) = rowsum(P o dP)", all(is_zero(a - b) for a, b in zip(D, D2)))
    syms = sorted((S.free_symbols | V.free_symbols | dO.free_symbols), key=lambda x: x.name)
    ok_n, det = spot_check(list(grad), list(dS), syms, n=5, seed=11)
    p.check("... mpmath spot check of dS", ok_n, kind="numeric", detail=det)
    p.step("Differentiate the scalar $\\langle dO, O\\rangle$ through the row softmax: "
           "$\\partial P_{ij}/\\partial S_{ik}=P_{ij}(\\delta_{jk}-P_{ik})$, so",
           r"\frac{\partial\langle dO,O\rangle}{\partial S_{ik}}=\sum_j dP_{ij}P_{ij}(\delta_{jk}-P_{ik})"
           r"=P_{ik}\Big(dP_{ik}-\sum_j P_{ij}dP_{ij}\Big),\quad \sum_jP_{ij}dP_{ij}=\sum_e dO_{ie}O_{ie}")
    # dV, dQ, dK through S = sigma Q K^T
    Sq = sigma * Q * Kk.T
    Zq = [sum(sp.exp(Sq[i, j]) for j in range(lk)) for i in range(lq)]
    Pq = sp.Matrix(lq, lk, lambda i, j: sp.exp(Sq[i, j]) / Zq[i])
    Oq = Pq * V
    lossq = sum(dO[i, c] * Oq[i, c] for i in range(lq) for c in range(ev))
    dPq = dO * V.T
    Dq = [sum(dO[i, c] * Oq[i, c] for c in range(ev)) for i in range(lq)]
    dSq = sp.Matrix(lq, lk, lambda i, j: Pq[i, j] * (dPq[i, j] - Dq[i]))
    dQ, dK, dV = sigma * dSq * Kk, sigma * dSq.T * Q, Pq.T * dO
    gq = [sp.diff(lossq, x) for x in Q]
    gk = [sp.diff(lossq, x) for x in Kk]
    gv = [sp.diff(lossq, x) for x in V]
    syms2 = sorted(Q.free_symbols | Kk.free_symbols | V.free_symbols | dO.free_symbols | {sigma},
                   key=lambda x: x.name)
    okv = all(is_zero(a - b) for a, b in zip(gv, list(dV)))
    p.check("dV = P^T dO (symbolic)", okv)
    ok_q, det_q = spot_check(gq + gk, list(dQ) + list(dK), syms2, n=5, seed=12)
    p.check("dQ = sigma dS K and dK = sigma dS^T Q (mpmath at random points)", ok_q, kind="numeric", detail=det_q)
    p.check("dQ = sigma dS K (symbolic, first row)", all(is_zero(gq[c] - dQ[0, c]) for c in range(e)))
    p.step("Chain rule through $S=\\sigma QK^\\top$.",
           r"dQ=\sigma\,dS\,K,\quad dK=\sigma\,dS^\top Q,\quad dV=P^\top dO")
    # P from the LSE and the gradient of the LSE
    lse = [sp.log(Z[i]) for i in range(lq)]
    p.check("exp(S - LSE) = P (the backward's recomputation equals the forward P)",
            all(is_zero(sp.exp(S[i, j] - lse[i]) - P[i, j]) for i in range(lq) for j in range(lk)))
    p.check("d LSE_i / d S_ij = P_ij", all(is_zero(sp.diff(lse[i], S[i, j]) - P[i, j])
                                           for i in range(lq) for j in range(lk)))
    p.check("d LSE_i / d S_i'j = 0 for i' != i", all(sp.diff(lse[0], S[1, j]) == 0 for j in range(lk)))
    s_syms = sorted(S.free_symbols, key=lambda x: x.name)
    ok_l, det_l = spot_check([sp.exp(S[i, j] - lse[i]) for i in range(lq) for j in range(lk)]
                             + [sp.diff(lse[i], S[i, j]) for i in range(lq) for j in range(lk)],
                             [P[i, j] for i in range(lq) for j in range(lk)] * 2, s_syms, n=6, seed=14)
    p.check("exp(S - LSE) = P and d LSE/dS = P at mpmath random points", ok_l, kind="numeric", detail=det_l)
    p.step("The kernel stores only the LSE; recomputing $P=\\exp(S-\\mathrm{LSE})$ is exact in exact "
           "arithmetic, and the LSE's gradient is the softmax.",
           r"e^{S_{ij}-\log\sum_k e^{S_{ik}}}=P_{ij},\qquad \frac{\partial\,\mathrm{LSE}_i}{\partial S_{ij}}=P_{ij}")
    # symbolic length n: one row, scalar v and dO
    j, kk = sp.symbols("j k", integer=True, positive=True)
    n = sp.Symbol("n", integer=True, positive=True)
    s, v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    g = sp.Symbol("g", real=True)
    Zs = sp.Sum(sp.exp(s[j]), (j, 1, n))
    Os = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, n)) / Zs
    grad_k = sp.diff(g * Os, s[kk]).doit()
    grad_k = _inrange(grad_k, kk, n)
    pk = sp.exp(s[kk]) / Zs
    dSk = pk * (g * v[kk] - g * Os)
    p.check("row of symbolic length n: d(g o)/d s_k = P_k (dP_k - D), D = g o",
            sums_equal(grad_k * Zs ** 2, dSk * Zs ** 2))
    dl = _inrange(sp.diff(sp.log(Zs), s[kk]).doit(), kk, n)
    p.check("row of symbolic length n: d LSE / d s_k = P_k", sums_equal(dl * Zs, pk * Zs))
    # mpmath check of dS on random rows with large logits
    ok_fd, det_fd = _fd_check()
    p.check("dS formula vs mpmath finite differences (30 rows, 80 digits)", ok_fd, kind="numeric", detail=det_fd)
    # masked keys: P = 0 there, so dS = 0 and nothing flows to masked keys
    p.step("Masked keys have $P_{ij}=0$, hence $dS_{ij}=0$; an empty row has no $P$ and its "
           "gradients are 0 by the spec.")
    return p


def _inrange(expr, k, n):
    """Resolve Piecewise((f, k <= n), (0, True)) for an index known to lie in 1..n."""
    return expr.replace(lambda x: isinstance(x, sp.Piecewise),
                        lambda x: x.args[0][0] if x.args[0][1] in (sp.Le(k, n), sp.Ge(n, k)) else x)


def _fd_check():
    rng = random.Random(13)
    worst = mpmath.mpf(0)
    with mpmath.workdps(80):
        for _ in range(30):
            n = rng.randint(1, 6)
            s = [mpmath.mpf(rng.uniform(-50, 50)) for _ in range(n)]
            v = [mpmath.mpf(rng.uniform(-3, 3)) for _ in range(n)]
            g = mpmath.mpf(rng.uniform(-2, 2))

            def f(x):
                m = max(x)
                w = [mpmath.exp(t - m) for t in x]
                return g * mpmath.fsum(a * b for a, b in zip(w, v)) / mpmath.fsum(w)

            m = max(s)
            w = [mpmath.exp(t - m) for t in s]
            z = mpmath.fsum(w)
            P = [x / z for x in w]
            o = mpmath.fsum(a * b for a, b in zip(P, v))
            h = mpmath.mpf(10) ** -30
            for k in range(n):
                sp_ = list(s)
                sm = list(s)
                sp_[k] += h
                sm[k] -= h
                fd = (f(sp_) - f(sm)) / (2 * h)
                worst = max(worst, abs(fd - P[k] * (g * v[k] - g * o)))
    return worst < mpmath.mpf(10) ** -40, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

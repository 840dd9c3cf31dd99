"""Theorem 5: rotary position embeddings (RoPE) make logits depend only on relative position.

RoPE rotates each coordinate pair (interleaved (2i, 2i+1), or GPT-NeoX "half" (i, i + d/2)) of a
query/key at position p by the angle p theta_i. Then q_m . k_n depends only on m - n; moving
cached keys from positions p to p + Delta is the rotation R(Delta theta) of the stored keys; and
since values are never rotated and queries are computed at their own positions, attention with
all positions shifted by Delta is unchanged.
"""
from __future__ import annotations

import random
import sys

import mpmath
import sympy as sp

from .core import Proof, is_zero, spot_check, proof_main, timed

__all__ = ["prove", "main", "STATEMENT", "rope"]

STATEMENT = (
    r"With $R_p=\mathrm{diag}_i\,R(p\theta_i)$ acting on coordinate pairs (interleaved or half-split): "
    r"$(R_mq)\cdot(R_nk)=q\cdot R_{n-m}k$ depends only on $m-n$; $R_{p+\Delta}k=R_\Delta(R_pk)$, so moving "
    r"cached keys from $p$ to $p+\Delta$ is a rotation of the stored keys by $R_\Delta$; values are "
    r"untouched and queries are rotated at their own positions, so shifting every position by $\Delta$ "
    r"leaves logits, softmax and outputs unchanged."
)


def rot2(a):
    return sp.Matrix([[sp.cos(a), -sp.sin(a)], [sp.sin(a), sp.cos(a)]])


def pairs(d, style):
    half = d // 2
    return [(2 * i, 2 * i + 1) for i in range(half)] if style == "interleaved" else [(i, i + half) for i in range(half)]


def rope(x, pos, thetas, style="interleaved"):
    """Apply RoPE at position ``pos`` to the column vector ``x`` (SymPy or mpmath values)."""
    out = list(x)
    for (a, b), th in zip(pairs(len(x), style), thetas):
        c, s_ = sp.cos(pos * th), sp.sin(pos * th)
        out[a] = c * x[a] - s_ * x[b]
        out[b] = s_ * x[a] + c * x[b]
    return sp.Matrix(out)


@timed
def prove() -> Proof:
    p = Proof("rope", "RoPE: relative positions and cache re-positioning (theorem 5)", STATEMENT)
    t = sp.Symbol("theta", real=True)
    m, n, d = sp.symbols("m n Delta", real=True)
    # one pair, fully symbolic
    q2 = sp.Matrix(sp.symbols("q0 q1", real=True))
    k2 = sp.Matrix(sp.symbols("k0 k1", real=True))
    lhs = (rot2(m * t) * q2).dot(rot2(n * t) * k2)
    rhs = q2.dot(rot2((n - m) * t) * k2)
    ok1 = is_zero(sp.expand_trig(sp.expand(lhs - rhs)))
    p.check("one pair: (R(m th) q) . (R(n th) k) = q . R((n-m) th) k", ok1)
    shifted = sp.simplify(sp.expand_trig(lhs.subs({m: m + d, n: n + d}) - lhs))
    p.check("one pair: shifting m and n by the same Delta leaves the logit unchanged", shifted == 0)
    p.check("one pair: R((p+Delta) th) k = R(Delta th) R(p th) k",
            all(is_zero(sp.expand_trig(x)) for x in (rot2((m + d) * t) * k2 - rot2(d * t) * rot2(m * t) * k2)))
    p.check("one pair: R(a)^T R(b) = R(b - a) (rotation group law)",
            all(is_zero(sp.expand_trig(x)) for x in (rot2(m * t).T * rot2(n * t) - rot2((n - m) * t))))
    p.step("Per coordinate pair, rotations compose: $R(a)^\\top R(b)=R(b-a)$ and $R(a+b)=R(a)R(b)$, hence",
           r"(R_m q)\cdot(R_n k)=q^\top R_m^\top R_n k=q^\top R_{n-m}k,\qquad R_{p+\Delta}k=R_\Delta R_p k")
    # full head dim d = 6, both conventions, distinct frequencies
    thetas = sp.symbols("th0:3", real=True)
    qv = sp.Matrix(sp.symbols("a0:6", real=True))
    kv = sp.Matrix(sp.symbols("b0:6", real=True))
    for style in ("interleaved", "half"):
        l6 = rope(qv, m, thetas, style).dot(rope(kv, n, thetas, style))
        r6 = sum(_pair_dot(qv, kv, a, b, (n - m) * th) for (a, b), th in zip(pairs(6, style), thetas))
        p.check(f"d = 6, {style} pairs: q_m . k_n = sum_i q_i . R((n-m) th_i) k_i",
                is_zero(sp.expand_trig(sp.expand(l6 - r6))))
        moved = rope(kv, m + d, thetas, style) - rope(rope(kv, m, thetas, style), d, thetas, style)
        p.check(f"d = 6, {style} pairs: moving a cached key by Delta = rotating it by R(Delta)",
                all(is_zero(sp.expand_trig(sp.expand(x))) for x in moved))
    # attention invariance: values untouched, all positions shifted by Delta
    ok_att = _numeric_attention()
    p.check("attention output unchanged when every position shifts by Delta and cached keys are "
            "rotated by R(Delta) (values untouched), mpmath, 10 random cases", ok_att[0],
            kind="numeric", detail=ok_att[1])
    syms = [m, n, t] + list(q2) + list(k2)
    ok_n, det = spot_check(lhs, rhs, syms, n=8, seed=21)
    p.check("one-pair identity at mpmath random points", ok_n, kind="numeric", detail=det)
    p.step("Values are never rotated and softmax/weighted sums only see the logits, so the output "
           "is a function of the relative positions only; re-positioning a KV cache by $\\Delta$ needs "
           "exactly one rotation $R_\\Delta$ of the stored keys and nothing else.")
    return p


def _pair_dot(q, k, a, b, ang):
    kr = rot2(ang) * sp.Matrix([k[a], k[b]])
    return q[a] * kr[0] + q[b] * kr[1]


def _numeric_attention():
    rng = random.Random(22)
    worst = mpmath.mpf(0)
    with mpmath.workdps(40):
        for _ in range(10):
            dim, nk = 4, rng.randint(1, 5)
            th = [mpmath.mpf(10000) ** (-mpmath.mpf(2 * i) / dim) for i in range(dim // 2)]
            style = rng.choice(["interleaved", "half"])
            q = [mpmath.mpf(rng.uniform(-2, 2)) for _ in range(dim)]
            ks = [[mpmath.mpf(rng.uniform(-2, 2)) for _ in range(dim)] for _ in range(nk)]
            vs = [mpmath.mpf(rng.uniform(-2, 2)) for _ in range(nk)]
            qpos, kpos = rng.randint(0, 50), [rng.randint(0, 50) for _ in range(nk)]
            delta = rng.randint(-20, 20)

            def rot(x, pos):
                out = list(x)
                for (a, b), t in zip(pairs(dim, style), th):
                    c, s_ = mpmath.cos(pos * t), mpmath.sin(pos * t)
                    out[a], out[b] = c * x[a] - s_ * x[b], s_ * x[a] + c * x[b]
                return out

            def attend(qr, krs):
                logits = [mpmath.fsum(a * b for a, b in zip(qr, kr)) for kr in krs]
                mx = max(logits)
                w = [mpmath.exp(x - mx) for x in logits]
                return mpmath.fsum(a * b for a, b in zip(w, vs)) / mpmath.fsum(w)

            base = attend(rot(q, qpos), [rot(k, p) for k, p in zip(ks, kpos)])
            cached = [rot(k, p) for k, p in zip(ks, kpos)]
            moved = [rot(c, delta) for c in cached]  # re-position the cache: one rotation
            shifted = attend(rot(q, qpos + delta), moved)
            fresh = attend(rot(q, qpos + delta), [rot(k, p + delta) for k, p in zip(ks, kpos)])
            worst = max(worst, abs(base - shifted), abs(base - fresh))
    return worst < mpmath.mpf(10) ** -30, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

"""Theorem 5: rotary position embeddings (RoPE) make logits depend only on relative position.

Runs ON spec's rope code (``spec.apply_rope`` / ``spec.reposition_keys`` on SymPy numbers), as
theorems 1-3 run on spec.merge. RoPE rotates each coordinate pair (interleaved (2i, 2i+1), or
"half" (i, i + d/2)) of a query/key at position p by the angle p θ_i. Then q_m . k_n depends only
on n - m; moving cached keys from positions p to p + Δ is the rotation R(Δ θ) of the stored keys;
and since values are never rotated and queries are rotated at their own positions, attention with
every position shifted by Δ is unchanged.

Also the float64 error of spec's numpy rope (:func:`rope_error_bound`), of a re-encoded cache
against keys encoded at the new positions (:func:`reencoding_error_bound`), and the attention
change a bounded logit change can cause (:func:`attention_shift_bound`): the bounds the reference
tests and the property suite use.
"""
from __future__ import annotations

import random
import sys

import mpmath
import numpy as np
import sympy as sp

from flashproof import spec
from flashproof.spec import HALF, INTERLEAVED, ROPE_STYLES, TrigOps

from .core import Proof, is_zero, proof_main, spot_check, timed

__all__ = ["prove", "main", "STATEMENT", "SYMPY_TRIG", "MPMATH_TRIG", "U64", "C_TRIG", "rope_error_bound",
           "reencoding_error_bound", "attention_shift_bound", "DIMS"]

STATEMENT = (
    r"For `spec.apply_rope` ($R_p=\mathrm{diag}_i\,R(p\theta_i)$ on coordinate pairs, interleaved or half-split): "
    r"$(R_mq)\cdot(R_nk)=q\cdot R_{n-m}k$ depends only on $n-m$; $R_{p+\Delta}k=R_\Delta(R_pk)$, so "
    r"`spec.reposition_keys` (moving cached keys from $p$ to $p+\Delta$) is a rotation of the stored keys by "
    r"$R_\Delta$; values are untouched and queries are rotated at their own positions, so shifting every position "
    r"by $\Delta$ leaves logits, softmax and outputs unchanged. Machine-checked for one pair with symbolic angles, "
    r"for every head dim in {2, 4, 6, 8, 64, 128, 256} through the pair structure of spec's code, and at d = 6 "
    r"in full; the float64 error of spec's rope is at most $(u|p\theta_i|+\rho)(|x_a|+|x_b|)$ per component."
)

SYMPY_TRIG = TrigOps(sp.cos, sp.sin, sp.sympify)
MPMATH_TRIG = TrigOps(mpmath.cos, mpmath.sin, mpmath.mpf)
#: unit roundoff of float64
U64 = 2.0 ** -53
#: smallest float64 subnormal: the absolute error of one operation that underflows
ETA64 = 2.0 ** -1074
#: absolute error of numpy's float64 cos/sin in units of U64: a 1-ulp libm; measured 0.503 on |angle| <= 1e6
#: (tests/test_spec_rope.py::test_numpy_trig_within_the_model re-measures it)
C_TRIG = 1.0
#: head dims whose pair structure is machine-checked
DIMS = (2, 4, 6, 8, 64, 128, 256)


def _rho(u, c_trig):
    """c_trig u (1+u)^2 + (1+u)^2 - 1: a cos/sin (absolute error c_trig u) times x, rounded, then one
    add, rounded; the relative part of one rotated component's error. Written without the
    cancellation of (1+u)^2 - 1 (which is 0 in float64)."""
    return c_trig * u * (1 + u * (2 + u)) + u * (2 + u)


#: the bounds are evaluated in float64 with a handful of operations; this factor rounds them up
_ROUND_UP = 1 + 16 * U64


def _pair_sums(x, style):
    """|x_a| + |x_b| for the pair of every component (array, same shape as x)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    out = np.empty_like(x)
    for a, b in spec.rope_pairs(x.shape[-1], style):
        out[..., a] = out[..., b] = x[..., a] + x[..., b]
    return out


def _angles(x, positions, style, thetas):
    x = np.asarray(x, dtype=np.float64)
    th = np.asarray(spec.rope_frequencies(x.shape[-1]) if thetas is None else thetas, dtype=np.float64)
    ang = np.abs(np.asarray(positions, dtype=np.float64))[..., None] * th  # (..., d/2)
    out = np.empty(np.broadcast_shapes(x.shape, ang.shape[:-1] + (x.shape[-1],)))
    for i, (a, b) in enumerate(spec.rope_pairs(x.shape[-1], style)):
        out[..., a] = out[..., b] = ang[..., i]
    return out


def rope_error_bound(x, positions, *, style=HALF, thetas=None, u=U64, c_trig=C_TRIG, eta=ETA64):
    """Per component, |spec.apply_rope(x, p) in float64 - R(p θ) x exactly| <= (u|p θ_i| + ρ)(|x_a| + |x_b|) + 3η.

    Model (derived in :func:`prove`): fl(p θ) = p θ (1 + δ), |δ| <= u; cos/sin of the rounded angle with
    absolute error <= c_trig u; each * and -/+ rounds with relative u (absolute η if subnormal). θ is the
    float64 frequency both sides use; |cos φ̂ - cos φ| <= |φ̂ - φ| <= u|φ| (mean value theorem)."""
    return ((u * _angles(x, positions, style, thetas) + _rho(u, c_trig)) * _pair_sums(x, style) + 3 * eta) * _ROUND_UP


def reencoding_error_bound(k, positions, delta, *, style=HALF, thetas=None, u=U64, c_trig=C_TRIG, eta=ETA64):
    """Per component, |reposition_keys(apply_rope(k, p), Δ) - apply_rope(k, p + Δ)| in float64.

    Both are within their rotation error of R((p + Δ) θ) k (exact: R(Δ)R(p) = R(p + Δ), theorem 5):
    the first rotation errs by E1 <= (u|pθ| + ρ) s + 3η (s = |k_a| + |k_b|); the rotated
    intermediate has |y_a| + |y_b| <= √2 s + 2 E1; the second rotation adds (u|Δθ| + ρ)(√2 s + 2 E1)
    + 3η and carries E1 into at most 2 E1 per component; the direct path errs by (u|(p+Δ)θ| + ρ) s + 3η.
    Positions and Δ must be integers (so p + Δ is exact)."""
    p, d = np.asarray(positions, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    if not (np.all(p == np.round(p)) and np.all(d == np.round(d)) and np.all(np.abs(p + d) < 2.0 ** 52)):
        raise ValueError("reencoding_error_bound needs integer positions and delta below 2^52")
    rho = _rho(u, c_trig)
    s = _pair_sums(k, style)
    e1 = (u * _angles(k, p, style, thetas) + rho) * s + 3 * eta
    e2 = (u * _angles(k, d, style, thetas) + rho) * (np.sqrt(2.0) * s * (1 + u) + 2 * e1) + 3 * eta
    ef = (u * _angles(k, p + d, style, thetas) + rho) * s + 3 * eta
    return (e2 + 2 * e1 + ef) * _ROUND_UP


def attention_shift_bound(logit_change, spread):
    """|o' - o| <= expm1(2δ) W when every logit moves by at most δ and W = max v - min v (per column).

    π'_j / π_j = e^{ε_j} / Σ_k π_k e^{ε_k} lies in [e^{-2δ}, e^{2δ}], so Σ_j |π'_j - π_j| <= e^{2δ} - 1
    and |o' - o| = |Σ_j (π'_j - π_j)(v_j - o)| <= (e^{2δ} - 1) max_j |v_j - o| <= (e^{2δ} - 1) W."""
    w = np.asarray(spread, dtype=np.float64)
    grow = np.expm1(2 * np.asarray(logit_change, dtype=np.float64))
    # W = 0 (one distinct value in the column): o' = o exactly, whatever δ; never inf * 0 = NaN
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(w == 0, 0.0, grow * w * _ROUND_UP)


def _trig_zero(x) -> bool:
    """x == 0 after distributing the angles (cos(t(m + d)) -> cos(tm + td)) and expanding sums of angles."""
    return is_zero(sp.expand(sp.expand_trig(sp.expand(x))))


def rot2(a):
    return sp.Matrix([[sp.cos(a), -sp.sin(a)], [sp.sin(a), sp.cos(a)]])


def _rope(x, pos, thetas, style):
    return sp.Matrix(spec.apply_rope(list(x), pos, style=style, thetas=list(thetas), ops=SYMPY_TRIG))


def _pair_template(dim, style):
    """Every output pair of spec.apply_rope is the same function of (x_a, x_b, θ_i) and of nothing else."""
    xs = list(sp.symbols(f"x0:{dim}", real=True))
    th = list(sp.symbols(f"th0:{dim // 2}", real=True))
    P, X, Y, T = sp.symbols("P X Y T", real=True)
    out = spec.apply_rope(xs, P, style=style, thetas=th, ops=SYMPY_TRIG)
    pairs = spec.rope_pairs(dim, style)
    if sorted(c for ab in pairs for c in ab) != list(range(dim)):
        return False, "the pairs do not partition the head dim"
    first = None
    for (a, b), t in zip(pairs, th):
        own = {xs[a]: X, xs[b]: Y, t: T}
        for c in (a, b):
            if out[c].free_symbols - {xs[a], xs[b], t, P}:
                return False, f"component {c} depends on other components or frequencies"
        tmpl = (out[a].xreplace(own), out[b].xreplace(own))
        first = first or tmpl
        if tmpl != first:
            return False, f"pair {(a, b)} is computed differently from pair {pairs[0]}"
    want = rot2(P * T) * sp.Matrix([X, Y])
    ok = all(is_zero(g - w) for g, w in zip(first, want))
    return ok, "" if ok else f"pair template {first} is not R(p θ) (x_a, x_b)"


@timed
def prove() -> Proof:
    p = Proof("rope", "RoPE: relative positions and cache re-positioning (theorem 5)", STATEMENT)
    t = sp.Symbol("theta", real=True)
    m, n, d = sp.symbols("m n Delta", real=True)
    # one pair, fully symbolic, through spec's code
    q2 = sp.Matrix(sp.symbols("q0 q1", real=True))
    k2 = sp.Matrix(sp.symbols("k0 k1", real=True))
    for style in ROPE_STYLES:
        lhs = _rope(q2, m, [t], style).dot(_rope(k2, n, [t], style))
        rhs = q2.dot(_rope(k2, n - m, [t], style))
        p.check(f"one pair, spec.apply_rope ({style}): (R(m th) q) . (R(n th) k) = q . R((n-m) th) k",
                (_trig_zero(lhs - rhs)))
        moved = sp.Matrix(spec.reposition_keys(list(_rope(k2, m, [t], style)), d, style=style, thetas=[t],
                                               ops=SYMPY_TRIG)) - _rope(k2, m + d, [t], style)
        p.check(f"one pair ({style}): spec.reposition_keys(R(p th) k, Delta) = R((p+Delta) th) k",
                (all(_trig_zero(x) for x in moved)))
    p.check("R(a)^T R(b) = R(b - a) (rotation group law)",
            (all(_trig_zero(x) for x in (rot2(m * t).T * rot2(n * t) - rot2((n - m) * t)))))
    p.step("Per coordinate pair, rotations compose: $R(a)^\\top R(b)=R(b-a)$ and $R(a+b)=R(a)R(b)$, hence",
           r"(R_m q)\cdot(R_n k)=q^\top R_m^\top R_n k=q^\top R_{n-m}k,\qquad R_{p+\Delta}k=R_\Delta R_p k")
    # every head dim in DIMS: spec's code is the pair rotation on a partition of the coordinates
    bad = [f"d = {dim} {style}: {why}" for dim in DIMS for style in ROPE_STYLES
           for ok, why in [_pair_template(dim, style)] if not ok]
    p.check(f"spec.apply_rope at head dims {DIMS}, both styles: the pairs partition the coordinates and every "
            f"pair is R(p th_i) applied to its own two coordinates (one template, no other inputs)", not bad,
            detail="; ".join(bad))
    p.step("Every head dimension: spec's code rotates each pair by its own frequency and touches nothing "
           "else (checked: one template per pair, the pairs partition the coordinates), so "
           "$(R_mq)\\cdot(R_nk)=\\sum_i (R(m\\theta_i)q_i)\\cdot(R(n\\theta_i)k_i)$ and the one-pair identities "
           "give the head-dim identities; at d = 6 they are also checked in full.")
    # full head dim d = 6, both conventions, distinct frequencies
    thetas = sp.symbols("th0:3", real=True)
    qv = sp.Matrix(sp.symbols("a0:6", real=True))
    kv = sp.Matrix(sp.symbols("b0:6", real=True))
    for style in ROPE_STYLES:
        l6 = _rope(qv, m, thetas, style).dot(_rope(kv, n, thetas, style))
        r6 = qv.dot(_rope(kv, n - m, thetas, style))
        p.check(f"d = 6, {style} pairs: q_m . k_n = q . R_(n-m) k",
                (_trig_zero(l6 - r6)))
        moved = sp.Matrix(spec.reposition_keys(list(_rope(kv, m, thetas, style)), d, style=style, thetas=list(thetas),
                                               ops=SYMPY_TRIG)) - _rope(kv, m + d, thetas, style)
        p.check(f"d = 6, {style} pairs: moving a cached key by Delta = rotating it by R(Delta)",
                (all(_trig_zero(x) for x in moved)))
    # the two conventions differ by a permutation of the coordinates
    perm = [c for ab in spec.rope_pairs(6, HALF) for c in ab]  # half's pairs laid out as interleaved
    inter = _rope(sp.Matrix([kv[c] for c in perm]), m, thetas, INTERLEAVED)
    half = _rope(kv, m, thetas, HALF)
    p.check("half-split RoPE = interleaved RoPE conjugated by the permutation that lays half's pairs side by side (d = 6)",
            (all(is_zero(inter[i] - half[c]) for i, c in enumerate(perm))))
    # float64 error of spec's rope: the first-order terms from the rounded expression
    ok_d, det_d = _derive_rotation_error()
    p.check("float64 rotation error: SymPy derives the first-order coefficients of the rounded component "
            "(angle u|p th| (|x_a|+|x_b|), trig and 2 roundings (c_trig + 2) u (|x_a|+|x_b|)); "
            "rho = c_trig u (1+u)^2 + (1+u)^2 - 1 is their rigorous form", ok_d, detail=det_d)
    ok_b, det_b = _numeric_bounds()
    p.check("rope_error_bound and reencoding_error_bound hold for spec's numpy rope against mpmath (60 digits), "
            "positions up to 1e5, both styles, and attention_shift_bound for random logit changes", ok_b,
            kind="numeric", detail=det_b)
    ok_att = _numeric_attention()
    p.check("attention output unchanged when every position shifts by Delta and cached keys are re-encoded by "
            "spec.reposition_keys (values untouched), spec's rope on mpmath, 10 random cases", ok_att[0],
            kind="numeric", detail=ok_att[1])
    lhs = _rope(q2, m, [t], INTERLEAVED).dot(_rope(k2, n, [t], INTERLEAVED))
    rhs = q2.dot(_rope(k2, n - m, [t], INTERLEAVED))
    ok_n, det = spot_check(lhs, rhs, [m, n, t] + list(q2) + list(k2), n=8, seed=21)
    p.check("one-pair identity at mpmath random points", ok_n, kind="numeric", detail=det)
    p.step("Values are never rotated and softmax/weighted sums only see the logits, so the output "
           "is a function of the relative positions only; re-positioning a KV cache by $\\Delta$ needs "
           "exactly one rotation $R_\\Delta$ of the stored keys and nothing else. In float64 the re-encoded keys "
           "differ from keys encoded at the new positions by at most `reencoding_error_bound` per component, so "
           "each logit moves by at most $\\delta=\\sigma\\sum_e|q_e|\\,b_e$ and the output by at most "
           "$\\mathrm{expm1}(2\\delta)\\,(\\max v-\\min v)$ (`attention_shift_bound`: "
           "$\\pi'_j/\\pi_j\\in[e^{-2\\delta},e^{2\\delta}]$, argued by hand, checked numerically).")
    return p


def _derive_rotation_error():
    """The rounded first component fl(fl(c x_a) - fl(s x_b)), c = cos(fl(p θ)) + e_c: its derivative in
    each rounding variable at 0, compared with the coefficients the bound uses."""
    phi, xa, xb = sp.symbols("phi x_a x_b", real=True)
    d0, ec, es, d1, d2, d3 = sp.symbols("delta0 e_c e_s delta1 delta2 delta3", real=True)
    ang = phi * (1 + d0)
    c, s = sp.cos(ang) + ec, sp.sin(ang) + es  # absolute trig error
    out = (c * xa * (1 + d1) - s * xb * (1 + d2)) * (1 + d3)
    exact = sp.cos(phi) * xa - sp.sin(phi) * xb
    zero = {v: 0 for v in (d0, ec, es, d1, d2, d3)}
    if not is_zero(out.subs(zero) - exact):
        return False, "the rounded expression at zero rounding is not the rotation"
    coef = {v: sp.simplify(sp.diff(out, v).subs(zero)) for v in (d0, ec, es, d1, d2, d3)}
    want = {d0: -phi * (sp.sin(phi) * xa + sp.cos(phi) * xb), ec: xa, es: -xb,
            d1: sp.cos(phi) * xa, d2: -sp.sin(phi) * xb, d3: exact}
    ok = all(is_zero(coef[v] - want[v]) for v in coef)
    # |coef| <= weight * (|x_a| + |x_b|) using |sin|, |cos| <= 1: angle |phi|; e_c + e_s: 1 (each c_trig u);
    # delta1 + delta2: 1; delta3: 1 -> first order (u |phi| + (c_trig + 2) u) (|x_a| + |x_b|), and
    # rho = c_trig u (1+u)^2 + (1+u)^2 - 1 = (c_trig + 2) u + O(u^2)
    u, ct = sp.symbols("u c_trig", positive=True)
    rho = _rho(u, ct)
    ok &= is_zero(rho - (ct * u * (1 + u) ** 2 + (1 + u) ** 2 - 1)) and is_zero(sp.diff(rho, u).subs(u, 0) - (ct + 2))
    return ok, "" if ok else f"derived coefficients {coef}"


def _numeric_bounds():
    rng = np.random.default_rng(5)
    worst = 0.0
    with mpmath.workdps(60):
        for style in ROPE_STYLES:
            for dim, scale in ((8, 1.0), (16, 1e3), (64, 1e5)):
                x = rng.normal(size=(3, dim)) * 10.0 ** rng.uniform(-3, 3, size=(3, 1))
                pos = rng.integers(0, int(scale), size=3).astype(np.float64)
                delta = float(rng.integers(-int(scale), int(scale)))
                th = np.asarray(spec.rope_frequencies(dim), dtype=np.float64)
                got = spec.apply_rope(x, pos, style=style)
                ref = np.array([[float(v) for v in spec.apply_rope([mpmath.mpf(float(c)) for c in row], mpmath.mpf(pp),
                                                                    style=style, thetas=[mpmath.mpf(float(t)) for t in th],
                                                                    ops=MPMATH_TRIG)] for row, pp in zip(x, pos)])
                worst = max(worst, float(np.max(np.abs(got - ref) / rope_error_bound(x, pos, style=style))))
                moved = spec.reposition_keys(got, delta, style=style)
                fresh = spec.apply_rope(x, pos + delta, style=style)
                worst = max(worst, float(np.max(np.abs(moved - fresh) / reencoding_error_bound(x, pos, delta, style=style))))
        for _ in range(50):  # softmax perturbation lemma
            n = int(rng.integers(1, 8))
            s = rng.normal(size=n) * 5
            eps = rng.uniform(-1, 1, size=n) * 10.0 ** rng.uniform(-6, 0)
            v = rng.normal(size=n)
            o = [mpmath.fsum(mpmath.exp(mpmath.mpf(float(a))) * float(b) for a, b in zip(ss, v))
                 / mpmath.fsum(mpmath.exp(mpmath.mpf(float(a))) for a in ss) for ss in (s, s + eps)]
            bound = attention_shift_bound(np.max(np.abs(eps)), np.ptp(v))
            worst = max(worst, float(abs(o[1] - o[0])) / bound if bound > 0 else float(o[1] != o[0]))
    return worst <= 1.0, f"max observed error / bound {worst:.3g}"


def _numeric_attention():
    rng = random.Random(22)
    worst = mpmath.mpf(0)
    with mpmath.workdps(40):
        for _ in range(10):
            dim, nk = 4, rng.randint(1, 5)
            th = spec.rope_frequencies(dim, ops=MPMATH_TRIG)
            style = rng.choice(ROPE_STYLES)
            q = [mpmath.mpf(rng.uniform(-2, 2)) for _ in range(dim)]
            ks = [[mpmath.mpf(rng.uniform(-2, 2)) for _ in range(dim)] for _ in range(nk)]
            vs = [mpmath.mpf(rng.uniform(-2, 2)) for _ in range(nk)]
            qpos, kpos = rng.randint(0, 50), [rng.randint(0, 50) for _ in range(nk)]
            delta = rng.randint(-20, 20)

            def rot(x, pos):
                return spec.apply_rope(x, mpmath.mpf(pos), style=style, thetas=th, ops=MPMATH_TRIG)

            def attend(qr, krs):
                logits = [mpmath.fsum(a * b for a, b in zip(qr, kr)) for kr in krs]
                mx = max(logits)
                w = [mpmath.exp(x - mx) for x in logits]
                return mpmath.fsum(a * b for a, b in zip(w, vs)) / mpmath.fsum(w)

            base = attend(rot(q, qpos), [rot(k, p_) for k, p_ in zip(ks, kpos)])
            moved = [spec.reposition_keys(rot(k, p_), mpmath.mpf(delta), style=style, thetas=th, ops=MPMATH_TRIG)
                     for k, p_ in zip(ks, kpos)]
            shifted = attend(rot(q, qpos + delta), moved)
            fresh = attend(rot(q, qpos + delta), [rot(k, p_ + delta) for k, p_ in zip(ks, kpos)])
            worst = max(worst, abs(base - shifted), abs(base - fresh))
    return worst < mpmath.mpf(10) ** -30, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

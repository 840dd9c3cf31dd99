"""Theorem 6: floating-point error of the tiled (flash) attention forward, derived with SymPy.

Model: fl(x op y) = (x op y)(1 + d) + e, |d| <= u, |e| <= eta. Storage dtype (q, k, v, P before
P@V, the output store) has unit roundoff u_in; accumulators have u_acc; exp/exp2/log/log2 have a
relative error of c_exp ulps (eps = 2 c_exp u_acc, one ulp being at most 2u relative) and flush
subnormal results (absolute error eta). Optional TF32-style rounding of the matmul operands has
u_dot (0 for IEEE dots).

Each step of the kernel (dot of length E, folded scale*log2(e), softcap, additive mask, running
max, exp of the shifted logit, the rescale by alpha along any merge path, the running sums l and
acc in any order, the rounding of P, the final division, the store, the LSE and a split-KV LSE
combine) is written as a SymPy expression in its rounding variables d_i. SymPy differentiates it
at d = 0 (first-order propagation); the coefficients give the step's *count*. The counts are
assembled into per-key budgets (common to numerator and denominator, numerator only,
denominator only, whole output), and an exact identity (checked by SymPy) turns per-key
perturbations into the output error. The rigorous second-order remainder comes from two lemmas
checked here: |prod (1+d_i)^{+-1} - 1| <= expm1(sum |d_i|/(1-|d_i|)) and e^x - 1 <= x/(1 - x/2).

The assembled expressions are written to proofs/golden/fp_error.json; flashproof.proofs.bounds
lambdifies that file, and tests re-derive the expressions and compare them with it.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import mpmath
import sympy as sp
from sympy.calculus.util import maximum
from sympy.codegen.cfunctions import expm1, log1p

from .core import Proof, is_zero, timed

__all__ = [
    "SYMBOLS",
    "GOLDEN_PATH",
    "derive",
    "expressions",
    "golden_dict",
    "write_golden",
    "prove",
    "main",
]

GOLDEN_PATH = Path(__file__).with_name("golden") / "fp_error.json"
GENERATED_PATH = Path(__file__).with_name("bounds_gen.py")

# ---------------------------------------------------------------------------------------------
# Symbols. All magnitudes are non-negative; integer counts are positive.
u_in, u_acc, u_dot, eta, eta_in, c_exp, c_tanh = sp.symbols(
    "u_in u_acc u_dot eta eta_in c_exp c_tanh", nonnegative=True)
E, n, N, L = sp.symbols("E n N L", positive=True, integer=True)
# per (row, key) pair: scaled |q|.|k| (G), |scaled q.k| (X), |softcapped logit| (Y), softcap (CAP),
# |bias| (BIAS), |final logit| (S), gap M - s (gap), logit error budget (Delta), flags h/hb
G, X, Y, CAP, BIAS, S, gap, Delta, h, hb = sp.symbols(
    "G X Y CAP BIAS S gap Delta h hb", nonnegative=True)
# per row: max Delta, max |s|, ln(allowed keys), LSE rounding budget
Dmax, Smax, logn, rho = sp.symbols("Dmax Smax logn rho", nonnegative=True)
# budgets and aggregates
K, Sd, Sn, Kmax, Sdmax, Snmax = sp.symbols("K Sd Sn Kmax Sdmax Snmax", nonnegative=True)
SB, SD, EN, ED, absO, beta, SBl = sp.symbols("SB SD EN ED absO beta SBl", nonnegative=True)
Gm, V, W = sp.symbols("Gm V W", nonnegative=True)
_t = sp.Symbol("t", nonnegative=True)  # first-order scaling parameter

SYMBOLS = {s.name: s for s in (u_in, u_acc, u_dot, eta, eta_in, c_exp, c_tanh, E, n, N, L, G, X, Y,
                               CAP, BIAS, S, gap, Delta, h, hb, Dmax, Smax, logn, rho, K, Sd, Sn,
                               Kmax, Sdmax, Snmax, SB, SD, EN, ED, absO, beta, SBl, Gm, V, W)}

_UNITS = (u_in, u_acc, u_dot, eta, eta_in)
# symbols that stand for quantities of first order in the units (budgets, logit errors)
_SMALL = (Delta, Dmax, rho, K, Sd, Sn, Kmax, Sdmax, Snmax, SB, SD, EN, ED, beta, SBl)


def _w(u):
    """|log(1 + d)| <= u/(1-u) for |d| <= u: one rounding in the remainder lemma."""
    return u / (1 - u)


def _gam(k, u):
    """Higham's gamma_k = k u / (1 - k u)."""
    return k * u / (1 - k * u)


_RECORDED: list = []  # every linearisation of this derivation, spot-checked with mpmath at the end


def _lin(expr, deltas):
    """First-order propagation: d expr / d delta at delta = 0, for every rounding variable."""
    zero = {d: 0 for d in deltas}
    out = {d: sp.simplify(sp.diff(expr, d).subs(zero)) for d in deltas}
    _RECORDED.append((expr, list(deltas), out))
    return out


def _spot_check_linearisations(proof: Proof, seed: int = 17) -> None:
    """mpmath check of every recorded linearisation: (f(x, t r) - f(x, 0)) / t -> sum_k c_k(x) r_k
    at random points x, random directions r and t = 1e-30 (80 digits)."""
    rng = random.Random(seed)
    worst = mpmath.mpf(0)
    with mpmath.workdps(80):
        for expr, deltas, lin in _RECORDED:
            others = sorted(expr.free_symbols - set(deltas), key=lambda x: x.name)
            f = sp.lambdify(others + deltas, expr, modules="mpmath")
            cs = [sp.lambdify(others, lin[d], modules="mpmath") for d in deltas]
            for _ in range(2):
                pt = [mpmath.mpf(rng.uniform(0.2, 2.0)) if (x.is_positive or x.is_nonnegative)
                      else mpmath.mpf(rng.uniform(-2.0, 2.0)) for x in others]
                r = [mpmath.mpf(rng.uniform(-1, 1)) for _ in deltas]
                t = mpmath.mpf(10) ** -30
                fd = (f(*pt, *[t * x for x in r]) - f(*pt, *[0] * len(deltas))) / t
                pred = mpmath.fsum(c(*pt) * x for c, x in zip(cs, r))
                worst = max(worst, abs(fd - pred) / (1 + abs(pred)))
    proof.check(f"every step's linearisation ({len(_RECORDED)} of them) matches mpmath finite differences "
                "at random points", worst < mpmath.mpf(10) ** -20, kind="numeric",
                detail=f"max relative deviation {mpmath.nstr(worst, 3)}")


def _term_counts(lin, terms):
    """For a linearisation that is linear in ``terms``: sum_d |coeff of term in d-coefficient|."""
    counts = []
    for y in terms:
        c = 0
        for coef in lin.values():
            c += abs(sp.Poly(sp.expand(coef), *terms).coeff_monomial(y))
        counts.append(sp.nsimplify(c))
    return counts


def _trees(items):
    """Every binary summation tree over ``items`` in order (any association)."""
    if len(items) == 1:
        yield items[0]
        return
    for i in range(1, len(items)):
        for left in _trees(items[:i]):
            for right in _trees(items[i:]):
                yield (left, right)


def _fl_tree(tree, fresh):
    """Evaluate a summation tree with a fresh rounding variable on every addition."""
    if not isinstance(tree, tuple):
        return tree
    d = fresh()
    return (_fl_tree(tree[0], fresh) + _fl_tree(tree[1], fresh)) * (1 + d)


class _Fresh:
    def __init__(self, prefix):
        self.prefix, self.made = prefix, []

    def __call__(self):
        d = sp.Symbol(f"{self.prefix}{len(self.made)}", real=True)
        self.made.append(d)
        return d


# ---------------------------------------------------------------------------------------------
# The steps. Each records its derivation on the proof and returns the derived counts.

def step_dot(proof: Proof):
    """Dot product of length E: per term at most E accumulator roundings (+2 operand roundings)."""
    worst_seq, worst_tree = [], []
    for e in range(1, 7):
        ys = sp.symbols(f"y1:{e + 1}", real=True)
        fr = _Fresh("d")
        prods = [y * (1 + fr()) for y in ys]
        seq = prods[0]
        for p in prods[1:]:
            seq = (seq + p) * (1 + fr())
        counts = _term_counts(_lin(seq, fr.made), list(ys))
        worst_seq.append(max(counts))
        if e <= 5:
            for tree in _trees(list(range(e))):
                fr2 = _Fresh("d")
                leaves = [ys[i] * (1 + fr2()) for i in range(e)]
                expr = _fl_tree(_map_tree(tree, leaves), fr2)
                worst_tree.append((e, max(_term_counts(_lin(expr, fr2.made), list(ys)))))
    proof.check("dot: sequential sum of E products has per-term count exactly E (E=1..6)",
                worst_seq == list(range(1, 7)))
    proof.check("dot: every summation tree (E<=5) has per-term count <= E",
                all(c <= e for e, c in worst_tree), detail=f"{len(worst_tree)} trees")
    # Induction for symbolic E: counts(1) = [1]; counts(E) = [c + 1 for c in counts(E-1)] + [2].
    Ep = sp.Symbol("Ep", integer=True, nonnegative=True)  # E = Ep + 2 >= 2
    step_max = sp.Max((Ep + 1) + 1, 2)  # max of old counts (E-1) plus one, and the new term's 2
    proof.check("dot: induction step max count(E) = E for symbolic E >= 2 (base count(1) = 1)",
                sp.simplify(step_max - (Ep + 2)) == 0)
    # Operand rounding (TF32-style): q(1+r) k(1+r'), two roundings on each product.
    q_, k_, r1, r2 = sp.symbols("q k r1 r2", real=True)
    lin = _lin(q_ * (1 + r1) * k_ * (1 + r2), [r1, r2])
    proof.check("dot: operand rounding contributes count 2 (u_dot)",
                all(is_zero(v - q_ * k_) for v in lin.values()))
    proof.step("Dot product of length E in any summation order (products rounded, then summed).",
               r"|\widehat{q\cdot k}-q\cdot k| \le (E\,u_{acc} + 2u_{dot})\sum_e |q_e k_e|"
               r"\quad\text{(first order; rigorous: }\operatorname{expm1}(E\,\tfrac{u_{acc}}{1-u_{acc}}"
               r"+2\tfrac{u_{dot}}{1-u_{dot}})\text{)}")
    return E, 2


def _map_tree(tree, leaves):
    if not isinstance(tree, tuple):
        return leaves[tree]
    return (_map_tree(tree[0], leaves), _map_tree(tree[1], leaves))


def step_scale(proof: Proof):
    """x * fl(scale*log2 e): the constant carries <= 4 roundings (sqrt, 1/., log2 e, product)."""
    x_, xi, kappa = sp.symbols("x xi kappa", real=True)
    ds = sp.symbols("c1:5", real=True)
    d5 = sp.Symbol("c5", real=True)
    const = kappa * sp.Mul(*[(1 + d) for d in ds])
    s_hat = (x_ + xi) * const * (1 + d5)
    lin = _lin(s_hat, list(ds) + [d5, xi])
    count = sum(1 for d in list(ds) + [d5] if is_zero(lin[d] - kappa * x_))
    proof.check("scale: each of the 5 roundings has coefficient exactly scale*x (count 5)", count == 5)
    proof.check("scale: the dot error passes with factor scale", is_zero(lin[xi] - kappa))
    proof.step("Scale by the folded constant fl(scale log2 e) (base-2 kernels; t/log2 e is the logit"
               " in natural units): 4 roundings in the constant, 1 in the product.",
               r"|\hat s - s| \le \sigma|\hat x - x| + 5u_{acc}\,|\sigma\,q\cdot k|")
    return 5


def step_softcap(proof: Proof):
    """s = c tanh(x/c): input error passes with factor sech^2 <= 1; 2 + 3 roundings, tanh error."""
    x_, xi, tau = sp.symbols("x xi tau", real=True)
    c = sp.Symbol("c", positive=True)
    e1, e2, e3, e4, e5 = sp.symbols("e1:6", real=True)
    y = (x_ + xi) * (1 + e1) * (1 + e2) / c
    s_hat = c * (sp.tanh(y) + tau) * (1 + e3) * (1 + e4) * (1 + e5)
    lin = _lin(s_hat, [xi, e1, e2, tau, e3, e4, e5])
    sech2 = 1 - sp.tanh(x_ / c) ** 2
    proof.check("softcap: input error factor is 1 - tanh^2 (in [0, 1] for real x)",
                is_zero(lin[xi] - sech2))
    proof.check("softcap: y-roundings have coefficient x(1 - tanh^2), |.| <= |x| (count 2)",
                all(is_zero(lin[d] - x_ * sech2) for d in (e1, e2)))
    proof.check("softcap: tanh error enters with factor c", is_zero(lin[tau] - c))
    proof.check("softcap: output roundings have coefficient c tanh(x/c) (count 3)",
                all(is_zero(lin[d] - c * sp.tanh(x_ / c)) for d in (e3, e4, e5)))
    proof.step("Softcap s = c tanh(x/c) with y = fl(fl(x)(1/c)), tanh error tau (absolute), "
               "then c*th and the log2 e factor.",
               r"|\hat s-s| \le |\hat x - x|\,\operatorname{sech}^2 + 2u_{acc}|x| + c\,c_{tanh}u_{acc}"
               r" + 3u_{acc}\,|c\tanh(x/c)|")
    return 2, 3


def step_tanh_model(proof: Proof):
    """Derive the default c_tanh for tanh(y) = 1 - 2/(exp(2y)+1) computed in floating point."""
    e = sp.Symbol("e", positive=True)  # e = exp(2|y|) >= 1
    ep, d1, d2, d3 = sp.symbols("epsilon d1 d2 d3", real=True)
    ee = e * (1 + ep)
    f = (ee + 1) * (1 + d1)
    g = 2 / f * (1 + d2)
    hh = (1 - g) * (1 + d3)
    lin = _lin(hh, [ep, d1, d2, d3])
    maxes = {d: maximum(sp.Abs(v), e, sp.Interval(1, sp.oo)) for d, v in lin.items()}
    # eps = 2 c_exp u: coefficient 1/2 gives c_exp u; three roundings with coefficient <= 1.
    total = maxes[ep] * 2 * c_exp + maxes[d1] + maxes[d2] + maxes[d3]
    ok = sp.simplify(total - (c_exp + 3)) == 0
    proof.check("tanh via exp: sup over y of first-order absolute error = (c_exp + 3) u", ok,
                detail=f"coefficient maxima {[str(m) for m in maxes.values()]}")
    proof.step("tanh computed as 1 - 2/(exp(2y)+1): the first-order absolute error is at most "
               "(c_exp + 3) u_acc (default c_tanh; a libdevice tanhf with <= 2 ulp is within it).",
               r"c_{tanh} = c_{exp} + 3")
    return c_exp + 3


def step_bias(proof: Proof):
    """s + fl(b log2 e): 2 roundings on the bias, 1 on the sum."""
    s_, b_, xi = sp.symbols("s b xi", real=True)
    f1, f2, f3 = sp.symbols("f1:4", real=True)
    s_hat = (s_ + xi + b_ * (1 + f1) * (1 + f2)) * (1 + f3)
    lin = _lin(s_hat, [xi, f1, f2, f3])
    ok = (is_zero(lin[xi] - 1) and is_zero(lin[f1] - b_) and is_zero(lin[f2] - b_)
          and is_zero(lin[f3] - (s_ + b_)))
    proof.check("additive mask: counts 2 on |b|, 1 on |s + b|, incoming error factor 1", ok)
    proof.step("Additive attn_mask: the bias is scaled by the rounded log2 e and added.",
               r"|\hat s - s| \le |\hat s_{cap}-s_{cap}| + 2u_{acc}|b| + u_{acc}|s_{cap}+b|")
    return 2, 1


def step_max(proof: Proof):
    """The running max is exact on computed values: it returns one of them."""
    a_, b_ = sp.symbols("a b", real=True)
    ok = all(sp.Max(a_, b_).subs({a_: x, b_: y}) in (x, y) for x, y in ((1, 2), (3, -1), (2, 2)))
    proof.check("max: returns one of its arguments (no rounding, no first-order term)", ok)
    proof.step("Running max: exact. The computed running max m of a tile satisfies "
               "s_j <= m <= M (M the final computed max), for every tiling and merge order.",
               r"\hat s_j \le \hat m_\tau \le \hat M \le M + \Delta_{max}, \quad "
               r"\hat M - \hat s_j \le (M - s_j) + \Delta_j + \Delta_{max}")


def step_exp(proof: Proof):
    """p = exp(fl(s - m) [* fl(log2 e)]): argument relative error 3 roundings, exp error eps."""
    z = sp.Symbol("z", real=True)  # z = s - m <= 0
    g1, g2, g3, ep = sp.symbols("g1 g2 g3 epsilon", real=True)
    p_hat = sp.exp(z * (1 + g1) * (1 + g2) * (1 + g3)) * (1 + ep)
    lin = _lin(p_hat / sp.exp(z), [g1, g2, g3, ep])
    ok = all(is_zero(lin[g] - z) for g in (g1, g2, g3)) and is_zero(lin[ep] - 1)
    proof.check("exp: relative error |z|(g1+g2+g3) + eps (count 3 on the argument)", ok)
    proof.step("exp/exp2 of the shifted logit: subtraction, conversion to base 2 and the rounded "
               "log2 e give 3 argument roundings; exp itself has relative error eps = 2 c_exp u_acc "
               "and flushes subnormal results (absolute eta).",
               r"\hat p_j = e^{(\hat s_j - \hat m)(1+\theta_3)}(1+\epsilon) + e_j,\quad"
               r"|\theta_3|\le\gamma_3,\ |\epsilon| \le 2c_{exp}u_{acc},\ |e_j|\le\eta")
    return 3, 1


def step_rescale(proof: Proof):
    """alpha = exp(fl(m_old - m_new)): along a key's merge path the argument errors telescope."""
    k_, tau, kk = sp.symbols("k tau K", integer=True)
    m = sp.IndexedBase("m")
    tele = sp.Sum(m[k_] - m[k_ - 1], (k_, tau + 1, kk)).doit()
    proof.check("rescale: sum of max increments along a path telescopes to m_K - m_tau",
                is_zero(tele - (m[kk] - m[tau])))
    # concrete path of 4 rescales: first-order relative error of prod alpha_k
    ms = sp.symbols("m0:5", real=True)
    ths = sp.symbols("th1:5", real=True)
    eps_ = sp.symbols("ep1:5", real=True)
    prod = sp.Mul(*[sp.exp((ms[i - 1] - ms[i]) * (1 + ths[i - 1])) * (1 + eps_[i - 1])
                    for i in range(1, 5)])
    exact = sp.exp(ms[0] - ms[4])
    lin = _lin(prod / exact, list(ths) + list(eps_))
    ok = all(is_zero(lin[ths[i - 1]] - (ms[i - 1] - ms[i])) for i in range(1, 5))
    ok &= all(is_zero(lin[e] - 1) for e in eps_)
    proof.check("rescale: argument coefficients are the (non-positive) max increments, eps count 1 "
                "per rescale", ok)
    proof.step("Rescale by alpha = exp(fl(m_old - m_new)) at every merge on the key's path (any tiling,"
               " any merge tree: the state max only grows along the path, so |arguments| sum to "
               "M - m_tau <= M - s_j). At most N - 1 rescales per key.",
               r"\Big|\sum_k (m_{k}-m_{k-1})\theta_k\Big| \le \gamma_3(\hat M-\hat m_\tau)"
               r"\le \gamma_3(\hat M - \hat s_j)")
    return sp.Integer(1)


def step_accumulate(proof: Proof):
    """l and acc in any order: per key <= n + N - 1 (acc) and n + N - 2 (l) accumulator roundings."""
    # FA2 loop with tiles [2, 1, 2] (n = 5, N = 3), both P@V variants; scalar v.
    sizes = [2, 1, 2]
    n_, N_ = sum(sizes), len(sizes)
    ps = sp.symbols(f"p1:{n_ + 1}", positive=True)
    vs = sp.symbols(f"v1:{n_ + 1}", real=True)
    al = sp.symbols(f"alpha1:{N_}", positive=True)
    worst = {}
    for variant in ("tile_then_add", "accumulate_into_acc"):
        fa, fl_ = _Fresh("a"), _Fresh("l")
        acc = lval = None
        j = 0
        for t_, b in enumerate(sizes):
            keys = list(range(j, j + b))
            j += b
            prods = [ps[i] * vs[i] * (1 + fa()) for i in keys]
            if acc is not None:
                acc = acc * al[t_ - 1] * (1 + fa())
                lval = lval * al[t_ - 1] * (1 + fl_())
            if variant == "tile_then_add" or acc is None:
                tile = prods[0]
                for p in prods[1:]:
                    tile = (tile + p) * (1 + fa())
                acc = tile if acc is None else (acc + tile) * (1 + fa())
            else:
                for p in prods:
                    acc = (acc + p) * (1 + fa())
            ltile = ps[keys[0]]
            for i in keys[1:]:
                ltile = (ltile + ps[i]) * (1 + fl_())
            lval = ltile if lval is None else (lval + ltile) * (1 + fl_())
        pv = [p * v for p, v in zip(ps, vs)]
        lin_a = _lin(acc, fa.made)
        lin_l = _lin(lval, fl_.made)
        # count for key i: number of roundings whose coefficient contains p_i (v_i)
        ca = [sum(1 for c in lin_a.values() if sp.expand(c).has(ps[i]) and sp.expand(c).has(vs[i]))
              for i in range(n_)]
        cl = [sum(1 for c in lin_l.values() if sp.expand(c).has(ps[i])) for i in range(n_)]
        worst[variant] = (max(ca), max(cl))
    ok = all(a <= n_ + N_ - 1 and lv <= n_ + N_ - 2 for a, lv in worst.values())
    proof.check("accumulate: FA2 loop, tiles [2,1,2], both P@V variants: acc count <= n+N-1, "
                "l count <= n+N-2", ok, detail=str(worst))
    proof.step("Running sums in any order: a key's term meets at most n-1 non-trivial additions "
               "(adding an exact 0 is exact), N-1 rescale products and (acc only) its own product.",
               r"|\theta^{acc}_j| \le \gamma_{n+N-1},\qquad |\theta^{l}_j| \le \gamma_{n+N-2}")
    return n + N - 1, n + N - 2


def step_round_p(proof: Proof):
    proof.step("P is rounded to the storage dtype before P@V; l sums the unrounded P "
               "(flash-attention convention): one u_in (and eta_in) on the numerator only.",
               r"\tilde P_j = \hat p_j(1+\delta_{in}) + e_{in},\ |\delta_{in}|\le u_{in},\ |e_{in}|\le\eta_{in}")
    return 1


def step_division(proof: Proof):
    a_, l_, d1, d2 = sp.symbols("a l d1 d2", real=True)
    lin = _lin(a_ * (1 / (l_ * (1 + d1))) * (1 + d2), [d1, d2])
    ok = is_zero(lin[d1] + a_ / l_) and is_zero(lin[d2] - a_ / l_)
    proof.check("division acc * fl(1/l): two roundings with coefficient |o| (count 2)", ok)
    proof.step("Final division o = acc * fl(1/l) (covers a correctly rounded division).",
               r"\hat o = o(1+\theta_2)")
    return 2


def step_store(proof: Proof):
    """Final store of O in the storage dtype: one u_in rounding (and eta_in when subnormal)."""
    o_, d = sp.symbols("o delta_in", real=True)
    lin = _lin(o_ * (1 + d), [d])
    proof.check("store: fl_in(o) = o(1 + delta_in), coefficient o (count 1 on u_in |o|)", is_zero(lin[d] - o_))
    proof.step("Final store of O in the storage dtype (round to nearest; subnormal: absolute eta_in).",
               r"\hat o_{stored} = \hat o(1+\delta_{in}) + e_{in}")
    return 1


def step_lse(proof: Proof):
    """lse = fl(fl(m2 + fl(log2 l)) * fl(ln 2)): 3 roundings on |lse| + log error."""
    m2, ll = sp.symbols("m2 l", positive=True)
    a_, b_, c_, lerr = sp.symbols("a b c ell", real=True)
    lse_hat = (m2 + sp.log(ll, 2) + lerr) * (1 + a_) * sp.log(2) * (1 + b_) * (1 + c_)
    lse = (m2 + sp.log(ll, 2)) * sp.log(2)
    lin = _lin(lse_hat, [a_, b_, c_, lerr])
    ok = all(is_zero(lin[d] - lse) for d in (a_, b_, c_)) and is_zero(lin[lerr] - sp.log(2))
    proof.check("LSE: three roundings with coefficient lse, log2 error with factor ln 2", ok)
    proof.step("LSE = ln2 (m2 + log2 l) with approximate log2 (absolute error eps (|log2 l| + 1)); "
               "|lse| <= Smax + Dmax + ln n + 1 (the 1 absorbs ln(1 + budget) while the budget < 1).",
               r"\rho = \gamma_3(S_{max}+\Delta_{max}+\ln n + 1) + \epsilon(\ln n + 1)(1+\gamma_2)")
    return 3


def step_split(proof: Proof):
    """Split-KV: renormalising a state to (m + log l, 1, acc/l) is exact; its rounding is rho
    (common to l and acc) and 2 + 1 roundings on acc; the LSE combine recomputes exps."""
    m_, l_, c_ = sp.symbols("m l c", positive=True)
    a = sp.symbols("a1:3", real=True)
    st = (m_, l_, list(a))
    ren = (m_ + sp.log(l_), sp.Integer(1), [x / l_ for x in a])
    # The same (o, lse), and the same state up to shift: e^{m'-c} * 1 = e^{m-c} l.
    same_o = all(is_zero(x / 1 - y / l_) for x, y in zip(ren[2], a))
    same_lse = is_zero(ren[0] + sp.log(ren[1]) - (st[0] + sp.log(st[1])))
    same_shifted = is_zero(sp.exp(ren[0] - c_) * ren[1] - sp.exp(m_ - c_) * l_)
    proof.check("split: renormalised state gives the same (o, lse) and the same shifted l", same_o
                and same_lse and same_shifted)
    proof.step("Split-KV (one LSE-combine level): each split is renormalised to "
               "(lse_s, 1, o_s) (rho common, 2 divisions + 1 fp32 store on acc), then combined with "
               "weights exp(lse_s - lse) whose numerator and denominator exps are computed separately "
               "(eps and gamma_3 (M - s_j + ln n) on each side) and summed over <= N splits.",
               r"\text{numerator}: N + 3\ \text{roundings},\ \text{denominator}: N - 1")
    return N + 3, N - 1


def step_assembly(proof: Proof):
    """Exact identity: N/D - o = [sum pi b (v - o) + sum pi (a - b) v + E_N - o E_D] / (1 + beta)."""
    j, nn = sp.symbols("j n_", integer=True, positive=True)
    p, a, b, v = sp.IndexedBase("p"), sp.IndexedBase("a"), sp.IndexedBase("b"), sp.IndexedBase("v")
    en, ed = sp.symbols("E_N E_D", real=True)
    checks = []
    for size in (1, 2, 3, 4):
        P = sum(p[i] for i in range(size))
        pi = [p[i] / P for i in range(size)]
        o = sum(pi[i] * v[i] for i in range(size))
        num = sum(p[i] * (1 + a[i]) * v[i] for i in range(size)) + en
        den = sum(p[i] * (1 + b[i]) for i in range(size)) + ed
        bet = sum(pi[i] * b[i] for i in range(size)) + ed / P
        rhs = (sum(pi[i] * b[i] * (v[i] - o) for i in range(size))
               + sum(pi[i] * (a[i] - b[i]) * v[i] for i in range(size)) + (en - o * ed) / P) / (1 + bet)
        checks.append(is_zero(sp.together(num / den - o - rhs)))
    proof.check("assembly identity holds exactly (n = 1..4 keys, symbolic weights and perturbations)",
                all(checks))
    # Symbolic-length form: P * (N/D - o) * (1 + beta) * P, cleared of denominators, is a sum of
    # products of two Sums; it vanishes as a double sum.
    P_ = sp.Sum(p[j], (j, 1, nn))
    Spv = sp.Sum(p[j] * v[j], (j, 1, nn))
    lhs = P_ * sp.Sum(p[j] * (1 + a[j]) * v[j], (j, 1, nn)) - Spv * sp.Sum(p[j] * (1 + b[j]), (j, 1, nn))
    rhs = (P_ * sp.Sum(p[j] * b[j] * v[j], (j, 1, nn)) - sp.Sum(p[j] * b[j], (j, 1, nn)) * Spv
           + P_ * sp.Sum(p[j] * (a[j] - b[j]) * v[j], (j, 1, nn)))
    proof.check("assembly identity for symbolic length n (IndexedBase double sums)",
                _double_sum_zero(lhs - rhs, j))
    proof.step("Exact assembly: with per-key relative perturbations a_j (numerator weight), b_j "
               "(denominator weight) and absolute E_N, E_D (shift M, P = sum e^{s-M} >= 1):",
               r"\frac{\sum_j p_j(1+a_j)v_j + E_N}{\sum_j p_j(1+b_j)+E_D} - o = "
               r"\frac{\sum_j \pi_j b_j (v_j - o) + \sum_j \pi_j (a_j-b_j) v_j + (E_N - oE_D)/P}"
               r"{1 + \sum_j\pi_j b_j + E_D/P}")


def _double_sum_zero(expr, j) -> bool:
    """Zero test for a sum of products of exactly two Sums over the same range: the double
    summand, symmetrised in (j, k), must vanish identically."""
    k2 = sp.Symbol("k_", integer=True, positive=True)
    total = 0
    for term in sp.Add.make_args(sp.expand(expr)):
        coeff, summands = sp.Integer(1), []
        for f in sp.Mul.make_args(term):
            if isinstance(f, sp.Sum):
                summands.append(f)
            elif isinstance(f, sp.Pow) and isinstance(f.base, sp.Sum) and f.exp == 2:
                summands += [f.base, f.base]
            else:
                coeff *= f
        if len(summands) != 2:
            return False
        f1 = summands[0].function.subs(summands[0].variables[0], j)
        f2 = summands[1].function.subs(summands[1].variables[0], k2)
        total += coeff * f1 * f2
    total = sp.expand(total)
    sym = sp.expand(total + total.subs({j: k2, k2: j}, simultaneous=True))
    return sym == 0


def step_remainder(proof: Proof):
    """Lemmas that make the second-order remainder rigorous."""
    d, x = sp.symbols("d x", nonnegative=True)
    # (R1) -log(1 - d) <= d/(1-d) on [0,1): f(0) = 0 and f' = d/(1-d)^2 >= 0.
    f = d / (1 - d) + sp.log(1 - d)
    r1 = f.subs(d, 0) == 0 and is_zero(sp.diff(f, d) - d / (1 - d) ** 2)
    # (R2) log(1 + d) <= d: g(0) = 0, g' = 1 - 1/(1+d) = d/(1+d) >= 0.
    g = d - sp.log(1 + d)
    r2 = g.subs(d, 0) == 0 and is_zero(sp.diff(g, d) - d / (1 + d))
    # (R3) e^x - 1 <= x/(1 - x/2) on [0, 2): h = (1 + x/2) e^{-x} - (1 - x/2), h(0) = 0,
    # h' = (1 - (1 + x) e^{-x})/2 >= 0 because e^x >= 1 + x.
    hh = (1 + x / 2) * sp.exp(-x) - (1 - x / 2)
    r3 = hh.subs(x, 0) == 0 and is_zero(sp.diff(hh, x) - (1 - (1 + x) * sp.exp(-x)) / 2)
    # (R4) expm1(x)/x is increasing (so sum pi_j expm1(K_j) <= expm1(Kmax)/Kmax sum pi_j K_j):
    # (expm1(x)/x)' = (x e^x - e^x + 1)/x^2 and x e^x - e^x + 1 has derivative x e^x >= 0.
    q = x * sp.exp(x) - sp.exp(x) + 1
    r4 = is_zero(sp.diff((sp.exp(x) - 1) / x, x) - q / x ** 2)
    r4 = r4 and q.subs(x, 0) == 0 and is_zero(sp.diff(q, x) - x * sp.exp(x))
    rng = random.Random(6)
    nums = True
    with mpmath.workdps(40):
        for _ in range(200):
            dv = mpmath.mpf(rng.uniform(0, 0.99))
            xv = mpmath.mpf(rng.uniform(0, 1.99))
            nums &= -mpmath.log(1 - dv) <= dv / (1 - dv) and mpmath.log(1 + dv) <= dv
            nums &= mpmath.expm1(xv) <= xv / (1 - xv / 2)
    proof.check("remainder lemmas R1-R4 (derivative proofs)", r1 and r2 and r3 and r4)
    proof.check("remainder lemmas R1, R2, R3 at 200 mpmath points", nums, kind="numeric")
    proof.step("Rigorous remainder: a product of roundings and exponent errors perturbs by at most "
               "expm1 of the sum of its (u/(1-u)) budgets; e^x - 1 <= x/(1 - x/2); expm1(x)/x is "
               "increasing, so weighted averages of expm1(K_j) are at most expm1(Kmax)/Kmax times "
               "the average of K_j.",
               r"\Big|\prod_i(1+\delta_i)^{\pm1}e^{\eta}-1\Big| \le "
               r"\operatorname{expm1}\Big(|\eta| + \sum_i \tfrac{u_i}{1-u_i}\Big),\quad "
               r"e^x-1\le \frac{x}{1-x/2}")


def step_cap(proof: Proof):
    """Convexity cap: whatever the logit errors, the computed output is (1 + nu) times a convex
    combination of the allowed values, plus underflow terms; so |o_hat - o| <= W + nu V + ..."""
    x, r, rp = (sp.symbols(f"{c}1:4", positive=True) for c in ("x", "r", "q"))
    # (C1) mediant: sum x r / sum x r' lies between min and max of r/r' (checked: the numerator of
    # ratio - r1/r1' is a sum of non-negative terms when r1/r1' is the smallest ratio)
    ratio = sum(a * b for a, b in zip(x, r)) / sum(a * b for a, b in zip(x, rp))
    lo = r[0] / rp[0]
    num = sp.together(ratio - lo)
    expanded = sp.expand(sp.numer(num))
    # with r_j = rho_j r'_j and rho_j >= rho_1: r_j r'_1 - r_1 r'_j = r'_1 r'_j (rho_j - rho_1) >= 0
    rho_ = sp.symbols("rho1:4", positive=True)
    sub = {r[i]: rho_[i] * rp[i] for i in range(3)}
    d1, d2 = sp.symbols("delta2 delta3", nonnegative=True)
    sub2 = {rho_[1]: rho_[0] + d1, rho_[2]: rho_[0] + d2}
    c1 = sp.expand(expanded.subs(sub).subs(sub2))
    c1_ok = all(t.could_extract_minus_sign() is False for t in sp.Add.make_args(c1)) if c1 != 0 else True
    # (C2) e^{-t}(e^{t g} - 1) <= g t e^{-t(1-g)} <= g / (e (1 - g)) for t >= 0, 0 <= g < 1:
    # e^y - 1 <= y e^y (derivative), and t e^{-a t} peaks at t = 1/a with value 1/(e a).
    t_, g_, a_, y_ = sp.symbols("t gamma a y", positive=True)
    h_ = y_ * sp.exp(y_) - (sp.exp(y_) - 1)  # h(0) = 0, h' = y e^y >= 0
    c2a = h_.subs(y_, 0) == 0 and is_zero(sp.diff(h_, y_) - y_ * sp.exp(y_))
    crit = sp.solve(sp.diff(t_ * sp.exp(-a_ * t_), t_), t_)
    c2b = crit == [1 / a_] and is_zero((t_ * sp.exp(-a_ * t_)).subs(t_, 1 / a_) - 1 / (sp.E * a_))
    proof.check("cap lemma C1 (mediant: a ratio of weighted sums lies within the extreme ratios), n = 3",
                c1_ok)
    proof.check("cap lemma C2 (e^{-t}(e^{t gamma} - 1) <= gamma / (e (1 - gamma)))", c2a and c2b)
    rng = random.Random(9)
    okn = True
    with mpmath.workdps(30):
        for _ in range(300):
            tv, gv = mpmath.mpf(rng.uniform(0, 60)), mpmath.mpf(rng.uniform(0, 0.5))
            okn &= mpmath.exp(-tv) * mpmath.expm1(tv * gv) <= gv / (mpmath.e * (1 - gv))
            xs = [mpmath.mpf(rng.uniform(0, 3)) for _ in range(4)]
            rs = [mpmath.mpf(rng.uniform(0.5, 2)) for _ in range(4)]
            qs = [mpmath.mpf(rng.uniform(0.5, 2)) for _ in range(4)]
            rat = mpmath.fsum(a * b for a, b in zip(xs, rs)) / mpmath.fsum(a * b for a, b in zip(xs, qs))
            okn &= min(a / b for a, b in zip(rs, qs)) <= rat <= max(a / b for a, b in zip(rs, qs))
    proof.check("cap lemmas C1, C2 at 300 mpmath points", okn, kind="numeric")
    proof.step("Convexity cap (holds whatever the logit errors): the computed output is "
               "$\\Lambda\\,\\bar c+A$ with $\\bar c$ a convex combination of the allowed $v_j$ (weights "
               "$\\hat p_j\\ge0$ share the same rescales in numerator and denominator, lemma C1), "
               "$|\\Lambda-1|\\le\\nu$ from the roundings of the sums, the division, the split store and the "
               "LSE combine (lemma C2 bounds the combine's argument errors), $A$ the underflow terms. With "
               "$W=\\max v-\\min v$ and $V=\\max|v|$ over allowed keys:",
               r"|\hat o-o|\le W+\nu V+A+u_{in}\big((1+\nu)V+A\big)+\eta_{in}")
    return True


def step_entropy(proof: Proof):
    """sum_j pi_j (M - s_j) <= ln n: the weighted gap is at most the entropy."""
    j, nn = sp.symbols("j n_", integer=True, positive=True)
    s = sp.IndexedBase("s")
    M, lse_ = sp.symbols("M lse", real=True)
    # identity: M - sum pi s = (M - lse) + H(pi) with pi = e^{s - lse}; checked for n = 3.
    ss = sp.symbols("s1:4", real=True)
    Z = sum(sp.exp(x) for x in ss)
    pis = [sp.exp(x) / Z for x in ss]
    lse3 = sp.log(Z)
    H = -sum(p * sp.log(p) for p in pis)
    ident = sp.expand_log(M - sum(p * x for p, x in zip(pis, ss)) - ((M - lse3) + H), force=True)
    ok = is_zero(sp.simplify(ident))
    proof.check("entropy identity M - sum pi s = (M - lse) + H(pi) (n = 3)", ok)
    rng = random.Random(5)
    worst = -mpmath.inf
    with mpmath.workdps(30):
        for _ in range(200):
            k_ = rng.randint(1, 12)
            sv = [mpmath.mpf(rng.uniform(-30, 30)) for _ in range(k_)]
            Mx = max(sv)
            w_ = [mpmath.exp(x - Mx) for x in sv]
            tot = sum(w_)
            val = sum(wi / tot * (Mx - x) for wi, x in zip(w_, sv)) - mpmath.log(k_)
            worst = max(worst, val)
    proof.check("sum pi_j (M - s_j) <= ln n at 200 random rows (mpmath)", worst <= 0, kind="numeric",
                detail=f"max excess {mpmath.nstr(worst, 3)}")
    proof.step("Weighted gap: M <= lse and H(pi) <= ln n (Gibbs) give", r"\sum_j \pi_j (M - s_j) \le \ln n")


# ---------------------------------------------------------------------------------------------
# Assembly of the derived counts into the exported expressions.

def expressions(counts: dict) -> dict:
    """Build every exported expression from the derived counts (see :func:`derive`)."""
    ua = u_acc
    eps = 2 * c_exp * ua
    g3 = _gam(counts["arg"], ua)
    # logit error (rigorous): products of roundings -> expm1 of their u/(1-u) budgets
    th_E = expm1(counts["dot_acc"] * _w(ua) + counts["dot_op"] * _w(u_dot))
    th_a = expm1((counts["scale"] + counts["cap_in"] * h) * _w(ua))
    th_d = expm1(counts["cap_out"] * _w(ua))
    th_b = expm1(counts["bias"] * _w(ua))
    d_core = G * th_E * (1 + th_a) + X * th_a
    d_cap = d_core * (1 + h * th_d) + h * (CAP * c_tanh * ua * (1 + th_d) + Y * th_d)
    logit_err = d_cap * (1 + hb * ua) + hb * (BIAS * th_b * (1 + ua) + S * counts["bias_sum"] * ua)
    rho_e = (_gam(counts["lse"], ua) * (Smax + Dmax + logn + 1)
             + eps * (logn + 1) * (1 + _gam(2, ua)))
    arg = gap + Delta + Dmax
    comb_arg = gap + Delta + Dmax + logn + 2 * rho
    common = Delta + 2 * g3 * arg + N * counts["exp"] * _w(eps) + rho
    den = ((counts["acc_l"] + counts["split_den"]) * _w(ua) + _w(eps) + g3 * comb_arg)
    num = (counts["round_p"] * _w(u_in) + (counts["acc_pv"] + counts["split_num"]) * _w(ua)
           + _w(eps) + g3 * comb_arg)
    out = counts["div"] * _w(ua) + counts["store"] * _w(u_in) + rho
    # Per-key weights, linear in (gap, Delta) once the row maxima are known: by R4/R3,
    # expm1(x_j) <= x_j expm1(xmax)/xmax <= x_j / (1 - xmax/2) for 0 <= x_j <= xmax < 2.
    b_weight = (K + Sd) / (1 - (Kmax + Sdmax) / 2)
    d_weight = sp.exp(Kmax) * (Sn / (1 - Snmax / 2) + Sd / (1 - Sdmax / 2))
    b_max = expm1(Kmax + Sdmax)
    wB = b_weight.subs({K: common, Sd: den})
    wD = d_weight.subs({Sn: num, Sd: den})
    abs_key = (eta + eta_in) * sp.exp(Kmax + Snmax)
    abs_num = (2 * n + N) * eta * sp.exp(Kmax + Snmax)
    abs_den = (2 * n + 3 * N) * eta * sp.exp(Kmax + Sdmax)
    abs_out = (2 * N + 3) * eta + eta_in
    C_ = expm1(out)
    o_total = (SB + SD + EN + absO * ED) / (1 - beta) * (1 + C_) + C_ * absO + abs_out
    lse_total = -log1p(-(SBl + ED)) + rho
    # convexity cap (step_cap): nu from the split sums, the LSE combine and the final division
    g_n = _gam(n + N, ua)
    kap = g3 / (sp.E * (1 - g3))
    nu_split = expm1(_w(u_in) + (2 * n + 2 * N) * _w(ua))
    den_c = (1 - eps) * (1 - _gam(N, ua)) * (1 - N * kap)
    x_plus = -sp.log(den_c) + rho
    nu_c = ((1 + eps) * sp.exp(rho) / den_c - 1
            + N * (1 + eps) * (kap + sp.exp(x_plus) * expm1(x_plus * g3)))
    nu_tot = (1 + nu_c) * (1 + _gam(N, ua)) * (1 + nu_split) * (1 + counts["div"] * _w(ua)) - 1
    l_min = (1 - eps) ** N * (1 - g_n)
    a_cap = ((n * (eta + eta_in) * V + (2 * n + N) * eta) / l_min * (1 + nu_c) * (1 + _gam(N, ua))
             + (2 * N + 3) * eta)
    o_cap = W + nu_tot * V + a_cap + u_in * ((1 + nu_tot) * V + a_cap) + eta_in
    # a-priori: worst case over data with n = L keys, G <= Gm, |v| <= V, P >= 1, sum pi gap <= ln L
    sub_w = {G: Gm, X: Gm, Y: sp.Min(Gm, CAP), S: Gm, BIAS: 0, hb: 0}
    Dm = logit_err.subs(sub_w)
    rho_a = rho_e.subs({Smax: Gm, Dmax: Dm, logn: sp.log(L)})
    base = {Delta: Dm, Dmax: Dm, rho: rho_a, logn: sp.log(L), n: L}
    gap_max = 2 * (h * sp.Min(Gm, CAP) + (1 - h) * Gm)
    k_max = common.subs(base).subs(gap, gap_max)
    sd_max = den.subs(base).subs(gap, gap_max)
    sn_max = num.subs(base).subs(gap, gap_max)
    at_max = {Kmax: k_max, Sdmax: sd_max, Snmax: sn_max}
    avg = {Delta: Dm, Dmax: Dm, rho: rho_a, logn: sp.log(L), n: L, gap: sp.log(L)}
    sb_a = 2 * V * wB.subs(avg).subs(at_max)
    sd_a = V * wD.subs(avg).subs(at_max)
    ed_a = abs_den.subs(at_max).subs(n, L)
    en_a = L * V * abs_key.subs(at_max) + abs_num.subs(at_max).subs(n, L)
    beta_a = b_max.subs(at_max) + ed_a
    o_apriori = o_total.subs({rho: rho_a}).subs({SB: sb_a, SD: sd_a, EN: en_a, ED: ed_a, absO: V,
                                                  beta: beta_a})
    lse_apriori = lse_total.subs({rho: rho_a}).subs({SBl: wB.subs(avg).subs(at_max), ED: ed_a})
    return {
        "logit_err": logit_err,
        "rho": rho_e,
        "common": common,
        "den": den,
        "num": num,
        "out": out,
        "b_weight": b_weight,
        "d_weight": d_weight,
        "b_max": b_max,
        "wB": wB,
        "wD": wD,
        "abs_key": abs_key,
        "abs_num": abs_num,
        "abs_den": abs_den,
        "o_total": o_total,
        "lse_total": lse_total,
        "o_apriori": o_apriori,
        "lse_apriori": lse_apriori,
        "apriori_budget": sp.Max(k_max + sd_max, sn_max, beta_a),  # the a-priori forms need < 1
        "o_cap": o_cap,
        "o_cap_apriori": o_cap.subs({W: 2 * V, n: L, rho: rho_a}),
    }


#: expressions that are affine in some per-pair variables; bounds.py evaluates them through
#: their coefficients (exact: the derivation checks expr == c0 + sum_v c_v v symbolically).
LINEAR = {
    "logit_err": ["G", "X", "Y", "BIAS", "S"],
    "common": ["gap", "Delta"],
    "den": ["gap", "Delta"],
    "num": ["gap", "Delta"],
    "wB": ["gap", "Delta"],
    "wD": ["gap", "Delta"],
}


def linear_parts(exprs: dict) -> dict:
    """Coefficients of the affine expressions: {name: {"0": c0, var: c_var}}; raises if not affine
    or if a coefficient is not manifestly non-negative (the row maxima rely on both)."""
    out = {}
    for name, vars_ in LINEAR.items():
        e = exprs[name]
        syms = [SYMBOLS[v] for v in vars_]
        parts = {"0": e.subs({x: 0 for x in syms})}
        for x in syms:
            parts[x.name] = sp.diff(e, x)
            if any(sp.diff(parts[x.name], y) != 0 for y in syms):
                raise ArithmeticError(f"{name} is not affine in {vars_}")
            if parts[x.name].is_nonnegative is False:
                raise ArithmeticError(f"{name}: coefficient of {x.name} may be negative")
        recon = parts["0"] + sum(parts[x.name] * x for x in syms)
        if sp.expand(e - recon) != 0:
            raise ArithmeticError(f"{name} differs from its affine reconstruction")
        out[name] = parts
    return out


def first_order(expr):
    """The first-order part in the unit roundoffs (u_in, u_acc, u_dot, eta, eta_in) and in the
    symbols that are themselves first-order budgets: d/dt at t = 0 after scaling them all by t."""
    scaled = expr.subs({u: _t * u for u in _UNITS + _SMALL}, simultaneous=True)
    d = sp.diff(scaled, _t).subs(_t, 0)
    return sp.expand(sp.expand_log(d, force=True))


#: argument symbols of each exported expression (the order lambdify uses)
ARGS = {
    "logit_err": ["G", "X", "Y", "CAP", "BIAS", "S", "h", "hb", "E", "u_acc", "u_dot", "c_tanh"],
    "rho": ["Smax", "Dmax", "logn", "u_acc", "c_exp"],
    "common": ["Delta", "gap", "Dmax", "rho", "N", "u_acc", "c_exp"],
    "den": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "u_acc", "c_exp"],
    "num": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "u_in", "u_acc", "c_exp"],
    "out": ["rho", "u_in", "u_acc"],
    "b_weight": ["K", "Sd", "Kmax", "Sdmax"],
    "d_weight": ["Sn", "Sd", "Kmax", "Snmax", "Sdmax"],
    "b_max": ["Kmax", "Sdmax"],
    "wB": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "Kmax", "Sdmax", "u_acc", "c_exp"],
    "wD": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "Kmax", "Snmax", "Sdmax", "u_in", "u_acc",
           "c_exp"],
    "abs_key": ["Kmax", "Snmax", "eta", "eta_in"],
    "abs_num": ["Kmax", "Snmax", "n", "N", "eta"],
    "abs_den": ["Kmax", "Sdmax", "n", "N", "eta"],
    "o_total": ["SB", "SD", "EN", "ED", "absO", "beta", "rho", "u_in", "u_acc", "N", "eta", "eta_in"],
    "lse_total": ["SBl", "ED", "rho"],
    "o_apriori": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N", "Gm",
                  "V", "CAP", "h"],
    "o_cap": ["W", "V", "n", "N", "rho", "u_in", "u_acc", "c_exp", "eta", "eta_in"],
    "apriori_budget": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N", "Gm",
                       "CAP", "h"],
    "o_cap_apriori": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N", "Gm",
                      "V", "CAP", "h"],
    "lse_apriori": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N",
                    "Gm", "CAP", "h"],
}


def derive(proof: Proof | None = None):
    """Run every step (SymPy), assemble the expressions. Returns (proof, counts, expressions)."""
    proof = proof or Proof("fp_error", "Floating-point error bound of the tiled forward (theorem 6)", "")
    _RECORDED.clear()
    dot_acc, dot_op = step_dot(proof)
    scale = step_scale(proof)
    cap_in, cap_out = step_softcap(proof)
    tanh_default = step_tanh_model(proof)
    bias, bias_sum = step_bias(proof)
    step_max(proof)
    arg, exp_count = step_exp(proof)
    step_rescale(proof)
    acc_pv, acc_l = step_accumulate(proof)
    round_p = step_round_p(proof)
    div = step_division(proof)
    lse = step_lse(proof)
    split_num, split_den = step_split(proof)
    step_assembly(proof)
    step_remainder(proof)
    step_entropy(proof)
    store = step_store(proof)
    step_cap(proof)
    _spot_check_linearisations(proof)
    counts = dict(dot_acc=dot_acc, dot_op=dot_op, scale=scale, cap_in=cap_in, cap_out=cap_out,
                  bias=bias, bias_sum=bias_sum, arg=arg, exp=exp_count, acc_pv=acc_pv, acc_l=acc_l,
                  round_p=round_p, div=div, lse=lse, store=store, split_num=split_num, split_den=split_den,
                  tanh_default=tanh_default)
    exprs = expressions(counts)
    try:
        linear_parts(exprs)
        proof.check("affine decompositions (logit error in G,X,Y,|b|,|s|; budgets and weights in "
                    "gap, Delta) are exact with non-negative coefficients", True)
    except ArithmeticError as exc:
        proof.check("affine decompositions exact", False, detail=str(exc))
    for name, e in exprs.items():
        free = {s.name for s in e.free_symbols}
        if not free <= set(ARGS[name]):
            proof.check(f"expression {name} uses only its declared arguments", False,
                        detail=f"extra: {sorted(free - set(ARGS[name]))}")
    return proof, counts, exprs


def golden_dict(counts: dict, exprs: dict) -> dict:
    lin = linear_parts(exprs)
    return {
        "linear": {k: {v: str(c) for v, c in parts.items()} for k, parts in lin.items()},
        "about": "Derived by flashproof.proofs.fp_error (SymPy); regenerate with "
                 "`python -m flashproof.proofs.fp_error --write-golden`. bounds.py lambdifies these.",
        "counts": {k: str(v) for k, v in counts.items()},
        "args": ARGS,
        "expressions": {k: str(v) for k, v in exprs.items()},
        "first_order": {k: str(first_order(exprs[k])) for k in ("logit_err", "rho", "common", "den",
                                                                   "num", "out", "o_apriori",
                                                                   "lse_apriori", "o_cap")},
    }


def generated_source(data: dict) -> str:
    """numpy source of every golden expression and affine coefficient (SymPy's NumPyPrinter):
    bounds.py imports it, so evaluating a bound needs neither SymPy nor parsing."""
    from sympy.printing.numpy import NumPyPrinter

    local = dict(SYMBOLS, expm1=expm1, log1p=log1p)
    pr = NumPyPrinter({"fully_qualified_modules": True})
    out = ['"""GENERATED by flashproof.proofs.fp_error from proofs/golden/fp_error.json: do not edit.',
           "", "Regenerate with `python -m flashproof.proofs.fp_error --write-golden`; tests/test_proofs_golden.py",
           'checks that this file equals a fresh generation."""', "import functools", "", "import numpy", "",
           '__all__ = ["FUNCTIONS", "LINEAR", "ARGS", "TANH_EXTRA"]', "",
           f"TANH_EXTRA = {float(sp.sympify(data['counts']['tanh_default'], locals=local).subs(c_exp, 0))!r}",
           f"ARGS = {json.dumps(data['args'], sort_keys=True)}", ""]
    funcs, lins = [], []
    for name in sorted(data["expressions"]):
        args = data["args"][name]
        out += [f"def f_{name}({', '.join(args)}):",
                f"    return {pr.doprint(sp.sympify(data['expressions'][name], locals=local))}", "", ""]
        funcs.append(name)
    for name in sorted(data["linear"]):
        args = [a for a in data["args"][name] if a not in data["linear"][name]]
        for var in sorted(data["linear"][name]):
            out += [f"def lin_{name}_{var}({', '.join(args)}):",
                    f"    return {pr.doprint(sp.sympify(data['linear'][name][var], locals=local))}", "", ""]
        lins.append((name, args, sorted(data["linear"][name])))
    out.append("FUNCTIONS = {" + ", ".join(f'"{n}": f_{n}' for n in funcs) + "}")
    out.append("LINEAR = {" + ", ".join(
        f'"{n}": ({a!r}, {{' + ", ".join(f'"{v}": lin_{n}_{v}' for v in vs) + "})" for n, a, vs in lins) + "}")
    return "\n".join(out) + "\n"


def write_golden(path: Path = GOLDEN_PATH) -> dict:
    _, counts, exprs = derive()
    data = golden_dict(counts, exprs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    GENERATED_PATH.write_text(generated_source(data))
    return data


@timed
def prove() -> Proof:
    from . import fp_instance, tightness  # noqa: F401  (imported lazily: heavier)

    proof = Proof(
        "fp_error", "Floating-point error bound of the tiled forward (theorem 6)",
        r"For any kernel that computes the spec's online-softmax recurrence in floating point "
        r"(any tiling, any merge tree or split-KV LSE combine, fp32 accumulators, P rounded to the "
        r"storage dtype before $P V$ while $\ell$ sums the unrounded $P$, output rounded to the "
        r"storage dtype, GQA, masks, softcap, additive mask), under the model "
        r"$fl(x\circ y) = (x\circ y)(1+\delta)+e$, $|\delta|\le u$, $|e|\le\eta$, and without "
        r"overflow, every output element satisfies $|\hat o_{i,e} - o_{i,e}| \le$ "
        r"`running_forward_bound` $\le$ `apriori_forward_bound`, and the LSE likewise.")
    proof, counts, exprs = derive(proof)
    golden = json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.exists() else None
    fresh = golden_dict(counts, exprs)
    proof.check("proofs/bounds_gen.py (what bounds.py evaluates) is the code generated from them",
                GENERATED_PATH.exists() and GENERATED_PATH.read_text() == generated_source(fresh))
    proof.check("derived expressions equal proofs/golden/fp_error.json",
                golden is not None and golden["expressions"] == fresh["expressions"]
                and golden["first_order"] == fresh["first_order"]
                and golden["linear"] == fresh["linear"] and golden["counts"] == fresh["counts"])
    proof.extra["first_order"] = fresh["first_order"]
    proof.extra["expressions"] = fresh["expressions"]
    proof.extra["counts"] = fresh["counts"]
    fp_instance.check_instances(proof)
    proof.extra["tightness"] = tightness.experiment(proof)
    return proof


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--write-golden" in argv:
        data = write_golden()
        print(f"wrote {GOLDEN_PATH} ({len(data['expressions'])} expressions)")
        return 0
    p = prove()
    print(p.summary())
    return 0 if p.ok else 1


if __name__ == "__main__":
    sys.exit(main())

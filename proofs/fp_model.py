"""The rounding model shared by the floating-point theorems (6: forward, 4b: backward).

Model: fl(x op y) = (x op y)(1 + d) + e, |d| <= u, |e| <= eta. A loop of a kernel (a dot
product, a tile's running sum, a rescale chain, a merge of splits) is written as its *body*:
a SymPy expression of the new accumulator in the old accumulator, the new item(s) and the
body's rounding variables d_i. :func:`step_counts` differentiates the body at d = 0 and reads
off, per unit roundoff, how many roundings an old term meets in one step (``inc``) and how
many a new item meets when it enters (``new``); :func:`chain_count` solves the recurrence
c(s) = c(s - 1) + inc, c(0) = new with SymPy's ``rsolve`` for a symbolic number of steps s.
Nothing in a count is typed in: it comes from the body.

A count is exact, not only first order: a summation-type body is multilinear in the (1 + d_i),
so a term that meets c roundings carries prod_{i<=c} (1 + d_i), and |prod - 1| <=
expm1(c u / (1 - u)) (lemma R1 below) makes the remainder rigorous.

Which inequalities are machine-checked and which are argued is stated at each use;
:func:`nonneg_certificate` is the machine check of the linear inequalities between counts.
"""
from __future__ import annotations

import random

import mpmath
import sympy as sp

from .core import Proof, is_zero

__all__ = [
    "w", "gam", "Fresh", "Linearisations", "step_counts", "chain_count", "nonneg_certificate",
    "add_counts", "remainder_lemmas", "entropy_lemma", "lse_lipschitz_lemma", "log_sum_scaling_lemma",
    "ceil_lemma",
]


def w(u):
    """|log(1 + d)| <= u/(1 - u) for |d| <= u: the budget of one rounding in the remainder lemma."""
    return u / (1 - u)


def gam(k, u):
    """Higham's gamma_k = k u / (1 - k u)."""
    return k * u / (1 - k * u)


class Fresh:
    """Fresh real rounding variables, each tagged with the unit roundoff it stands for."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.units: dict = {}

    def __call__(self, unit):
        d = sp.Symbol(f"{self.prefix}{len(self.units)}", real=True)
        self.units[d] = unit
        return d


class Linearisations:
    """Every first-order propagation a derivation computes, for the mpmath spot check at the end."""

    def __init__(self):
        self.recorded: list = []

    def lin(self, expr, deltas):
        """d expr / d delta at delta = 0, for every rounding variable."""
        zero = {d: 0 for d in deltas}
        out = {d: sp.simplify(sp.diff(expr, d).subs(zero)) for d in deltas}
        self.recorded.append((expr, list(deltas), out))
        return out

    def spot_check(self, proof: Proof, seed: int = 17) -> None:
        """(f(x, t r) - f(x, 0)) / t -> sum_k c_k(x) r_k at random points x, random directions r
        and t = 1e-30 (80 digits)."""
        rng = random.Random(seed)
        worst = mpmath.mpf(0)
        with mpmath.workdps(80):
            for expr, deltas, lin in self.recorded:
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
        proof.check(f"every step's linearisation ({len(self.recorded)} of them) matches mpmath finite "
                    "differences at random points", worst < mpmath.mpf(10) ** -20, kind="numeric",
                    detail=f"max relative deviation {mpmath.nstr(worst, 3)}")


def add_counts(*counts):
    """Sum of per-unit count dicts."""
    out: dict = {}
    for c in counts:
        for k, v in c.items():
            out[k] = sp.simplify(out.get(k, 0) + v)
    return out


def step_counts(lins: Linearisations, body, *, state, items, units: dict):
    """Per-unit rounding counts of one loop step, derived from its body by differentiation.

    ``body``: the new accumulator as a SymPy expression in ``state`` (the old accumulator; None
    for a first step), ``items`` (the new terms) and the rounding variables, the keys of
    ``units`` ({d: unit}). The old accumulator is taken as A(1 + theta) + R (a tracked old term
    A with its relative perturbation theta, and the rest R), each item as Y(1 + theta_Y).
    Returns (inc, new): ``inc`` {unit: count} for the tracked old term, ``new`` a list of
    {unit: count} per item; a count is sum_d |coefficient of the term in d body / d d| divided by
    the term's exact propagated value. Raises if the old term's own perturbation does not pass
    through with factor exactly 1 or a count is not a constant (then the body is not a sum step).
    """
    A, R, thA = sp.symbols("A_old R_old theta_old", real=True)
    ys = [sp.Symbol(f"Y_new{i}", real=True) for i in range(len(items))]
    ths = [sp.Symbol(f"theta_new{i}", real=True) for i in range(len(items))]
    sub = {y0: y * (1 + t) for y0, y, t in zip(items, ys, ths)}
    if state is not None:
        sub[state] = A * (1 + thA) + R
    e = body.subs(sub, simultaneous=True)
    deltas = list(units)
    lin = lins.lin(e, ([thA] if state is not None else []) + ths + deltas)
    e0 = sp.expand(e.subs({d: 0 for d in [thA] + ths + deltas}))
    terms = ([A] if state is not None else []) + ys

    def rel(coef, t, val):
        c = sp.Poly(sp.expand(coef), *terms, R).coeff_monomial(t) if coef != 0 else sp.Integer(0)
        r = sp.simplify(c / val)
        if r.free_symbols:
            raise ArithmeticError(f"count of {t} in {coef} is not a constant: {r}")
        return abs(r)

    inc: dict = {}
    if state is not None:
        va = sp.diff(e0, A)
        if not is_zero(rel(lin[thA], A, va) - 1):
            raise ArithmeticError("the old term's perturbation does not pass through the step unchanged")
        for d in deltas:
            inc[units[d]] = inc.get(units[d], 0) + rel(lin[d], A, va)
    new = []
    for y, t in zip(ys, ths):
        vy = sp.diff(e0, y)
        if not is_zero(rel(lin[t], y, vy) - 1):
            raise ArithmeticError("a new item's perturbation does not pass through the step unchanged")
        c: dict = {}
        for d in deltas:
            c[units[d]] = c.get(units[d], 0) + rel(lin[d], y, vy)
        new.append(c)
    return inc, new


def chain_count(inc, start, steps):
    """Solve c(s) = c(s - 1) + inc, c(0) = start (SymPy ``rsolve``) and evaluate at ``steps``:
    the count of a term after ``steps`` more loop steps, per unit."""
    s = sp.Symbol("s", integer=True, nonnegative=True)
    c = sp.Function("c")
    out = {}
    for unit in set(inc) | set(start):
        sol = sp.rsolve(c(s) - c(s - 1) - inc.get(unit, 0), c(s), {c(0): start.get(unit, 0)})
        out[unit] = sp.expand(sol.subs(s, steps))
    return out


def nonneg_certificate(expr, lower: dict) -> bool:
    """Machine check that ``expr`` >= 0 whenever every symbol x in ``lower`` satisfies x >= lower[x]
    (lower bounds may involve other symbols, substituted in order): substitute x = lower[x] + z_x
    with z_x >= 0, expand, and require every coefficient to be manifestly non-negative (the other
    symbols are positive by assumption)."""
    e = sp.sympify(expr)
    zs = []
    for x, lo in lower.items():
        z = sp.Symbol(f"z_{x.name}", nonnegative=True)
        zs.append(z)
        e = e.subs(x, lo + z)
    e = sp.expand(e)
    if e == 0:
        return True
    for term in sp.Add.make_args(e):
        coef, _ = term.as_independent(*zs)
        if not (coef.is_nonnegative or sp.simplify(coef).is_nonnegative):
            return False
    return True


def ceil_lemma(proof: Proof):
    """ceil(m / k) <= (m - 1)/k + 1 for integers m, k >= 1 (the number of k-blocks of m terms)."""
    q, r, k = sp.symbols("q r k", integer=True, nonnegative=True)
    kp = sp.Symbol("kp", integer=True, positive=True)
    # m = q k + r with 1 <= r <= k: ceil(m / k) = q + 1 and (m - 1)/k + 1 = q + (r - 1)/k + 1
    m = q * kp + r
    diff = ((m - 1) / kp + 1) - (q + 1)
    ok = nonneg_certificate(sp.simplify(diff * kp), {r: 1})
    with mpmath.workdps(20):
        ok_num = all(-(-mm // kk) <= (mm - 1) / kk + 1 for mm in range(1, 300) for kk in range(1, 40))
    proof.check("lemma: ceil(m/k) <= (m - 1)/k + 1 (m = qk + r, 1 <= r <= k; certificate) and for m < 300, k < 40",
                ok and ok_num)
    return ok and ok_num


def remainder_lemmas(proof: Proof):
    """R1-R4: the second-order remainder is rigorous (derivative proofs, mpmath spot checks)."""
    d, x = sp.symbols("d x", nonnegative=True)
    f = d / (1 - d) + sp.log(1 - d)  # (R1) -log(1 - d) <= d/(1 - d): f(0) = 0, f' = d/(1-d)^2 >= 0
    r1 = f.subs(d, 0) == 0 and is_zero(sp.diff(f, d) - d / (1 - d) ** 2)
    g = d - sp.log(1 + d)  # (R2) log(1 + d) <= d
    r2 = g.subs(d, 0) == 0 and is_zero(sp.diff(g, d) - d / (1 + d))
    hh = (1 + x / 2) * sp.exp(-x) - (1 - x / 2)  # (R3) e^x - 1 <= x/(1 - x/2) on [0, 2)
    r3 = hh.subs(x, 0) == 0 and is_zero(sp.diff(hh, x) - (1 - (1 + x) * sp.exp(-x)) / 2)
    q = x * sp.exp(x) - sp.exp(x) + 1  # (R4) expm1(x)/x is increasing
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


def entropy_lemma(proof: Proof):
    """sum_j pi_j (M - s_j) <= ln n: the weighted gap is at most the entropy (symbolic length)."""
    s_, M, Z = sp.Symbol("s_j", real=True), sp.Symbol("M", real=True), sp.Symbol("Z", positive=True)
    pi = sp.exp(s_) / Z  # Z = sum_k e^{s_k}, lse = log Z, sum_j pi_j = 1
    # per term (any j of a row of any length): pi_j (M - s_j) = pi_j (M - lse) - pi_j log pi_j;
    # summing over j (linearity, sum pi = 1): M - sum pi s = (M - lse) + H(pi) <= 0 + ln n (Gibbs)
    ok = is_zero(sp.expand_log(pi * (M - s_) - (pi * (M - sp.log(Z)) - pi * sp.log(pi)), force=True))
    ok = ok and _entropy_fixed(3)
    proof.check("entropy identity pi_j (M - s_j) = pi_j (M - lse) - pi_j log pi_j per term (any length), "
                "and M - sum pi s = (M - lse) + H(pi) at n = 3", ok)
    rng = random.Random(5)
    worst = -mpmath.inf
    with mpmath.workdps(30):
        for _ in range(200):
            k_ = rng.randint(1, 12)
            sv = [mpmath.mpf(rng.uniform(-30, 30)) for _ in range(k_)]
            Mx = max(sv)
            w_ = [mpmath.exp(x - Mx) for x in sv]
            tot = sum(w_)
            worst = max(worst, sum(wi / tot * (Mx - x) for wi, x in zip(w_, sv)) - mpmath.log(k_))
    proof.check("sum pi_j (M - s_j) <= ln n at 200 random rows (mpmath)", worst <= 0, kind="numeric",
                detail=f"max excess {mpmath.nstr(worst, 3)}")
    proof.step("Weighted gap: M <= lse and H(pi) <= ln n (Gibbs, argued) give", r"\sum_j \pi_j (M - s_j) \le \ln n")


def _entropy_fixed(n: int) -> bool:
    ss = sp.symbols(f"s1:{n + 1}", real=True)
    M = sp.Symbol("M", real=True)
    Z = sum(sp.exp(x) for x in ss)
    pis = [sp.exp(x) / Z for x in ss]
    H = -sum(p * sp.log(p) for p in pis)
    ident = sp.expand_log(M - sum(p * x for p, x in zip(pis, ss)) - ((M - sp.log(Z)) + H), force=True)
    return is_zero(sp.simplify(ident))


def lse_lipschitz_lemma(proof: Proof):
    """|lse(s + delta) - lse(s)| <= max_j |delta_j| (any magnitude): d/dt lse(s + t delta) =
    sum_j pi_j(t) delta_j, a convex combination of the delta_j (symbolic length)."""
    j, nn = sp.symbols("j n_", integer=True, positive=True)
    s, dl = sp.IndexedBase("s", real=True), sp.IndexedBase("delta", real=True)
    t = sp.Symbol("t", real=True)
    Z = sp.Sum(sp.exp(s[j] + t * dl[j]), (j, 1, nn))
    deriv = sp.diff(sp.log(Z), t)
    want = sp.Sum(sp.exp(s[j] + t * dl[j]) * dl[j], (j, 1, nn)) / Z
    ok = is_zero(sp.simplify(deriv - want)) or sp.simplify(deriv * Z - want * Z) == 0
    rng = random.Random(31)
    okn = True
    with mpmath.workdps(90):
        for _ in range(200):
            k_ = rng.randint(1, 10)
            sv = [mpmath.mpf(rng.uniform(-1e6, 1e6)) * mpmath.mpf(10) ** rng.randint(-3, 24) for _ in range(k_)]
            dv = [mpmath.mpf(rng.uniform(-1, 1)) * mpmath.mpf(10) ** rng.randint(-6, 20) for _ in range(k_)]
            lse = lambda xs: max(xs) + mpmath.log(mpmath.fsum(mpmath.exp(x - max(xs)) for x in xs))  # noqa: E731
            okn &= abs(lse([a + b for a, b in zip(sv, dv)]) - lse(sv)) <= max(abs(b) for b in dv) * (1 + mpmath.mpf(10) ** -30)
    proof.check("lemma: d lse(s + t delta)/dt = sum_j pi_j(t) delta_j (symbolic length n)", ok)
    proof.check("lemma: |lse(s + delta) - lse(s)| <= max|delta| at 200 mpmath rows, |s| up to 1e30", okn,
                kind="numeric")
    proof.step("The LSE is 1-Lipschitz in the max-norm of the logits (Blanchard, Higham and Higham 2021): "
               "its derivative along any direction is a convex combination of the direction's entries, "
               "so logit errors enter additively at any logit magnitude.",
               r"|\mathrm{lse}(\hat s)-\mathrm{lse}(s)|\le\max_j|\hat s_j-s_j| = \Delta_{max}")
    return ok and okn


def log_sum_scaling_lemma(proof: Proof):
    """f(t) = log sum_j e^{-t g_j} (g_j >= 0, min g = 0): |f(1 +- gamma) - f(1)| <= ln n (-log(1 - gamma)).
    Exponent arguments rounded relatively (|xi_j| <= gamma g_j) move log l by at most that."""
    j, nn = sp.symbols("j n_", integer=True, positive=True)
    g = sp.IndexedBase("g", nonnegative=True)
    t, gm = sp.symbols("t gamma", positive=True)
    logn = sp.Symbol("logn", positive=True)
    Z = sp.Sum(sp.exp(-t * g[j]), (j, 1, nn))
    fprime = sp.diff(sp.log(Z), t)
    want = -sp.Sum(g[j] * sp.exp(-t * g[j]), (j, 1, nn)) / Z
    ok_d = is_zero(sp.simplify(fprime - want)) or sp.simplify(fprime * Z - want * Z) == 0
    # t sum pi_j(t) g_j <= ln n (entropy lemma on the logits -t g_j, max 0): |f'(t)| <= ln n / t
    up = sp.integrate(logn / t, (t, 1 - gm, 1))
    down = sp.integrate(logn / t, (t, 1, 1 + gm))
    ok_i = is_zero(up + logn * sp.log(1 - gm)) and is_zero(down - logn * sp.log(1 + gm))
    # log(1 + g) <= -log(1 - g): their sum is log(1 - g^2) <= 0
    ok_c = is_zero(sp.expand_log(sp.log(1 + gm) + sp.log(1 - gm) - sp.log((1 - gm) * (1 + gm)), force=True))
    rng = random.Random(37)
    okn = True
    with mpmath.workdps(40):
        for _ in range(300):
            k_ = rng.randint(1, 30)
            gv = [mpmath.mpf(0)] + [mpmath.mpf(rng.uniform(0, 1)) * mpmath.mpf(10) ** rng.randint(-2, 8)
                                    for _ in range(k_ - 1)]
            gmv = mpmath.mpf(rng.uniform(0, 0.3)) * mpmath.mpf(10) ** rng.randint(-7, 0)
            f = lambda tt: mpmath.log(mpmath.fsum(mpmath.exp(-tt * x) for x in gv))  # noqa: E731
            lim = mpmath.log(k_) * -mpmath.log(1 - gmv) * (1 + mpmath.mpf(10) ** -25)
            okn &= abs(f(1 - gmv) - f(1)) <= lim and abs(f(1 + gmv) - f(1)) <= lim
    proof.check("lemma: f'(t) = -sum pi_j(t) g_j (symbolic length) and the integrals of ln n / t", ok_d and ok_i and ok_c)
    proof.check("lemma: |f(1 +- gamma) - f(1)| <= ln n * -log(1 - gamma) at 300 mpmath rows (gaps up to 1e8)", okn,
                kind="numeric")
    proof.step("Relative rounding of every exp argument (|xi_j| <= gamma (M - s_j)) moves log l by at most "
               "ln n (-log(1 - gamma)) at any logit magnitude: f(t) = log sum e^{-t g_j} has "
               "|f'(t)| = sum pi_j(t) g_j <= ln n / t (entropy lemma at the logits -t g_j).",
               r"\Big|\log\sum_j e^{-g_j+\xi_j}-\log\sum_j e^{-g_j}\Big|\le \ln n\,\big(-\log(1-\gamma)\big)")
    return ok_d and ok_i and okn

"""Shared machinery of the proofs: results, symbolic zero tests, mpmath spot checks, SymPy ops.

Every theorem module builds a :class:`Proof` (statement, derivation steps, checks). A check is
either symbolic (SymPy reduces an expression to exactly 0, or an inequality to a manifestly
non-negative form) or numeric (mpmath at random points, 50 digits). A proof is PROVED iff every
check passed. Nothing here re-implements the online-softmax merge: :class:`SympyOps` lets
flashproof.spec's own ``merge``/``block_state``/``finalize`` run on SymPy expressions.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import mpmath
import sympy as sp

from flashproof.spec import ScalarOps, State, mpmath_ops

__all__ = [
    "Check",
    "Proof",
    "SympyOps",
    "SYMPY",
    "SymVec",
    "SymbolicWidth",
    "exact_equal",
    "exact_floats",
    "canonical",
    "is_zero",
    "random_point",
    "spot_check",
    "sym_states_equal",
]


@dataclass
class Check:
    """One verified claim: ``ok`` is True only if the claim was actually established."""

    name: str
    ok: bool
    kind: str  # "symbolic" or "numeric"
    detail: str = ""


@dataclass
class Proof:
    """A theorem, its derivation steps (text, LaTeX) and the checks that establish it."""

    key: str
    title: str
    statement: str  # LaTeX (Markdown-embeddable)
    steps: list = field(default_factory=list)  # (text, latex or "")
    checks: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # theorem-specific data for the report
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def step(self, text: str, latex: str = "") -> None:
        self.steps.append((text, latex))

    def check(self, name: str, ok, kind: str = "symbolic", detail: str = "") -> bool:
        ok = bool(ok)
        self.checks.append(Check(name, ok, kind, detail))
        return ok

    def summary(self) -> str:
        bad = [c.name for c in self.checks if not c.ok]
        head = f"{'PROVED' if self.ok else 'FAILED'}  {self.title}  ({self.seconds:.2f} s, {len(self.checks)} checks)"
        return head + ("".join(f"\n    failed: {b}" for b in bad) if bad else "")


def timed(fn: Callable[..., Proof]) -> Callable[..., Proof]:
    """Decorator: record the wall time of a proof function on the Proof it returns."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        p = fn(*args, **kwargs)
        p.seconds = time.perf_counter() - t0
        return p

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


__all__.append("timed")


def proof_main(prove, *, write_golden=None, golden_path=None):
    """The ``main`` of a theorem module: prove, print the summary, exit 0 iff proved. With
    ``write_golden`` (a derivation that writes ``golden_path``), ``--write-golden`` regenerates it."""

    def main(argv=None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        if write_golden is not None and "--write-golden" in argv:
            data = write_golden()
            print(f"wrote {golden_path} ({len(data['expressions'])} expressions)")
            return 0
        pr = prove()
        print(pr.summary())
        return 0 if pr.ok else 1

    return main


__all__.append("proof_main")


class SymbolicWidth(TypeError):
    """An operator read a component, the length or an iterator of a symbolic-width accumulator."""


class SymVec:
    """An accumulator of symbolic length, given by its component ``expr`` at a symbolic index.

    Only :class:`SympyOps`' ``vec_scale``/``vec_add``/``zeros`` act on it (component-wise by
    construction); ``len``, indexing and iteration raise :class:`SymbolicWidth`, so an operator that
    treats components individually cannot be evaluated this way (it is checked at finite widths)."""

    __slots__ = ("expr",)

    def __init__(self, expr):
        self.expr = sp.sympify(expr)

    def _refuse(self, *_):
        raise SymbolicWidth("the accumulator has symbolic length: no len(), indexing or iteration")

    __len__ = __iter__ = __getitem__ = __setitem__ = _refuse

    def __eq__(self, other):
        return isinstance(other, SymVec) and self.expr == other.expr

    __hash__ = None

    def __repr__(self):
        return f"SymVec({self.expr})"


class SympyOps(ScalarOps):
    """spec's arithmetic on SymPy expressions: exp/log/Max symbolic, -oo for masked keys.

    Accumulators are lists of expressions, or a :class:`SymVec` (symbolic head dimension)."""

    neg_inf = -sp.oo
    zero = sp.Integer(0)
    one = sp.Integer(1)

    def exp(self, x):
        return sp.exp(x)

    def log(self, x):
        return sp.log(x)

    def maximum(self, a, b):
        return sp.Max(a, b)

    def is_neg_inf(self, x) -> bool:
        return x == -sp.oo  # structural: a symbol is never -oo

    def shift(self, m):
        return self.zero if self.is_neg_inf(m) else m

    def is_empty(self, l) -> bool:
        # the literal 0 (the identity's l), or an exact zero such as a Float 0.0; never a symbol
        return l == 0 or (isinstance(l, sp.Number) and l.is_zero is True)

    def zeros(self, dim):
        if isinstance(dim, sp.Basic) and not dim.is_Integer:
            return SymVec(0)  # a symbolic width
        return [sp.Integer(0)] * dim

    def vec_scale(self, a, acc):
        if isinstance(a, SymVec):
            raise SymbolicWidth("vec_scale: the scale must be a scalar")
        return SymVec(a * acc.expr) if isinstance(acc, SymVec) else super().vec_scale(a, acc)

    def vec_add(self, x, y):
        if isinstance(x, SymVec) or isinstance(y, SymVec):
            if not (isinstance(x, SymVec) and isinstance(y, SymVec)):
                raise SymbolicWidth("vec_add of a symbolic-width and a finite accumulator")
            return SymVec(x.expr + y.expr)
        return super().vec_add(x, y)

    def finalize(self, st: State):
        if isinstance(st.acc, SymVec):
            if self.is_empty(st.l):
                return SymVec(0), self.neg_inf
            return SymVec(st.acc.expr / st.l), st.m + self.log(st.l)
        return super().finalize(st)


SYMPY = SympyOps()


def canonical(expr):
    """Bring exponential/sum expressions to a canonical form: expand, then combine exp products."""
    expr = sp.sympify(expr)
    expr = sp.expand(sp.powsimp(sp.expand(expr), combine="exp"))
    return sp.powsimp(expr, combine="exp")


def is_zero(expr) -> bool:
    """True iff SymPy reduces ``expr`` to exactly 0 (never a numeric tolerance)."""
    expr = sp.sympify(expr)
    if expr == 0:
        return True
    if expr.is_Number:
        return bool(expr.is_Float and expr == 0.0)  # a Float 0.0 is exactly 0 but != Integer 0
    if expr.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return False  # an infinity or NaN left in a difference is never exactly 0
    c = canonical(expr)
    if c == 0:
        return True
    if not c.free_symbols and _constant_nonzero(c):
        return False
    if _numerically_nonzero(c):
        return False  # a refutation only: True is never returned on numeric evidence
    s = sp.simplify(c)
    return s == 0


def _constant_nonzero(expr) -> bool:
    """Refutation for a constant (exact numbers, exp of rationals...): |value| > 1e-40 at 60 digits."""
    try:
        val = sp.N(expr, 60)
        return bool(val.is_number and val.is_comparable and abs(val) > sp.Float(10) ** -40)
    except Exception:  # noqa: BLE001 -- optional probe; simplify decides
        return False


def exact_floats(expr):
    """Each Float as the exact binary fraction it holds (SymPy would round a Rational to the Float's
    precision when the two meet, making 0.333... - 1/3 == 0)."""
    floats = expr.atoms(sp.Float)
    return expr.xreplace({f: sp.Rational(f) for f in floats if f.is_finite}) if floats else expr


def exact_equal(x, y) -> bool:
    """x == y exactly: structural where an infinity or NaN is involved (-oo == -oo, NaN never
    equals anything), else SymPy reduces x - y to 0."""
    x, y = exact_floats(sp.sympify(x)), exact_floats(sp.sympify(y))
    if x.has(sp.nan) or y.has(sp.nan) or x.has(sp.zoo) or y.has(sp.zoo):
        return False
    if x.has(sp.oo, -sp.oo) or y.has(sp.oo, -sp.oo):
        return x == y
    return is_zero(x - y)


def _numerically_nonzero(expr) -> bool:
    """Cheap refutation: the expression is clearly non-zero at a random admissible point."""
    if expr.has(sp.Sum, sp.Indexed) or not expr.free_symbols:
        return False
    syms = sorted(expr.free_symbols, key=lambda s: s.name)
    rng = random.Random(12345)
    try:
        f = sp.lambdify(syms, expr, modules="mpmath")
        with mpmath.workdps(40):
            for _ in range(2):
                pt = random_point(syms, rng)
                val = f(*[pt[s] for s in syms])
                if isinstance(val, (mpmath.mpf, mpmath.mpc)) and mpmath.isfinite(val) and abs(val) > mpmath.mpf(10) ** -25:
                    continue
                return False
        return True
    except Exception:  # noqa: BLE001 -- the probe is optional; fall back to simplify
        return False


def sym_states_equal(a: State, b: State) -> bool:
    """Exact equality of two states: m, l and every accumulator component (a symbolic-width
    accumulator by its component); accumulators of different lengths are unequal."""
    if not (exact_equal(a.m, b.m) and exact_equal(a.l, b.l)):
        return False
    if isinstance(a.acc, SymVec) or isinstance(b.acc, SymVec):
        return isinstance(a.acc, SymVec) and isinstance(b.acc, SymVec) and exact_equal(a.acc.expr, b.acc.expr)
    xs, ys = list(a.acc), list(b.acc)
    return len(xs) == len(ys) and all(exact_equal(x, y) for x, y in zip(xs, ys))


def random_point(symbols: Iterable[sp.Symbol], rng: random.Random, lo=-3.0, hi=3.0) -> dict:
    """Random mpmath values for ``symbols``, respecting positivity/nonnegativity assumptions."""
    out = {}
    for s in symbols:
        if s.is_positive or s.is_nonnegative:
            x = mpmath.mpf(rng.uniform(0.05, hi))
        else:
            x = mpmath.mpf(rng.uniform(lo, hi))
        if s.is_integer:
            x = mpmath.mpf(rng.randint(1, 6))
        out[s] = x
    return out


def spot_check(lhs, rhs, symbols, *, n: int = 8, seed: int = 0, tol_digits: int = 30,
               point: Callable | None = None) -> tuple[bool, str]:
    """Evaluate lhs - rhs with mpmath (50 digits) at ``n`` random points; pass iff |diff| is
    below 10^-tol_digits relative to the size of the terms at every point.

    This is the numeric spot check that accompanies every symbolic identity."""
    rng = random.Random(seed)
    symbols = list(symbols)
    f = sp.lambdify(symbols, [sp.sympify(lhs), sp.sympify(rhs)], modules="mpmath")
    worst = mpmath.mpf(0)
    with mpmath.workdps(50):
        for _ in range(n):
            pt = point(rng) if point else random_point(symbols, rng)
            vals = f(*[pt[s] for s in symbols])
            a, b = (_flat(v) for v in vals)
            for x, y in zip(a, b, strict=True):
                d = abs(x - y)
                scale = max(mpmath.mpf(1), abs(x), abs(y))
                worst = max(worst, d / scale)
    ok = worst < mpmath.mpf(10) ** (-tol_digits)
    return ok, f"max relative difference {mpmath.nstr(worst, 3)} at {n} mpmath points"


def _flat(v):
    if isinstance(v, (list, tuple)):
        out = []
        for x in v:
            out.extend(_flat(x))
        return out
    if hasattr(v, "tolist") and not isinstance(v, mpmath.mpf):
        return _flat(v.tolist())
    return [mpmath.mpf(v) if not isinstance(v, mpmath.mpc) else v]


def push_into_sums(expr):
    """Move constant factors of ``c * Sum(f)`` inside the Sum and combine exponentials; this is
    linearity of finite sums, the only rule the symbolic-length proofs use besides range joins."""
    def is_scaled_sum(x):
        return isinstance(x, sp.Mul) and sum(isinstance(f, sp.Sum) for f in x.args) == 1

    def push(x):
        sums = [f for f in x.args if isinstance(f, sp.Sum)]
        rest = sp.Mul(*[f for f in x.args if not isinstance(f, sp.Sum)])
        return sp.Sum(sp.powsimp(sp.expand(rest * sums[0].function), combine="exp"), *sums[0].limits)

    return sp.sympify(expr).replace(is_scaled_sum, push)


def peel_last_terms(expr):
    """Sum_{j=lo}^{X+k} f = Sum_{j=lo}^{X} f + f(X+1) + ... + f(X+k) for a positive integer k
    (the induction step's range rule)."""
    def is_peelable(x):
        if not isinstance(x, sp.Sum) or len(x.limits) != 1:
            return False
        _, _, hi = x.limits[0]
        return isinstance(hi, sp.Add) and any(isinstance(t, sp.Integer) and t > 0 for t in hi.args)

    def peel(x):
        j, lo, hi = x.limits[0]
        k = sum(t for t in hi.args if isinstance(t, sp.Integer))
        top = hi - k
        return sp.Sum(x.function, (j, lo, top)) + sum(x.function.subs(j, top + i) for i in range(1, int(k) + 1))

    return sp.sympify(expr).replace(is_peelable, peel)


def _sums_refuted(expr, tries: int = 2) -> bool:
    """Cheap refutation of ``expr == 0`` for symbolic-length sums: fix the lengths to small
    integers, expand the sums, put random numbers on every remaining symbol and element."""
    rng = random.Random(4321)
    ints = sorted((x for x in expr.free_symbols if isinstance(x, sp.Symbol) and x.is_integer),
                  key=lambda x: x.name)
    try:
        for _ in range(tries):
            sub = {x: rng.randint(1, 3) for x in ints}
            e = sp.sympify(expr).subs(sub).doit()
            vals = {}
            for atom in e.atoms(sp.Indexed):
                vals[atom] = sp.Float(rng.uniform(-2, 2), 30)
            for x in e.free_symbols:
                if isinstance(x, sp.Symbol):
                    vals[x] = sp.Float(rng.uniform(0.1, 2) if (x.is_positive or x.is_nonnegative) else rng.uniform(-2, 2), 30)
            val = sp.N(e.xreplace(vals), 30)
            if not (val.is_number and val.is_finite) or abs(val) <= sp.Float(1e-20):
                return False
        return True
    except Exception:  # noqa: BLE001 -- optional probe
        return False


def sums_equal(lhs, rhs) -> bool:
    """Symbolic equality of expressions built from finite Sums of symbolic length: push constants
    inside, join adjacent ranges (SymPy's sum simplification), peel explicit last terms, and
    require the difference to be 0."""
    if _sums_refuted(sp.sympify(lhs) - sp.sympify(rhs)):
        return False  # a refutation only: equality is never concluded from numbers
    d = push_into_sums(sp.expand(peel_last_terms(sp.sympify(lhs) - sp.sympify(rhs))))
    d = sp.simplify(d)
    if d == 0:
        return True
    d = sp.simplify(push_into_sums(sp.expand(d)))
    return d == 0


__all__ += ["push_into_sums", "sums_equal", "peel_last_terms"]


_OPERATOR_FREE: dict = {}


def operator_free(key: str, fn: Callable[[], object]) -> bool:
    """The truth of a check that does not involve the operator under test, computed once per process
    (the negative controls re-run each theorem many times; the identity does not change)."""
    if key not in _OPERATOR_FREE:
        _OPERATOR_FREE[key] = bool(fn())
    return _OPERATOR_FREE[key]


__all__.append("operator_free")


MP = mpmath_ops()  # the one mpmath ops (spec.MP)
__all__ += ["MP"]

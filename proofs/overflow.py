"""Theorem 8: overflow safety. Every exp argument is <= 0 and every divisor is >= 1.

What the running max is for. The shift m of a state is exact in the reals for ANY value (theorem 2,
shift invariance); it exists for floating point. With m = max_j s_j over the state's keys:

* every exp the algorithm evaluates has an argument <= 0, so every factor e^{s_j - m}, alpha, beta
  lies in [0, 1]: exp never overflows (fp32 overflows above e^88.7, fp64 above e^709.8) and an
  underflow to 0 only drops terms below 2^-149 of the largest (theorem 6 bounds that);
* l = sum_j e^{s_j - m} >= 1 (the key attaining the max contributes e^0 = 1) and l <= n, so finalize
  divides by a number in [1, n]: no division by an underflowed 0, no overflow, log(l) in [0, log n];
* |acc| <= l max|v|.

An upper bound c >= max s_j alone gives the first point (exp args <= 0) but not l >= 1; c = max is
the shift that gives both. Exact but unsafe forms, e.g. alpha = e^{m1} / e^{m}, or exp of the raw
logits ("stupid attention" v1), are proved by theorems 1-3 and FAIL here.

Executable against any merge and any streaming variant: :class:`RecordingOps` (SymPy ops) records
every exp argument and every divisor of finalize while the operator runs, in every case of the
split of :mod:`.harness`; each recorded argument must be provably <= 0 and each divisor >= 1 under
the case's assumptions, given l >= 1 for every non-empty input state (the induction hypothesis).
Checked numerically too: float32 at logits near 100 and 1e4, float64 near 1000 and 1e6.
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import sympy as sp

from flashproof import spec
from flashproof.spec import ScalarOps, State

from . import harness as H
from .core import Proof, SympyOps, exact_floats, proof_main, timed
from .streaming import blocked, compositions, naive, online, two_pass

__all__ = ["prove", "main", "STATEMENT", "RecordingOps", "Float32ScalarOps", "SAFE_VARIANTS", "UNSAFE_VARIANTS",
           "flash_loop"]

STATEMENT = (
    r"For the merge under test $\oplus$, finalize, and the streaming variants v2 (two-pass), v3 (one-pass "
    r"online) and v4 (the flash loop, every block split): in every case of the split (ties, empty states, "
    r"masked keys) and given $\ell\ge1$ for every non-empty input state, every argument $x$ of $\exp$ "
    r"evaluated satisfies $x\le0$ (so every factor lies in $[0,1]$), the merged $\ell$ satisfies "
    r"$1\le\ell\le\ell_a+\ell_b$, and finalize divides only by $\ell\ge1$ (an empty state is not divided). "
    r"Machine-checked at accumulator width 2, all 6 cases of the merge, all 26 patterns of 3 keys and 25 of 4 "
    r"keys for the variants; symbolic length by induction (argued from the merge step). "
    r"Hence no exp overflows and no division by a vanished $\ell$ occurs in fp32 or fp64. The naive v1 "
    r"($e^{s_j}$) and $\alpha=e^{m_1}/e^{m}$ are exact but fail this theorem."
)


class RecordingOps(SympyOps):
    """SymPy ops that record every exp argument and every divisor of finalize."""

    def __init__(self):
        self.exp_args, self.divisors = [], []

    def exp(self, x):
        self.exp_args.append(sp.sympify(x))
        return sp.exp(x)

    def finalize(self, st: State):
        if not self.is_empty(st.l):
            self.divisors.append(sp.sympify(st.l))
        return super().finalize(st)


# Not spec.Float32Ops: that one is batched (NumpyOps: arrays, 0-d results this theorem's IEEE-scalar check
# refuses) and rounds a float64 exp; the merges under test here run on one row of np.float32 scalars.
class Float32ScalarOps(ScalarOps):
    """Scalar float32 arithmetic (numpy float32 scalars; exp overflows to inf as on a GPU)."""

    neg_inf = np.float32(-np.inf)
    zero = np.float32(0.0)

    def exp(self, x):
        with np.errstate(over="ignore", invalid="ignore"):
            return np.exp(np.float32(x))

    def log(self, x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.float32(x))


F32 = Float32ScalarOps()


def flash_loop(merge, s, v, dim, ops, sizes):
    """v4 with the given block sizes."""
    return blocked(merge, s, v, dim, sizes, ops)


flash_loop.per_split = True

#: variant name -> fn(merge, s, v, dim, ops[, sizes]) -> (o, lse); the safe ones this theorem proves
SAFE_VARIANTS = {
    "v2 two-pass": lambda merge, s, v, dim, ops: two_pass(s, v, dim, ops),
    "v3 one-pass online": online,
    "v4 flash loop": flash_loop,
}
#: exact but overflow-unsafe: the theorem must reject these
UNSAFE_VARIANTS = {"v1 naive (stupid attention)": lambda merge, s, v, dim, ops: naive(s, v, dim, ops)}


def _nonpositive(x) -> bool:
    x = sp.sympify(x)
    if x == -sp.oo or x.is_nonpositive is True:
        return True
    if x.has(sp.nan, sp.zoo, sp.oo) or x.is_number:
        return False
    return sp.simplify(x).is_nonpositive is True


def _at_least(x, lo) -> bool:
    """x >= lo, decided by SymPy from the assumptions; each exp(y) with y provably <= 0 may be taken
    as any number in (0, 1], written 1/(1 + r) with r >= 0 (a stronger claim: the atoms vary freely)."""
    d = exact_floats(sp.sympify(x)) - lo
    if d.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
        return False
    if d.is_nonnegative is True:
        return True
    sub = {}
    for k, e in enumerate(sorted(d.atoms(sp.exp), key=sp.default_sort_key)):
        if _nonpositive(e.args[0]):
            sub[e] = 1 / (1 + sp.Symbol(f"r{k}", nonnegative=True))
    d = sp.factor(sp.together(d.xreplace(sub)))
    return d.is_nonnegative is True or sp.simplify(d).is_nonnegative is True


def _exp_nodes(*exprs):
    out = []
    for e in exprs:
        out += [a.args[0] for a in sp.sympify(e).atoms(sp.exp)]
    return out


def _recorded_errors(rec: RecordingOps) -> list:
    bad = [x for x in rec.exp_args if not _nonpositive(x)]
    if bad:
        return [f"exp({bad[0]}): argument not provably <= 0"]
    bad = [d for d in rec.divisors if not _at_least(d, 1)]
    if bad:
        return [f"finalize divides by l = {bad[0]}, not provably >= 1"]
    return []


def _variant_runs(variants, n):
    for name, fn in variants.items():
        if getattr(fn, "per_split", False):
            for sizes in compositions(n):
                yield f"{name} blocks {sizes}", (lambda F, s, v, d, ops, fn=fn, sz=sizes: fn(F, s, v, d, ops, sz))
        else:
            yield name, fn


@timed
def prove(merge=spec.merge, *, variants=None, stop_on_failure=False) -> Proof:
    """Prove theorem 8 for ``merge`` and ``variants`` (default :data:`SAFE_VARIANTS`)."""
    default = variants is None
    variants = SAFE_VARIANTS if default else variants
    p = Proof("overflow", "Overflow safety: exp arguments <= 0, divisors >= 1 (theorem 8)", STATEMENT)
    F = H.guard(merge)
    width = 2
    pa, pb = sp.symbols("p_a p_b", nonnegative=True)

    # --- the merge, every case, l >= 1 for non-empty inputs
    def merge_case(case, rep):
        ins = H.case_states(case, width, rep=rep, l_values=[1 + pa, 1 + pb])
        rec = RecordingOps()
        out = F(ins[0], ins[1], rec)
        errs = _recorded_errors(rec)
        bad = [x for x in _exp_nodes(out.l, *out.acc) if not _nonpositive(x)]
        if bad:
            errs.append(f"the result holds exp({bad[0]}), an argument not provably <= 0")
        live = [st for st in ins if st.m != -sp.oo]
        if live:
            if not _at_least(out.l, 1):
                errs.append(f"merged l = {out.l} is not provably >= 1")
            elif not _at_least(sum(st.l for st in live) - out.l, 0):
                errs.append(f"merged l = {out.l} may exceed l_a + l_b (a factor above 1)")
        fin = RecordingOps()
        spec.finalize(out, fin)
        errs += _recorded_errors(fin)
        if not live and fin.divisors:
            errs.append(f"finalize divides the empty state by l = {fin.divisors[0]}")
        return errs

    ok = H.by_cases(p, "merge: every exp argument <= 0 (factors in [0, 1]), 1 <= merged l <= l_a + l_b, finalize "
                       "divides by l >= 1 (never for the empty state): all 6 cases, l_a, l_b >= 1",
                    H.cases(2), merge_case)
    p.step("Instrumented ops. `RecordingOps` (SymPy) records the argument of every exp and the divisor of "
           "every finalize while the operator runs; in each case of the split the states satisfy it "
           "symbolically ($m=\\mu+d_1+\\dots$, $d_i>0$; $\\ell=1+p$, $p\\ge0$: every non-empty state has "
           "$\\ell\\ge1$, the induction hypothesis) and SymPy must decide each argument $\\le0$ and each "
           "divisor $\\ge1$ from those assumptions alone.",
           r"x\le0\ \Rightarrow\ e^{x}\in(0,1],\qquad \ell=e^{m_a-m}\ell_a+e^{m_b-m}\ell_b\ge e^{0}\cdot1=1,\ m=\max(m_a,m_b)")
    if stop_on_failure and not ok:
        return p

    # --- the streaming variants on rows of tied and masked logits
    def variant_case(case, rep, vs):
        s = H.case_m(case, rep)
        v = [[sp.Symbol(f"v{i}{c}", real=True) for c in range(width)] for i in range(len(s))]
        for name, fn in _variant_runs(vs, len(s)):
            rec = RecordingOps()
            fn(F, s, v, width, rec)
            errs = _recorded_errors(rec)
            if errs:
                return [f"{name}: {errs[0]}"]
        return []

    for n in (3, 4):
        pats = H.cases(n) if n == 3 else H.cases(n)[::6]
        ok &= H.by_cases(p, f"{', '.join(variants)} (every block split): every exp argument <= 0 and every "
                            f"divisor >= 1, rows of {n} keys, {len(pats)} patterns of tied and masked logits",
                         pats, lambda c, r, vs=variants: variant_case(c, r, vs), reps=1)
        if stop_on_failure and not ok:
            return p
    if default:  # the test has power: the exact but unsafe v1 fails it
        res, why = H.attempt(variant_case, H.cases(3)[4], None, UNSAFE_VARIANTS)
        rejected = bool(res)
        p.check("power: the same check rejects v1 naive (exp of the raw logits), exact but unsafe",
                rejected, detail=res[0] if res else H.why((res, why)))
    p.step("Symbolic length. The one-pass loop's step is the merge of the running state ($\\ell\\ge1$) with "
           "one key's state ($\\ell=1$), a case of the merge check above, so by induction on $n$ every state "
           "of the loop has $1\\le\\ell\\le n$ and every exp argument $\\le0$; a block's own state has "
           "arguments $s_j-\\max_{k}s_k\\le0$ by the definition of the max and $\\ell\\ge e^{0}=1$ "
           "(machine-checked for blocks of up to 4 keys, argued for any length).")
    # --- numerically: float32 near its overflow, float64 near its overflow
    ok &= _numeric(p, F, variants, default)
    p.step("Floating point. $x\\le0$ gives $e^x\\le1$: exp cannot overflow, whatever the logits (fp32 "
           "overflows at $e^{88.7}$: a logit of 100 already overflows $e^{s}$); $\\ell\\in[1,n]$ and "
           "$|\\mathrm{acc}|\\le n\\max|v|$ are finite; finalize divides by $\\ell\\ge1$. The max is the shift "
           "that is both an upper bound of the logits (no overflow) and attained ($\\ell\\ge1$).")
    return p


_IEEE = (float, int, np.floating, np.integer)


def _finite(x) -> bool:
    try:
        return bool(np.all(np.isfinite(np.asarray(x, dtype=np.float64))))
    except Exception:  # noqa: BLE001
        return False


def _numeric(p, F, variants, default) -> bool:
    """float32 (logits near 100 and 1e4) and float64 (near 1000 and 1e6): merged states and outputs finite,
    1 <= l <= l_a + l_b; the unsafe v1 overflows (power)."""
    rng = np.random.default_rng(8)
    errs = []
    for ops, big, name in ((F32, (100.0, 1e4), "float32"), (spec.SCALAR, (1000.0, 1e6), "float64")):
        cast = (lambda x: np.float32(x)) if ops is F32 else float
        for scale in big:
            for ma, mb in ((scale, scale * 0.9), (scale * 0.9, scale), (scale, scale), (-scale, scale),
                           (None, scale), (scale, None), (None, None)):
                sts = []
                for m in (ma, mb):
                    if m is None:
                        sts.append(spec.identity(3, ops))
                    else:
                        sts.append(State(cast(m), cast(1.0 + rng.random()), [cast(x) for x in rng.normal(size=3)]))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out, why = H.attempt(F, sts[0], sts[1], ops)
                    if why is not None:
                        errs.append(f"{name} merge at m = ({ma}, {mb}): operator {why[1]}")
                        continue
                    vals = [out.m, out.l, *out.acc]
                    bad = [x for x in vals if not isinstance(x, _IEEE)]
                    if bad:  # SymPy/mpmath numbers have no overflow: they would hide it
                        errs.append(f"{name} merge at m = ({ma}, {mb}): returned {type(bad[0]).__name__} "
                                    f"{bad[0]!r}, not an IEEE float: it does not compute in its ops' arithmetic")
                        continue
                    live = [st for st in sts if st.l != 0]
                    if not live:
                        if not (out.l == 0 and out.m == -np.inf):
                            errs.append(f"{name} merge of two empty states = ({out.m}, {out.l}), not (-inf, 0)")
                        continue
                    fin = spec.finalize(out, ops)
                    if not (_finite(out.m) and _finite(out.l) and _finite(out.acc) and _finite(fin[0]) and _finite(fin[1])):
                        errs.append(f"{name} merge at m = ({ma}, {mb}): state ({out.m}, {out.l}, {list(out.acc)}) "
                                    f"or output not finite")
                    elif not (1.0 <= float(out.l) <= sum(float(st.l) for st in live) * (1 + 1e-6)):
                        errs.append(f"{name} merge at m = ({ma}, {mb}): l = {out.l} outside [1, l_a + l_b]")
            for vname, fn in _variant_runs(variants, 4):
                s = [cast(scale + 3 * x) for x in rng.normal(size=4)]
                v = [[cast(x) for x in rng.normal(size=2)] for _ in range(4)]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res, why = H.attempt(fn, F, s, v, 2, ops)
                if why is not None or not (_finite(res[0]) and _finite(res[1])):
                    errs.append(f"{name} {vname} at logits near {scale}: " + (why[1] if why else f"output {res} not finite"))
    ok = p.check("float32 at logits near 100 and 1e4, float64 near 1000 and 1e6: merged states (ties, spread, empty "
                 "sides) and every variant's outputs are finite, 1 <= l <= l_a + l_b", not errs, kind="numeric",
                 detail=errs[0] if errs else "")
    if default:
        s = [np.float32(100.0), np.float32(99.0)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            o, lse = naive(s, [[np.float32(1.0)], [np.float32(2.0)]], 1, F32)
        p.check("power: v1 naive in float32 at logits (100, 99) overflows (exp(100) = inf in fp32)",
                not (_finite(o) and _finite(lse)), kind="numeric", detail=f"v1 gives o = {o}, lse = {lse}")
    return ok


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

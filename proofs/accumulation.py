"""How matrix units accumulate, as a parameter of the error model (theorem 6, step "MMA").

GPU tensor cores do not add in IEEE round-to-nearest (Fasi, Higham, Mikaitis and Pranesh 2021,
"Numerical behavior of NVIDIA tensor cores"). Their behaviour is described by a *block FMA*:
``c + sum_{i<k} a_i b_i`` with exact products, every one of the k + 1 terms aligned to the
largest exponent keeping p + x significand bits (x extra bits, possibly 0) with truncation, an
exact sum of the aligned terms, then one normalisation to p bits by round-to-nearest ("rn") or
truncation ("rz"). Parameters: (k, x, final rounding).

Derived here (the algebra by SymPy, the per-term truncation bound argued and checked on exact
binary simulations with adversarial operands): one block changes c + sum t_i by at most

    u_blk * (|c| + sum_i |t_i|),   u_blk = u_f + k 2^(1-p-x) (1 + u_f),   u_f = 2^-p (rn), 2^(1-p) (rz)

and such an error can be written as sum over the terms of t (1 + theta_t) with |theta_t| <= u_blk:
one block is one "rounding" of every term it adds, with unit u_blk. A dot product of length m is
ceil(m / k) blocks, so a term meets at most ceil(m / k) <= (m - 1)/k + 1 roundings of unit u_blk:
the effective (u_mma, k_mma) = (u_blk, k) that theorems 6 and 4b accept. IEEE fp32 (FMA chains
or separate products, any order) is (2^-24, 1).

Declarable names (``precision_for(dtype, accumulator=NAME)``, see :data:`NAMES`):
``"fp32"`` IEEE round to nearest everywhere; ``"fp32_rz"`` IEEE-style truncation everywhere
(u = 2^-23, every accumulator operation); ``"same"``; ``"fp64"``; and
``"fp32_blockfma_k{K}_x{X}_{rn|rz}"`` the block-FMA matrix unit above, with the kernel's scalar
fp32 operations (exp arguments, running sums of l, rescales, division) IEEE round to nearest.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from .core import Proof
from .fp_model import nonneg_certificate

__all__ = ["NAMES", "BLOCK_FMA_RE", "MMAModel", "block_fma_name", "block_fma_unit", "mma_model",
           "simulate_block_fma", "round_fraction", "derive", "CANDIDATES", "probe_battery", "simulate_probe",
           "consistent_models", "SEQUENTIAL_RN", "crafted_experiments", "crafted_candidates", "matching_models",
           "model_label", "accumulator_of_model", "accumulator_of_label", "ieee_ratio", "battery_rows"]

#: fixed accumulator names; a block-FMA name matches :data:`BLOCK_FMA_RE`
NAMES = ("fp32", "fp32_rz", "same", "fp64")
BLOCK_FMA_RE = re.compile(r"^fp32_blockfma_k([1-9][0-9]*)_x([0-9]+)_(rn|rz)$")
_P32 = 24


@dataclass(frozen=True)
class MMAModel:
    """What one matrix-unit accumulation step does: a block of ``k`` products added into the
    accumulator with error <= ``u`` * (sum of the block's |terms|); ``exact_products``: the
    products are exact (block FMA) rather than rounded (IEEE)."""

    u: float
    k: int
    exact_products: bool
    name: str


def block_fma_name(k: int, extra_bits: int, final: str) -> str:
    """The accumulator name of a block-FMA matrix unit (k products per block, x extra bits)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"block size k must be an int >= 1, got {k!r}")
    if isinstance(extra_bits, bool) or not isinstance(extra_bits, int) or extra_bits < 0:
        raise ValueError(f"extra_bits must be an int >= 0, got {extra_bits!r}")
    if final not in ("rn", "rz"):
        raise ValueError(f"final rounding must be 'rn' or 'rz', got {final!r}")
    return f"fp32_blockfma_k{k}_x{extra_bits}_{final}"


def block_fma_unit(k: int, extra_bits: int, final: str, p: int = _P32) -> float:
    """u_blk = u_f + k 2^(1-p-x) (1 + u_f): one block's error per unit of sum |terms|."""
    u_f = 2.0 ** -p if final == "rn" else 2.0 ** (1 - p)
    return u_f + k * 2.0 ** (1 - p - extra_bits) * (1 + u_f)


def mma_model(accumulator: str, *, u_acc: float) -> MMAModel:
    """The matrix-unit model of an accumulator name (IEEE names: k = 1, products rounded, unit u_acc)."""
    m = BLOCK_FMA_RE.match(accumulator) if isinstance(accumulator, str) else None
    if m:
        k, x, fin = int(m.group(1)), int(m.group(2)), m.group(3)
        return MMAModel(u=block_fma_unit(k, x, fin), k=k, exact_products=True, name=accumulator)
    if accumulator not in NAMES:
        raise ValueError(f"accumulator must be one of {NAMES} or 'fp32_blockfma_k<K>_x<X>_<rn|rz>' "
                         f"(e.g. {block_fma_name(8, 0, 'rz')!r}), got {accumulator!r}")
    return MMAModel(u=u_acc, k=1, exact_products=False, name=accumulator)


# ---------------------------------------------------------------------------------------------
# Exact binary simulation of one block FMA (Fractions: no rounding but the modelled ones).

def _exponent(x: Fraction) -> int:
    """e with 2^e <= |x| < 2^(e+1) (x != 0)."""
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    elif Fraction(2) ** (e + 1) <= a:
        e += 1
    return e


def _trunc(x: Fraction, q: Fraction) -> Fraction:
    """x truncated toward zero to a multiple of q."""
    n = abs(x) // q
    return n * q if x >= 0 else -n * q


def round_fraction(x: Fraction, p: int, mode: str) -> Fraction:
    """x rounded to p significand bits: "rn" nearest-even, "rz" toward zero (no exponent limits)."""
    if x == 0:
        return x
    q = Fraction(2) ** (_exponent(x) - p + 1)
    if mode == "rz":
        return _trunc(x, q)
    n, r = divmod(abs(x), q)
    if r * 2 > q or (r * 2 == q and n % 2 == 1):
        n += 1
    return n * q if x > 0 else -n * q


def simulate_block_fma(c, a, b, *, k, extra_bits, final, p: int = _P32):
    """c + sum a_i b_i through the block-FMA model, blocks of k products; exact Fractions in/out.
    ``extra_bits=None``: exact alignment (no truncation; k = 1 is then an IEEE FMA chain)."""
    acc = Fraction(c)
    for s in range(0, len(a), k):
        terms = [acc] + [Fraction(x) * Fraction(y) for x, y in zip(a[s:s + k], b[s:s + k])]
        nz = [t for t in terms if t != 0]
        if not nz:
            acc = Fraction(0)
            continue
        if extra_bits is not None:
            emax = max(_exponent(t) for t in nz)
            q = Fraction(2) ** (emax - p - extra_bits + 1)  # the last kept bit at the largest exponent
            terms = [_trunc(t, q) for t in terms]
        acc = round_fraction(sum(terms, Fraction(0)), p, final)
    return acc


def _dyadic(rng, bits, lo, hi):
    """A random number with ``bits`` significand bits and exponent in [lo, hi]."""
    m = rng.randrange(1 << (bits - 1), 1 << bits)
    return Fraction(m * (1 if rng.random() < 0.5 else -1)) * Fraction(2) ** (rng.randint(lo, hi) - bits + 1)


def derive(proof: Proof, *, seed: int = 41) -> dict:
    """Add the accumulation-model derivation to ``proof``; returns the measured worst ratios."""
    # (1) algebra: |T' - T| <= k q, q <= 2^(1-p-x) max|t| <= 2^(1-p-x) S (S = sum |t|),
    #     |c^ - T'| <= u_f |T'|, |T'| <= S + |T' - T|  =>  |c^ - T| <= (u_f + k 2^(1-p-x)(1 + u_f)) S
    kk, S, uf, r = sp.symbols("k S u_f r", positive=True)  # r = 2^(1-p-x)
    e_align = kk * r * S  # worst |T' - T|
    e_final = uf * (S + e_align)  # worst |c^ - T'|
    u_blk = uf + kk * r * (1 + uf)
    ok_alg = nonneg_certificate(sp.expand(u_blk * S - (e_align + e_final)), {}) and \
        sp.expand(u_blk * S - (e_align + e_final)) == 0
    proof.check("block FMA: alignment loss k 2^(1-p-x) max|t| plus final rounding u_f |T'| sum to "
                "u_blk = u_f + k 2^(1-p-x)(1 + u_f) times sum|t| (exact SymPy identity)", ok_alg)
    # (2) exact simulations: random fp16-like operands and adversarial ones (every aligned term loses
    #     almost a full quantum, all in the same direction, against a large accumulator)
    rng = random.Random(seed)
    worst, worst_adv = 0.0, 0.0
    ok = True
    for k, x, fin in ((1, 0, "rz"), (4, 0, "rz"), (8, 0, "rz"), (8, 3, "rz"), (16, 1, "rn"), (8, 3, "rn")):
        ub = Fraction(block_fma_unit(k, x, fin))
        for case in range(24):
            m = rng.choice([k, 2 * k + 1, 5 * k])
            if case % 2 == 0:
                a = [_dyadic(rng, 11, -8, 4) for _ in range(m)]
                b = [_dyadic(rng, 11, -8, 4) for _ in range(m)]
                c = _dyadic(rng, _P32, -6, 6)
            else:  # adversarial: c = 1, products just below the alignment quantum of c's exponent
                q = Fraction(2) ** (1 - _P32 - x)
                c = Fraction(1)
                a = [q * Fraction((1 << 10) - 1, 1 << 10) for _ in range(m)]
                b = [Fraction(1)] * m
            exact = Fraction(c) + sum(p_ * q_ for p_, q_ in zip(a, b))
            got = simulate_block_fma(c, a, b, k=k, extra_bits=x, final=fin)
            blocks = -(-m // k)
            absum = abs(Fraction(c)) + sum(abs(p_ * q_) for p_, q_ in zip(a, b))
            # rigorous count bound: (1 + u_blk)^blocks - 1 per unit of sum|t|
            lim = ((1 + ub) ** blocks - 1) * absum
            err = abs(got - exact)
            ok &= err <= lim
            ratio = float(err / lim) if lim else 0.0
            if case % 2:
                worst_adv = max(worst_adv, ratio)
            else:
                worst = max(worst, ratio)
    proof.check("block FMA, exact binary simulation (k in 1..16, x in 0..3, rn/rz; random fp16-like and "
                "adversarial truncating operands, 144 dot products): |error| <= ((1 + u_blk)^ceil(m/k) - 1) "
                "sum|t|", ok, kind="numeric",
                detail=f"max error/bound {worst_adv:.3f} adversarial, {worst:.3f} random")
    proof.step("Matrix-unit accumulation (block FMA with k exact products, alignment to the largest "
               "exponent keeping p + x bits by truncation, exact sum, final rn/rz): one block is one "
               "rounding of every term it adds, with unit u_blk; a sum of m terms is ceil(m/k) blocks. "
               "IEEE fp32 is k = 1 with u = 2^-24 (products rounded or fused).",
               r"u_{mma} = u_f + k\,2^{1-p-x}(1+u_f),\qquad c_{mma}(m) = \lceil m/k\rceil \le \tfrac{m-1}{k}+1")
    return {"max_ratio_adversarial": worst_adv, "max_ratio_random": worst}


# ---------------------------------------------------------------------------------------------
# Identifying a device's matrix unit: a battery of crafted dot products whose bit-exact results
# differ between models; a device's results leave the consistent models (benchmarks/accumulation_probe.py).

#: candidate models (k, x, final); x = 30 aligns exactly (k = 1, x = 30, rn is an IEEE FMA chain)
CANDIDATES = tuple((k, x, f) for k in (1, 2, 4, 8, 16, 32, 64) for x in (0, 1, 2, 3, 4, 5, 8, 30)
                   for f in ("rn", "rz"))


def probe_battery(dtype: str, *, seed: int = 0, rows: int = 64, length: int = 64, calls: int = 8):
    """[(c (rows,) float32, a (rows, length) float64 exact in ``dtype``)] * calls: each row is one
    dot product c + sum_e a_e * 1 (the device multiplies by a column of ones). Rows mix a large term
    at a random position with terms just above and below the truncation quanta of 24 + x bits,
    cancelling pairs, and random spreads; c is an fp32 value with an odd last bit half the time."""
    import numpy as np

    from .kernel_sim import round_to

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(calls):
        a = np.zeros((rows, length))
        c = np.zeros(rows, dtype=np.float32)
        for r in range(rows):
            kind = r % 4
            big = float(2.0 ** rng.integers(-2, 6))
            if kind == 0:  # one big term, small ones below / around its quanta
                a[r] = big * 2.0 ** -rng.integers(21, 31, size=length) * rng.choice([-1, 1, 1], size=length)
                a[r, rng.integers(length)] = big
            elif kind == 1:  # cancelling big pair, small residue
                a[r] = big * 2.0 ** -rng.integers(18, 28, size=length) * rng.uniform(0.5, 1, size=length)
                i, j = rng.choice(length, 2, replace=False)
                a[r, i], a[r, j] = big, -big
            elif kind == 2:  # spread of magnitudes
                a[r] = rng.standard_normal(length) * 2.0 ** rng.integers(-12, 4, size=length)
            else:  # small terms only, large accumulator
                a[r] = rng.uniform(0.5, 1, size=length) * big * 2.0 ** -rng.integers(22, 27)
            c[r] = np.float32(big * (1 + rng.integers(0, 2 ** 23) * 2.0 ** -23) * rng.choice([0, 1, -1]))
        out.append((c, round_to(a, dtype).astype(np.float64)))
    return out


def simulate_probe(battery, model):
    """The model's bit-exact results (float32) on a probe battery."""
    import numpy as np

    from .kernel_sim import block_fma

    k, x, f = model
    return [block_fma(c, a, np.ones_like(a), k_blk=k, extra_bits=x, final=f) for c, a in battery]


def consistent_models(battery, observed):
    """The candidate (k, x, final) whose simulated results equal ``observed`` bit for bit, and the
    declarable name of the most conservative of them (largest ((m - 1)/k + 1) u_blk at m = 128), or
    None when no block-FMA model explains the device."""
    import numpy as np

    ok = [m for m in CANDIDATES
          if all(np.array_equal(np.asarray(o, dtype=np.float32).view(np.uint32), s.view(np.uint32))
                 for o, s in zip(observed, simulate_probe(battery, m)))]
    if not ok:
        return [], None
    worst = max(ok, key=lambda m: (127 / m[0] + 1) * block_fma_unit(*m))
    return ok, block_fma_name(*worst)


# ---------------------------------------------------------------------------------------------
# Crafted experiments (Fasi, Higham, Mikaitis and Pranesh 2021): one dot product c + sum_k a_k b_k
# per experiment, every product exact in fp16/bf16; sub-ulp products beside a unit accumulator reveal
# the final rounding, the extra alignment bits and the block size. benchmarks/accumulation_probe.py
# runs them on a device (its record: benchmarks/results/accumulation-h200.json).

#: the IEEE fp32 FMA chain, in crafted_candidates' (k, extra_bits, final) form (exact alignment)
SEQUENTIAL_RN = (1, None, "rn")


def crafted_experiments(K: int):
    """[(name, c, {position: (a, b)})] for dot products of length ``K``; every a, b is a power of two
    times 1 or 3 (exact in bf16 and fp16)."""
    F = Fraction
    u = F(2) ** -23  # ulp of 1 in fp32
    out = []
    for c in (F(1), F(-1)):
        s = 1 if c > 0 else -1
        out.append((f"c={c}: one product of 0.75 ulp", c, {0: (s * F(3, 2 ** 13), F(1, 2 ** 12))}))
        out.append((f"c={c}: one product of 0.5 ulp (tie)", c, {0: (s * F(1, 2 ** 12), F(1, 2 ** 12))}))
        out.append((f"c={c}: one product of 0.25 ulp", c, {0: (s * F(1, 2 ** 13), F(1, 2 ** 12))}))
    for sh in range(1, 7):  # 2^sh products of ulp/2^sh each: exactly one ulp in total
        n = 2 ** sh
        if n > K:
            break
        a, b = F(1, 2 ** (12 + sh)), F(2, 2 ** 12)
        assert a * b == u / 2 ** sh
        out.append((f"c=1: {n} products of ulp/2^{sh} at 0..{n - 1}", F(1), {i: (a, b) for i in range(n)}))
    for j in range(1, K):  # two half-ulp products at positions 0 and j: same block or not
        out.append((f"c=1: two products of ulp/2 at 0 and {j}", F(1),
                    {0: (F(1, 2 ** 12), F(1, 2 ** 12)), j: (F(1, 2 ** 12), F(1, 2 ** 12))}))
    # c = 0: a unit product dominates the alignment instead of the accumulator
    out.append(("c=0: 1 at 0 and 3/4 ulp at 1", F(0), {0: (F(1), F(1)), 1: (F(3, 2 ** 13), F(1, 2 ** 12))}))
    out.append(("c=0: 1 at 0, then 3/4 ulp at the last position", F(0),
                {0: (F(1), F(1)), K - 1: (F(3, 2 ** 13), F(1, 2 ** 12))}))
    # cancellation: 1 - 1 + tiny keeps the tiny product only if it was not truncated away
    out.append(("c=1: -1 at 0 and 2^-30 at 1", F(1), {0: (F(-1), F(1)), 1: (F(1, 2 ** 15), F(1, 2 ** 15))}))
    return out


def crafted_candidates(K: int):
    """The models the crafted experiments tell apart: :data:`SEQUENTIAL_RN`, then (k, x, final) for
    blocks k <= K, x in 0..6 or None (exact alignment); k = 1 only with exact alignment (truncation
    and a sequential FMA coincide there)."""
    out = [SEQUENTIAL_RN]
    for k in (1, 2, 4, 8, 16, 32, 64, 128):
        if k > K:
            break
        for x in (0, 1, 2, 3, 4, 5, 6, None):
            if k == 1 and x is not None:
                continue
            out += [(k, x, "rn"), (k, x, "rz")]
    return out


def matching_models(rows, K: int):
    """The crafted candidates whose exact simulation gives every experiment's observed result:
    ``rows`` = [(c, products (length K), observed)] as Fractions."""
    ok = []
    for k, x, f in crafted_candidates(K):
        if all(simulate_block_fma(c, prods, [1] * len(prods), k=k, extra_bits=x, final=f) == got
               for c, prods, got in rows):
            ok.append((k, x, f))
    return ok


def model_label(model, *, first: bool = False) -> str:
    """How the probe's record names a model: "k=16 x=2 rz"; the first candidate is "sequential RN"."""
    k, x, f = model
    return "sequential RN" if first and model == SEQUENTIAL_RN else f"k={k} x={x} {f}"


def accumulator_of_model(model) -> str:
    """The accumulator name (precision_for) of a candidate (k, x, final): an FMA chain (k = 1, exact
    alignment: x None, or CANDIDATES' 30) is "fp32" (round to nearest) or "fp32_rz" (truncating: it also
    declares the scalar operations truncating, which covers them); a block FMA with x extra bits is its
    block_fma_name; exact alignment in larger blocks has no name (ValueError)."""
    k, x, f = model
    if k == 1 and (x is None or x >= 30):
        return "fp32" if f == "rn" else "fp32_rz"
    if x is None or x >= 30:
        raise ValueError(f"no accumulator name for the model {model!r} (exact alignment)")
    return block_fma_name(int(k), int(x), f)


def accumulator_of_label(label: str) -> str:
    """The accumulator name of a probe record's label ("sequential RN", "k=16 x=2 rz")."""
    if label == "sequential RN":
        return "fp32"
    m = re.match(r"^k=(\d+) x=(\d+|None) (rn|rz)$", label)
    if not m:
        raise ValueError(f"not a probe model label: {label!r}")
    return accumulator_of_model((int(m.group(1)), None if m.group(2) == "None" else int(m.group(2)), m.group(3)))


def battery_rows(battery, observed):
    """A probe battery and a device's results as matching_models' rows [(c, products, observed)]."""
    rows = []
    for (c, a), d in zip(battery, observed):
        for r in range(a.shape[0]):
            rows.append((Fraction(float(c[r])), [Fraction(float(x)) for x in a[r]], Fraction(float(d[r]))))
    return rows


def ieee_ratio(rows) -> float:
    """max over rows of |observed - exact| / (gamma_n(2^-24) sum|t|), n = the number of terms (c and the
    products): <= 1 on every row is necessary for IEEE fp32 arithmetic in any order (each term meets at
    most one product rounding and n - 1 additions; Higham, Accuracy and Stability, Lemma 3.1), i.e. for
    declaring "fp32"; a larger value rules it out."""
    worst = 0.0
    u = Fraction(1, 2 ** 24)
    for c, prods, got in rows:
        terms = [Fraction(c)] + [Fraction(p) for p in prods]
        n = len(terms)
        lim = n * u / (1 - n * u) * sum(abs(t) for t in terms)
        err = abs(Fraction(got) - sum(terms, Fraction(0)))
        if lim > 0:
            worst = max(worst, float(err / lim))
        elif err:
            return float("inf")
    return worst

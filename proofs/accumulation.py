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
           "consistent_models"]

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
    """c + sum a_i b_i through the block-FMA model, blocks of k products; exact Fractions in/out."""
    acc = Fraction(c)
    for s in range(0, len(a), k):
        terms = [acc] + [Fraction(x) * Fraction(y) for x, y in zip(a[s:s + k], b[s:s + k])]
        nz = [t for t in terms if t != 0]
        if not nz:
            acc = Fraction(0)
            continue
        emax = max(_exponent(t) for t in nz)
        q = Fraction(2) ** (emax - p - extra_bits + 1)  # the last kept bit at the largest exponent
        acc = round_fraction(sum(_trunc(t, q) for t in terms), p, final)
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
# differ between models; a device's results leave the consistent models (benchmarks/probe_mma.py).

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

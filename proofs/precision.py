"""The error model's parameters: :class:`Precision` and :func:`precision_for`.

A precision is what theorems 6 (forward) and 4b (backward) are instantiated at: the unit
roundoffs of the storage dtype and of the scalar accumulator operations, the matrix unit's
accumulation model (proofs/accumulation.py), the exp/log error in ulps, and the underflow and
overflow limits.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from flashproof import spec

from .accumulation import BLOCK_FMA_RE, NAMES, mma_model

__all__ = ["Precision", "precision_for", "C_EXP_MEASURED", "FORMATS", "dtype_name", "ACCUMULATORS"]

# Unit roundoff, subnormal rounding error (gradual underflow: half the subnormal spacing; FTZ: the
# smallest normal) and largest finite value of each storage format, from spec's dtype table.
FORMATS = {
    n: (f.u, f.subnormal / 2 if n == "float16" else f.tiny, f.max)  # FTZ covered for bf16/fp32: smallest normal
    for n, f in spec.FORMATS.items()
}
dtype_name = spec.dtype_name  # the one normaliser (re-exported: callers of proofs name it here)
#: the accepted ``accumulator`` names (plus any fp32_blockfma_k<K>_x<X>_<rn|rz>)
ACCUMULATORS = NAMES + ("fp32_blockfma_k<K>_x<X>_<rn|rz>",)

#: Measured, not assumed: the exhaustive audit of tl.exp2 over all 1,125,515,265 fp32 inputs in
#: [-150, 0] on an H100 (triton 3.6; docs/audits/h100.md) found at most 2.055 ulps, above the 2
#: of ex2.approx's documentation. Rounded up to 2.06 so the model holds for the hardware measured.
C_EXP_MEASURED = 2.06


@dataclass(frozen=True)
class Precision:
    """The error model of one kernel precision.

    u_in: unit roundoff of the storage dtype (q, k, v, P before P@V, dS before its matmuls, stores).
    u_acc: unit roundoff of the scalar accumulator operations (exp arguments, running sums of l,
        rescales, the division, D = rowsum(dO o O)).
    c_exp: error of exp/exp2/log/log2 in ulps of the accumulator format (relative 2 c_exp u_acc).
    eta: absolute error of an underflowing accumulator op (flush-to-zero threshold).
    eta_in: absolute error of rounding a tiny value to the storage dtype.
    u_dot: operand rounding inside the matmuls (TF32: 2^-11; 0 for IEEE dots).
    c_tanh: absolute error of tanh in units of u_acc (None: the derived c_exp + 3).
    max_in, max_acc: largest finite values (overflow checks).
    u_mma, k_mma: the matrix unit's accumulation (proofs/accumulation.py): a block of k_mma
        products added with unit u_mma; None means IEEE (u_mma = u_acc, k_mma = 1).
    """

    u_in: float
    u_acc: float
    c_exp: float
    eta: float
    name: str
    eta_in: float = 0.0
    u_dot: float = 0.0
    c_tanh: float | None = None
    max_in: float = math.inf
    max_acc: float = math.inf
    u_mma: float | None = None
    k_mma: int = 1

    def __post_init__(self):
        for f in ("u_in", "u_acc", "u_dot"):
            x = getattr(self, f)
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (0 <= x < 0.5):
                raise ValueError(f"Precision.{f} must be a real in [0, 0.5), got {x!r}")
        if self.u_mma is not None and (isinstance(self.u_mma, bool) or not isinstance(self.u_mma, numbers.Real)
                                       or not 0 <= self.u_mma < 0.5):
            raise ValueError(f"Precision.u_mma must be None or a real in [0, 0.5), got {self.u_mma!r}")
        if isinstance(self.k_mma, bool) or not isinstance(self.k_mma, numbers.Integral) or self.k_mma < 1:
            raise ValueError(f"Precision.k_mma must be an int >= 1, got {self.k_mma!r}")
        for f in ("c_exp", "eta", "eta_in"):
            x = getattr(self, f)
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not (0 <= x < math.inf):
                raise ValueError(f"Precision.{f} must be a finite real >= 0, got {x!r}")
        if self.c_tanh is not None and (not isinstance(self.c_tanh, numbers.Real) or not 0 <= self.c_tanh < math.inf):
            raise ValueError(f"Precision.c_tanh must be None or a finite real >= 0, got {self.c_tanh!r}")
        for f in ("max_in", "max_acc"):
            x = getattr(self, f)
            if not isinstance(x, numbers.Real) or not x > 0:
                raise ValueError(f"Precision.{f} must be > 0, got {x!r}")
        if not isinstance(self.name, str):
            raise TypeError(f"Precision.name must be a str, got {type(self.name).__name__}")

    @property
    def tanh_ulps(self) -> float:
        from .bounds_gen import TANH_EXTRA

        return float(self.c_exp) + TANH_EXTRA if self.c_tanh is None else float(self.c_tanh)

    @property
    def mma_unit(self) -> float:
        """The matrix unit's per-block unit roundoff (u_acc for IEEE accumulation)."""
        return self.u_acc if self.u_mma is None else float(self.u_mma)


def precision_for(dtype, *, accumulator="fp32", c_exp=C_EXP_MEASURED, tf32=False) -> Precision:
    """The :class:`Precision` of a kernel whose storage dtype is ``dtype``.

    ``accumulator``: "fp32" (IEEE fp32, round to nearest: u = 2^-24, flush-to-zero 2^-126),
    "fp32_rz" (truncating fp32 in every accumulator operation: u = 2^-23), "same" (accumulate in
    the storage dtype), "fp64", or "fp32_blockfma_k<K>_x<X>_<rn|rz>" (a matrix unit that adds
    blocks of K exact products with X extra alignment bits and a final rn/rz rounding, the
    scalar fp32 operations IEEE: proofs/accumulation.py; build names with
    ``accumulation.block_fma_name``). For float64 inputs every unit roundoff is 2^-53.
    ``c_exp``: ulps of exp/exp2/log/log2 (default :data:`C_EXP_MEASURED`, measured on an H100).
    ``tf32``: the matmul operands are rounded to TF32 (10-bit mantissa); such a kernel does NOT
    meet the fp32 bound (``tf32=False``) on data with large |q||k| products.
    """
    key = dtype_name(dtype)
    if isinstance(c_exp, bool) or not isinstance(c_exp, numbers.Real) or not 0 <= c_exp < math.inf:
        raise ValueError(f"c_exp must be a finite real >= 0, got {c_exp!r}")
    if not isinstance(tf32, bool):
        raise TypeError(f"tf32 must be a bool, got {type(tf32).__name__}")
    u_in, eta_in, max_in = FORMATS[key]
    block = isinstance(accumulator, str) and BLOCK_FMA_RE.match(accumulator) is not None
    if not block and accumulator not in NAMES:
        mma_model(accumulator, u_acc=0.0)  # raises with the list of accepted names
    if block and key == "float64":
        raise ValueError(f"accumulator {accumulator!r} models an fp32 matrix unit; float64 inputs accumulate in float64")
    if key == "float64" or accumulator == "fp64":
        u_acc, eta, max_acc = FORMATS["float64"][0], spec.FORMATS["float64"].tiny, FORMATS["float64"][2]
    elif accumulator == "same":
        u_acc, eta, max_acc = u_in, eta_in, max_in
    else:
        u_acc = spec.FORMATS["float32"].u * (2 if accumulator == "fp32_rz" else 1)
        eta, max_acc = spec.FORMATS["float32"].tiny, FORMATS["float32"][2]
    mma = mma_model(accumulator if key != "float64" else "fp64", u_acc=u_acc)
    u_dot = 2.0 ** -11 if tf32 else 0.0
    name = f"{key}/{accumulator if key != 'float64' else 'float64'}" + ("/tf32" if tf32 else "")
    return Precision(u_in=u_in, u_acc=u_acc, c_exp=float(c_exp), eta=eta, name=name, eta_in=eta_in,
                     u_dot=u_dot, max_in=max_in, max_acc=max_acc,
                     u_mma=None if mma.k == 1 and not mma.exact_products else mma.u, k_mma=mma.k)

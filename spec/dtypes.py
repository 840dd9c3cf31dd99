"""The storage dtypes: one table of their IEEE facts, one name normaliser, one rounder.

Every folder takes a dtype's unit roundoff, largest value, smallest normal or ulp from
:data:`FORMATS`, names a dtype through :func:`dtype_name`, and rounds numpy values to a storage
dtype through :func:`round_to`. Only numpy is imported here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Format", "FORMATS", "STORAGE_DTYPES", "dtype_name", "format_of", "round_to"]


@dataclass(frozen=True)
class Format:
    """An IEEE-style binary floating-point format.

    ``precision``: significand bits p, the implicit bit included; ``emin``: exponent of the
    smallest normal; ``max``: the largest finite value.
    """

    name: str
    precision: int
    emin: int
    max: float

    @property
    def u(self) -> float:
        """Unit roundoff of round-to-nearest, 2^-p."""
        return 2.0 ** -self.precision

    @property
    def tiny(self) -> float:
        """The smallest positive normal, 2^emin."""
        return 2.0 ** self.emin

    @property
    def subnormal(self) -> float:
        """The smallest positive subnormal, 2^(emin - p + 1)."""
        return 2.0 ** (self.emin - self.precision + 1)

    @property
    def eps(self) -> float:
        """The ulp of 1.0, 2^(1 - p)."""
        return 2.0 ** (1 - self.precision)

    def ulp(self, x):
        """The spacing of this format at |x| (elementwise; the subnormal spacing below tiny).
        Non-finite x gives NaN."""
        a = np.abs(np.asarray(x, dtype=np.float64))
        e = np.where(a > 0, np.frexp(a)[1] - 1, self.emin)  # floor(log2 a), exactly
        e = np.maximum(e, self.emin)
        with np.errstate(invalid="ignore"):
            out = np.where(np.isfinite(a), np.ldexp(1.0, (e - (self.precision - 1)).astype(np.int64)), np.nan)
        return out if out.ndim else float(out)


#: The storage dtypes flashproof knows, by their torch names.
FORMATS = {
    "float16": Format("float16", 11, -14, 65504.0),
    "bfloat16": Format("bfloat16", 8, -126, 3.3895313892515355e38),
    "float32": Format("float32", 24, -126, 3.4028234663852886e38),
    "float64": Format("float64", 53, -1022, 1.7976931348623157e308),
}
STORAGE_DTYPES = tuple(FORMATS)

_ALIASES = {
    "float16": "float16", "half": "float16", "fp16": "float16", "f16": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float32": "float32", "float": "float32", "fp32": "float32", "f32": "float32", "single": "float32",
    "float64": "float64", "double": "float64", "fp64": "float64", "f64": "float64",
}


def dtype_name(dtype, *, strict=True) -> str:
    """The canonical name ("float16", "bfloat16", "float32", "float64") of a torch dtype, a numpy
    dtype or type, or a name ("torch.float16", "half", "fp16", "bf16", ...).

    ``strict=False``: another dtype gives its plain name ("int8", "float8_e4m3fn") for the
    caller to report; ``strict=True`` raises ValueError naming it.
    """
    s = str(dtype)
    s = s.split(".")[-1].strip("'<>\" ")  # torch.float16, <class 'numpy.float32'>, dtype('float32')
    if s.startswith("dtype("):
        s = s[6:].strip("()'\"")
    key = _ALIASES.get(s.lower())
    if key is None and not isinstance(dtype, str):
        try:
            key = _ALIASES.get(np.dtype(dtype).name)
        except TypeError:
            key = None
    if key is not None:
        return key
    if strict:
        raise ValueError(f"dtype must be float16, bfloat16, float32 or float64 (torch, numpy or name); got {dtype!r}")
    return s


def format_of(dtype) -> Format:
    """The :class:`Format` of ``dtype`` (anything :func:`dtype_name` takes)."""
    return FORMATS[dtype_name(dtype)]


def _bf16(x32: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000  # round the low 16 bits to nearest even
    out = u.astype(np.uint32).view(np.float32).reshape(np.shape(x32))
    return np.where(np.isnan(x32), x32, out)  # a NaN stays NaN (its payload may not survive the carry)


def round_to(x, dtype) -> np.ndarray:
    """``x`` rounded to the storage ``dtype``, round to nearest even with gradual underflow and
    overflow to inf, NaN kept; returned as float32 (float64 for a float64 ``dtype``).

    Values are first held in float32, as a kernel's fp32 accumulator holds them and as torch's
    ``tensor.to(dtype)`` converts float64 (so this agrees with it bit for bit).
    """
    name = dtype_name(dtype)
    if name == "float64":
        return np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.asarray(x, dtype=np.float32)
        if name == "float32":
            return x32
        if name == "float16":
            return x32.astype(np.float16).astype(np.float32)
    return _bf16(x32)

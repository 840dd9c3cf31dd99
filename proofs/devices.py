"""Which accumulation model a device's matrix units follow: the measured table, and what a kernel
running there declares (theorems 6 and 4b are instantiated at it: ``precision_for(dtype,
accumulator=NAME)``).

:data:`MEASURED` holds, per CUDA compute capability, the models that ``benchmarks/accumulation_probe.py``
identified on that device (every candidate of the block-FMA model but one contradicted by an
experiment); each entry names the committed record it comes from, and tests/test_devices.py checks the
table against that record. :func:`device_accumulators` turns it into a declaration per storage dtype:

- fp16 / bf16 inputs go through the tensor cores (``tl.dot``, cuBLAS, FlashAttention): the measured
  ``tensor_core`` model;
- fp32 inputs of a kernel that asks for IEEE dots (``input_precision="ieee"``, flashproof's kernels)
  run as fp32 FMAs: ``"fp32"`` on every architecture (measured on SM90; elsewhere argued: they compile
  to PTX ``fma.rn.f32``, IEEE round to nearest);
- float64 accumulates in float64: ``"fp64"``.

An architecture that was never measured gets, per dtype, the most pessimistic measured model -- one
that :func:`covers` every measured model of that dtype (its bound is at least theirs for every length)
-- and a warning that says so and how to measure it. This is a guess about unmeasured hardware, not a
claim: the probe is the way to make it one.
"""
from __future__ import annotations

from .precision import precision_for

__all__ = ["MEASURED", "PROBE_COMMAND", "covers", "most_pessimistic", "device_accumulators"]

#: compute capability -> what the probe measured there (names as precision_for accepts them).
MEASURED = {
    (9, 0): {
        "device": "NVIDIA H200",
        "record": "benchmarks/results/accumulation-h200.json",
        "tensor_core": {"float16": "fp32_blockfma_k16_x2_rz", "bfloat16": "fp32_blockfma_k16_x2_rz",
                        "tf32": "fp32_blockfma_k8_x2_rz"},
        "ieee": {"float32": "fp32"},
    },
}

PROBE_COMMAND = "python3 benchmarks/accumulation_probe.py --out DIR"


def _units(name: str):
    """(u_acc, u_mma, k_mma) of an fp32-class accumulator name (the quantities the bounds use)."""
    p = precision_for("float32", accumulator=name)
    return p.u_acc, p.mma_unit, p.k_mma


def covers(a: str, b: str) -> bool:
    """Whether the bound of accumulator ``a`` is at least that of ``b`` for every length: the scalar
    unit u_acc is at least b's, and the matrix unit's count ((m - 1)/k + 1) u_mma is at least b's for
    every m >= 1, i.e. u_mma >= u_mma' and u_mma / k >= u_mma' / k' (the count is affine in m - 1)."""
    ua, ma, ka = _units(a)
    ub, mb, kb = _units(b)
    return ua >= ub and ma >= mb and ma / ka >= mb / kb


def most_pessimistic(names) -> str:
    """The one of ``names`` that covers all of them (ValueError if none does)."""
    names = list(dict.fromkeys(names))
    for a in names:
        if all(covers(a, b) for b in names):
            return a
    raise ValueError(f"no accumulator among {names} covers all the others; declare one explicitly")


def _measured_for(entry: dict, dtype: str):
    return entry["tensor_core"].get(dtype)


def device_accumulators(capability, dtypes):
    """({dtype: accumulator name}, warning or None) for a kernel on a CUDA device of ``capability``
    ((major, minor)) whose fp16/bf16 dots use the tensor cores and whose fp32 dots are IEEE.

    float64 -> "fp64". A measured capability -> its table. Otherwise, per dtype, the most pessimistic
    measured model (:func:`most_pessimistic` over every measured capability) and a warning."""
    cap = tuple(int(x) for x in capability)
    out, guessed = {}, []
    for d in dtypes:
        if d == "float64":
            out[d] = "fp64"
            continue
        if d == "float32":  # IEEE dots are fma.rn.f32 on every architecture (measured on SM90)
            out[d] = "fp32"
            continue
        entry = MEASURED.get(cap)
        name = _measured_for(entry, d) if entry else None
        if name is None:
            seen = [n for e in MEASURED.values() for n in [_measured_for(e, d)] if n is not None]
            if not seen:
                raise ValueError(f"no measured accumulation model for {d} inputs on any device")
            name = most_pessimistic(seen)
            guessed.append(d)
        out[d] = name
    warning = None
    if guessed:
        where = ", ".join(f"sm{a}{b} ({e['device']}: {e['record']})" for (a, b), e in MEASURED.items())
        warning = (f"the accumulation of compute capability {cap[0]}.{cap[1]} was never measured: for {guessed} "
                   f"flashproof declares the most pessimistic measured model ({', '.join(out[d] for d in guessed)}; "
                   f"measured on {where}); a violation of the bound there may be the hardware's accumulation, "
                   f"not the kernel. Measure it with `{PROBE_COMMAND}` and add it to flashproof.proofs.devices.MEASURED")
    return out, warning

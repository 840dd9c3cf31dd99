"""The accumulation model a target declares by default for the device it runs on (one definition,
used by flashproof's kernel, torch's SDPA backends and plain SDPA callables).

On the CPU (and under Triton's interpreter, whose ``tl.dot`` is numpy's fp32 matmul plus an fp32 add)
every matmul is BLAS in IEEE arithmetic, any order: "fp32" (float64: "fp64"). On a CUDA device the
fp16/bf16 matmuls run on the tensor cores: the model measured on that architecture
(``flashproof.proofs.devices.MEASURED``; SM90: fp32_blockfma_k16_x2_rz), and fp32 inputs take IEEE
FMAs ("fp32"); an unmeasured architecture gets the most pessimistic measured model and a warning.
"""
from __future__ import annotations

import warnings

__all__ = ["declared_accumulator"]


def declared_accumulator(dtypes, *, cuda: bool, capability=None, who: str = "") -> dict:
    """{dtype: accumulator name} for a target computing ``dtypes`` on CUDA (``cuda``) or the CPU.
    ``capability``: (major, minor) of the device (default: torch's current device)."""
    dtypes = tuple(dtypes)
    if not cuda:
        return {d: ("fp64" if d == "float64" else "fp32") for d in dtypes}
    from flashproof.proofs.devices import device_accumulators

    if capability is None:
        import torch

        capability = torch.cuda.get_device_capability()
    table, warning = device_accumulators(capability, dtypes)
    if warning:
        warnings.warn(f"{who + ': ' if who else ''}{warning}", RuntimeWarning, stacklevel=2)
    return table

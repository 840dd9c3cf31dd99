"""A test-only target: flashproof's kernel with the split dK/dV backward forced on
(attention.SPLIT_DKDV; tiles.backward_split never splits under the interpreter), so the backward
properties run through the split kernels on CPU:

    cd tests && ../.venv/bin/flashproof check split_targets:kernel_split_dkdv --select 'grad*'
"""
from __future__ import annotations

import dataclasses
import importlib
from unittest import mock

from flashproof import kernels  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU, before triton is imported)

__all__ = ["kernel_split_dkdv"]


def _split():
    return mock.patch.object(importlib.import_module("flashproof.kernels.attention"), "SPLIT_DKDV", True)


def kernel_split_dkdv():
    """flashproof's kernel whose backward launches dV and dK as two kernels: the plan that the
    forward builds (under the switch) carries the split into the backward."""
    from flashproof.properties.builtin_targets import default_target

    base = default_target()

    def forward(*args, **kw):
        with _split():
            return base.forward(*args, **kw)

    return dataclasses.replace(base, name="flashproof.kernels (split dK/dV backward)", forward=forward,
                               spec="split_targets:kernel_split_dkdv")

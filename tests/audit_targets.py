"""Targets for the audit's tests: flashproof's kernel as it ran before the workaround of
docs/findings.md F1 (the Triton interpreter's truncating fp32 -> bf16 casts), and a kernel that
is off by a known amount on one row."""
from __future__ import annotations

import dataclasses
import importlib
from unittest import mock

from flashproof import kernels  # noqa: F401  (sets TRITON_INTERPRET=1 without a GPU, before triton is imported)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

__all__ = ["truncating_kernel", "off_by", "OFF_BY"]

#: what off_by adds to row 3 of head (0, 0) when E == 40
OFF_BY = 2.59


@triton.jit
def _interpreter_cast(x, DTYPE: tl.constexpr, FIX_BF16: tl.constexpr):
    """blocks.round_to without its F1 fix: the interpreter's own cast, which truncates to bf16."""
    return x.to(DTYPE)


def _truncating():
    return mock.patch.object(importlib.import_module("flashproof.kernels.attention"), "round_to", _interpreter_cast)


def truncating_kernel():
    """flashproof's Triton kernel (interpreted) whose fp32 -> bf16 conversions (P before P@V, the
    output store) truncate: its Target is kernel_target's, built under the swap, so the kernel's
    own probe declares round_toward_zero=("bfloat16",)."""
    from flashproof.properties.builtin_targets import _kernel_target as kernel_target

    if not kernels.runtime.interpreting():
        raise RuntimeError("truncating_kernel needs the Triton interpreter (TRITON_INTERPRET=1)")
    with _truncating():
        base = kernel_target(kernels)

    def forward(*args, **kw):
        with _truncating():
            return base.forward(*args, **kw)

    return dataclasses.replace(base, name="flashproof.kernels (interpreter's truncating bf16)", forward=forward,
                               spec="audit_targets:truncating_kernel", decode=None, split_range=None, paged=False,
                               backward=False)


def off_by(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch's SDPA, plus OFF_BY on row 3 of head (0, 0) when the head dim is 40."""
    import torch

    o = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal,
                                                         scale=scale, enable_gqa=enable_gqa)
    if query.shape[-1] == 40 and query.shape[2] > 3:
        o = o.clone()
        o[0, 0, 3] += OFF_BY
    return o

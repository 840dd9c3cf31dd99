"""Input-validation table: every class of bad input gets a clear error or a documented verdict.

Covers the kernel API (flashproof.kernels.attention / sdpa / decode), the reference API
(flashproof.reference.*), the CLI (``flashproof prove|check|audit|bench`` as a subprocess) and
the pytest plugin (``pytest --pyargs flashproof.properties --flashproof-target=...``).

- Error rows (:class:`Err`) assert the exception type AND a message fragment that names the
  argument at fault. CLI rows (:class:`Cli`) assert the exit code (0 ok / 1 the target violated
  the spec / 2 flashproof could not run; pytest's 4 for a usage error) and the message.
- Verdict tests (``test_verdict_*``) pin what the spec says for inputs that are valid but odd
  (empty tensors, L = 0, NaN, strides, ...), checked against flashproof.reference.
- A row with ``gap=...`` is a known gap (a crash, an obscure error or a silent wrong answer); it
  runs as ``xfail(strict=True)``, so it fails loudly once fixed. To close it, delete its
  ``gap=`` (the ``@gap(...)`` line of a verdict test) and regenerate docs/validation.md.

docs/validation.md is generated from these tables and checked by ``test_docs_table_is_current``:
    .venv/bin/python tests/test_validation.py --write-doc
The CLI/plugin subprocesses are started together (a small thread pool) when this module's first
test runs, so they overlap with the in-process tests; the default-target suite is never run.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from flashproof import kernels, reference
from flashproof.proofs import bounds

__all__ = ["Err", "Cli", "ERRORS", "CLI", "VERDICTS", "GAPS", "render_doc"]

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "validation.md"
FLASHPROOF = Path(sys.executable).with_name("flashproof")
KA, KS, KD = "kernels.attention", "kernels.sdpa", "kernels.decode"
F32 = torch.float32
NAN, INF = float("nan"), float("inf")


# ============================================================================ tensors
def T(*shape, dtype=F32, device="cpu", seed=0):
    """A tiny deterministic tensor (randn) or, on meta, an empty one (no data)."""
    if device == "meta":
        return torch.empty(*shape, dtype=dtype, device="meta")
    g = torch.Generator().manual_seed(seed + 7919 * len(shape) + sum(shape))
    return torch.randn(*shape, generator=g).to(dtype)


def qkv(b=1, h=2, hkv=2, lq=3, lk=5, e=16, ev=None, dtype=F32, seed=0):
    ev = e if ev is None else ev
    return (T(b, h, lq, e, dtype=dtype, seed=seed), T(b, hkv, lk, e, dtype=dtype, seed=seed + 1),
            T(b, hkv, lk, ev, dtype=dtype, seed=seed + 2))


def attn(q=None, k=None, v=None, **kw):
    dq, dk, dv = qkv()
    return kernels.attention(dq if q is None else q, dk if k is None else k, dv if v is None else v, **kw)


def sdpa(q=None, k=None, v=None, **kw):
    dq, dk, dv = qkv()
    return kernels.sdpa(dq if q is None else q, dk if k is None else k, dv if v is None else v, **kw)


# decode: B=2 sequences, 1 new token, contiguous cache of 8 keys or 5 pages of 4 slots
def dec(q=None, k=None, v=None, **kw):
    return kernels.decode(T(2, 2, 1, 16) if q is None else q, T(2, 2, 8, 16, seed=1) if k is None else k,
                          T(2, 2, 8, 16, seed=2) if v is None else v, **kw)


def bt(*rows, dtype=torch.int32):
    return torch.tensor(rows, dtype=dtype)


def paged(q=None, k=None, v=None, block_table=None, **kw):
    return kernels.decode(T(2, 2, 1, 16) if q is None else q, T(5, 2, 4, 16, seed=1) if k is None else k,
                          T(5, 2, 4, 16, seed=2) if v is None else v,
                          block_table=bt([0, 1], [2, 3]) if block_table is None else block_table, **kw)


def huge(*shape):
    """A zero-stride tensor of a huge logical shape (no memory): for grid/length limits."""
    return torch.zeros(1, 1, 1, shape[-1]).expand(*shape)


# ============================================================================ error rows
@dataclass(frozen=True)
class Err:
    """One row of the table: ``call()`` must raise ``exc`` with ``fragment`` in the message."""

    id: str
    cls: str
    api: str
    call: Callable
    exc: type | tuple
    fragment: str
    gap: str | None = None
    #: ``fragment`` is a regular expression (used for gaps, where the fix's wording is open)
    regex: bool = False

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=self.gap)] if self.gap else []
        return pytest.param(self, id=self.id, marks=marks)

    @property
    def pattern(self):
        return self.fragment if self.regex else re.escape(self.fragment)

    @property
    def shown(self):
        return f"/{self.fragment}/" if self.regex else self.fragment


def E(id, cls, api, call, exc, fragment, gap=None, regex=False):
    return Err(id, cls, api, call, exc, fragment, gap, regex)


KERNEL_ERRORS = [
    # --- rank
    E("attention-query-rank3", "wrong rank", KA, lambda: attn(q=T(2, 3, 16)), ValueError,
      "query must have rank 4 (B, H, L, E), got shape (2, 3, 16)"),
    E("attention-key-rank5", "wrong rank", KA, lambda: attn(k=T(1, 1, 2, 5, 16)), ValueError,
      "key must have rank 4"),
    E("sdpa-rank2", "wrong rank", KS, lambda: kernels.sdpa(T(3, 16), T(5, 16), T(5, 16)), ValueError,
      "query, key, value must all have rank 4 (B, H, L, E) or 3 (N, L, E)"),
    E("sdpa-mixed-ranks", "wrong rank", KS, lambda: sdpa(k=T(2, 5, 16)), ValueError,
      "query, key, value must all have rank 4 (B, H, L, E) or 3 (N, L, E)"),
    E("decode-q-rank3", "wrong rank", KD, lambda: dec(q=T(2, 1, 16)), ValueError, "q must have rank 4"),
    E("decode-k_cache-rank3", "wrong rank", KD, lambda: dec(k=T(2, 8, 16)), ValueError,
      "k_cache must have rank 4"),
    # --- mismatched shapes
    E("attention-batch", "mismatched shapes", KA, lambda: attn(q=T(2, 2, 3, 16)), ValueError,
      "batch sizes differ: query 2, key 1, value 1"),
    E("attention-head-dim", "mismatched shapes", KA, lambda: attn(k=T(1, 2, 5, 32)), ValueError,
      "query and key head dims differ: query 16, key 32"),
    E("attention-kv-length", "mismatched shapes", KA, lambda: attn(v=T(1, 2, 4, 16)), ValueError,
      "key and value lengths differ: key 5, value 4"),
    E("attention-kv-heads", "mismatched shapes", KA, lambda: attn(k=T(1, 1, 5, 16)), ValueError,
      "key and value head counts differ: key 1, value 2"),
    E("sdpa-batch", "mismatched shapes", KS, lambda: sdpa(v=T(3, 2, 5, 16)), ValueError,
      "batch sizes differ: query 1, key 1, value 3"),
    E("decode-cache-length", "mismatched shapes", KD, lambda: dec(v=T(2, 2, 7, 16)), ValueError,
      "key and value lengths differ: key 8, value 7"),
    E("decode-paged-caches-differ", "mismatched shapes", KD, lambda: paged(v=T(4, 2, 4, 16)), ValueError,
      "k_cache (5, 2, 4, 16) and v_cache (4, 2, 4, 16) must agree in (num_pages, Hkv, page_size)"),
    # --- dtype
    E("attention-int32", "wrong dtype", KA, lambda: attn(*(x.int() for x in qkv())), TypeError,
      "query has dtype torch.int32; supported: torch.float16, torch.bfloat16, torch.float32"),
    E("attention-float64", "wrong dtype", KA, lambda: attn(*qkv(dtype=torch.float64)), TypeError,
      "query has dtype torch.float64; supported"),
    E("attention-key-int64", "wrong dtype", KA, lambda: attn(k=torch.ones(1, 2, 5, 16, dtype=torch.int64)),
      TypeError, "key has dtype torch.int64"),
    E("sdpa-float64", "wrong dtype", KS, lambda: sdpa(*qkv(dtype=torch.float64)), TypeError,
      "query has dtype torch.float64"),
    E("decode-int32", "wrong dtype", KD, lambda: dec(q=torch.ones(2, 2, 1, 16, dtype=torch.int32)), TypeError,
      "q has dtype torch.int32"),
    E("decode-cache-float64", "wrong dtype", KD, lambda: dec(k=T(2, 2, 8, 16, dtype=torch.float64)), TypeError,
      "k_cache has dtype torch.float64"),
    # --- mixed dtypes
    E("attention-mixed-fp16", "mixed dtypes", KA, lambda: attn(q=T(1, 2, 3, 16, dtype=torch.float16)), TypeError,
      "query, key, value must share a dtype; got torch.float16, torch.float32, torch.float32"),
    E("attention-mixed-bf16", "mixed dtypes", KA, lambda: attn(v=T(1, 2, 5, 16, dtype=torch.bfloat16)),
      TypeError, "query, key, value must share a dtype; got torch.float32, torch.float32, torch.bfloat16"),
    E("sdpa-mixed", "mixed dtypes", KS, lambda: sdpa(k=T(1, 2, 5, 16, dtype=torch.float16)), TypeError,
      "query, key, value must share a dtype"),
    E("decode-mixed", "mixed dtypes", KD, lambda: dec(v=T(2, 2, 8, 16, dtype=torch.float16)), TypeError,
      "q, k_cache, v_cache must share a dtype"),
    E("decode-paged-mixed", "mixed dtypes", KD, lambda: paged(k=T(5, 2, 4, 16, dtype=torch.float16)),
      TypeError, "q, k_cache, v_cache must share a dtype"),
    # --- device (meta stands in for a second device)
    E("attention-key-meta", "device mismatch", KA, lambda: attn(k=T(1, 2, 5, 16, device="meta")), ValueError,
      "key is on meta, but Triton runs interpreted on CPU here"),
    E("attention-all-meta", "device mismatch", KA, lambda: attn(*(x.to("meta") for x in qkv())), ValueError,
      "query is on meta"),
    E("sdpa-value-meta", "device mismatch", KS, lambda: sdpa(v=T(1, 2, 5, 16, device="meta")), ValueError,
      "value is on meta"),
    E("sdpa-attn_mask-meta", "device mismatch", KS,
      lambda: sdpa(attn_mask=torch.ones(3, 5, dtype=torch.bool, device="meta")), ValueError,
      "attn_mask is on meta"),
    E("decode-k_cache-meta", "device mismatch", KD, lambda: dec(k=T(2, 2, 8, 16, device="meta")), ValueError,
      "k_cache is on meta"),
    E("decode-block_table-meta", "device mismatch", KD,
      lambda: paged(block_table=torch.empty(2, 2, dtype=torch.int32, device="meta")), ValueError,
      "block_table is on meta"),
    E("decode-seqlens-meta", "device mismatch", KD,
      lambda: dec(seqlens=torch.empty(2, dtype=torch.int32, device="meta")), ValueError, "seqlens is on meta"),
    # --- not a tensor
    E("attention-numpy-query", "not a tensor", KA, lambda: attn(q=np.zeros((1, 2, 3, 16), np.float32)),
      TypeError, "query must be a torch.Tensor, got ndarray"),
    E("sdpa-list-key", "not a tensor", KS, lambda: sdpa(k=[[0.0]]), TypeError, "key must be a torch.Tensor, got list"),
    E("decode-list-block_table", "not a tensor", KD, lambda: paged(block_table=[[0, 1], [2, 3]]), TypeError,
      "block_table must be a torch.Tensor, got list"),
    # --- head counts
    E("attention-H-not-multiple", "head counts", KA, lambda: attn(q=T(1, 3, 3, 16)), ValueError,
      "query heads (3) must be a multiple of key/value heads (2)"),
    E("attention-Hkv-0", "head counts", KA, lambda: attn(k=T(1, 0, 5, 16), v=T(1, 0, 5, 16)), ValueError,
      "query heads (2) must be a multiple of key/value heads (0)"),
    E("sdpa-gqa-without-enable_gqa", "head counts", KS, lambda: sdpa(k=T(1, 1, 5, 16), v=T(1, 1, 5, 16)),
      ValueError, "pass enable_gqa=True"),
    E("sdpa-enable_gqa-int", "head counts", KS, lambda: sdpa(enable_gqa=1), TypeError, "enable_gqa must be a bool"),
    E("decode-H-not-multiple", "head counts", KD, lambda: dec(q=T(2, 3, 1, 16)), ValueError,
      "query heads (3) must be a multiple of key/value heads (2)"),
    E("decode-paged-Hkv-0", "head counts", KD, lambda: paged(k=T(5, 0, 4, 16), v=T(5, 0, 4, 16)), ValueError,
      "key/value heads (0)"),
    # --- head dim E
    E("attention-E-0", "E unsupported", KA, lambda: attn(*qkv(e=0, ev=16)), ValueError,
      "head dims must be positive: E=0, Ev=16"),
    E("attention-Ev-0", "E unsupported", KA, lambda: attn(*qkv(e=16, ev=0)), ValueError,
      "head dims must be positive: E=16, Ev=0"),
    E("attention-E-300", "E unsupported", KA, lambda: attn(*qkv(e=300, ev=16)), ValueError,
      "query/key head dim E = 300 is not supported (at most 256)"),
    E("attention-E-512", "E unsupported", KA, lambda: attn(*qkv(e=512, ev=16)), ValueError,
      "query/key head dim E = 512 is not supported"),
    E("attention-Ev-300", "E unsupported", KA, lambda: attn(*qkv(e=16, ev=300)), ValueError,
      "value head dim Ev = 300 is not supported"),
    E("sdpa-E-300", "E unsupported", KS, lambda: sdpa(*qkv(e=300)), ValueError, "head dim E = 300 is not supported"),
    E("decode-E-300", "E unsupported", KD, lambda: dec(q=T(2, 2, 1, 300), k=T(2, 2, 8, 300)), ValueError,
      "q/k_cache head dim E = 300 is not supported"),
    E("decode-paged-E-300", "E unsupported", KD, lambda: paged(q=T(2, 2, 1, 300), k=T(5, 2, 4, 300)), ValueError,
      "head dims E=300, Ev=16 not supported (at most 256)"),
    # --- grid / length limits (zero-stride views: no memory)
    E("attention-batch-over-grid", "grid limits", KA,
      lambda: attn(huge(70000, 1, 1, 16), huge(70000, 1, 1, 16), huge(70000, 1, 1, 16)), ValueError,
      "batch (70000) and heads (1) must each be <= 65535"),
    E("attention-Lq-over-int32", "grid limits", KA, lambda: attn(q=huge(1, 2, 2**30, 16)), ValueError,
      "query length Lq = 1073741824 is too long"),
    # --- window
    E("attention-window-minus2", "bad window", KA, lambda: attn(window=(-2, 0)), ValueError,
      "window[0] (left) must be >= 0, or -1 for unbounded; got -2"),
    E("attention-window-right-minus3", "bad window", KA, lambda: attn(window=(0, -3)), ValueError,
      "window[1] (right) must be >= 0, or -1 for unbounded; got -3"),
    E("attention-window-float", "bad window", KA, lambda: attn(window=(1.5, 0)), TypeError,
      "window[0] (left) must be an int, got float"),
    E("attention-window-bool", "bad window", KA, lambda: attn(window=(True, 0)), TypeError,
      "window[0] (left) must be an int, got bool"),
    E("attention-window-None-side", "bad window", KA, lambda: attn(window=(None, 1)), TypeError,
      "window[0] (left) must be an int, got NoneType"),
    E("attention-window-scalar", "bad window", KA, lambda: attn(window=3), TypeError,
      "window must be None or a (left, right) pair, got 3"),
    E("attention-window-triple", "bad window", KA, lambda: attn(window=(1, 2, 3)), ValueError,
      "window must be a (left, right) pair, got (1, 2, 3)"),
    E("decode-window-minus2", "bad window", KD, lambda: dec(window=(-2, -1)), ValueError,
      "window[0] (left) must be >= 0"),
    # --- causal
    E("attention-causal-str", "bad causal", KA, lambda: attn(causal="yes"), ValueError,
      "causal must be False, True, 'top_left' or 'bottom_right'; got 'yes'"),
    E("attention-causal-int", "bad causal", KA, lambda: attn(causal=1), TypeError,
      "causal must be a bool or an alignment string, got int"),
    E("attention-causal-contradicts-alignment", "bad causal", KA,
      lambda: attn(causal="top_left", alignment="bottom_right"), ValueError,
      "causal='top_left' contradicts alignment='bottom_right'"),
    E("attention-alignment-bad", "bad causal", KA, lambda: attn(alignment="middle"), ValueError,
      "alignment must be one of ('top_left', 'bottom_right'), got 'middle'"),
    E("sdpa-is_causal-str", "bad causal", KS, lambda: sdpa(is_causal="top_left"), TypeError,
      "is_causal must be a bool, got str"),
    E("sdpa-attn_mask-with-is_causal", "bad causal", KS,
      lambda: sdpa(attn_mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True), ValueError,
      "attn_mask and is_causal=True cannot be combined"),
    E("decode-causal-str", "bad causal", KD, lambda: dec(causal="x"), ValueError, "causal must be False, True"),
    # --- scale
    E("attention-scale-nan", "bad scale", KA, lambda: attn(scale=NAN), ValueError, "scale must be finite, got nan"),
    E("attention-scale-inf", "bad scale", KA, lambda: attn(scale=INF), ValueError, "scale must be finite, got inf"),
    E("attention-scale-str", "bad scale", KA, lambda: attn(scale="0.5"), TypeError,
      "scale must be a real number or None, got str"),
    E("attention-scale-tensor", "bad scale", KA, lambda: attn(scale=torch.tensor(0.5)), TypeError,
      "scale must be a real number or None, got Tensor"),
    E("attention-scale-bool", "bad scale", KA, lambda: attn(scale=True), TypeError,
      "scale must be a real number or None, got bool"),
    E("sdpa-scale-nan", "bad scale", KS, lambda: sdpa(scale=NAN), ValueError, "scale must be finite"),
    E("decode-scale-inf", "bad scale", KD, lambda: dec(scale=INF), ValueError, "scale must be finite"),
    # --- softcap
    E("attention-softcap-negative", "bad softcap", KA, lambda: attn(softcap=-1.0), ValueError,
      "softcap must be > 0 (or None/0/inf for none), got -1.0"),
    E("attention-softcap-nan", "bad softcap", KA, lambda: attn(softcap=NAN), ValueError,
      "softcap must be > 0 (or None/0/inf for none), got nan"),
    E("attention-softcap-minus-inf", "bad softcap", KA, lambda: attn(softcap=-INF), ValueError,
      "softcap must be > 0"),
    E("attention-softcap-str", "bad softcap", KA, lambda: attn(softcap="1"), TypeError,
      "softcap must be a positive real or None, got str"),
    E("attention-softcap-bool", "bad softcap", KA, lambda: attn(softcap=True), TypeError,
      "softcap must be a positive real or None, got bool"),
    E("decode-softcap-negative", "bad softcap", KD, lambda: dec(softcap=-1.0), ValueError, "softcap must be > 0"),
    # --- tile configs
    E("attention-block_m-48", "bad tile config", KA, lambda: attn(block_m=48), ValueError,
      "block_m must be a power of two in (16, 32, 64, 128, 256), got 48"),
    E("attention-block_m-0", "bad tile config", KA, lambda: attn(block_m=0), ValueError,
      "block_m must be a power of two in (16, 32, 64, 128, 256), got 0"),
    E("attention-block_m-512", "bad tile config", KA, lambda: attn(block_m=512), ValueError,
      "block_m must be a power of two in (16, 32, 64, 128, 256), got 512"),
    E("attention-block_m-bool", "bad tile config", KA, lambda: attn(block_m=True), TypeError,
      "block_m must be an int, got bool"),
    E("attention-block_m-float", "bad tile config", KA, lambda: attn(block_m=32.0), TypeError,
      "block_m must be an int, got float"),
    E("attention-block_n-8", "bad tile config", KA, lambda: attn(block_n=8), ValueError,
      "block_n must be a power of two in (16, 32, 64, 128, 256), got 8"),
    E("attention-num_warps-3", "bad tile config", KA, lambda: attn(num_warps=3), ValueError,
      "num_warps must be one of (1, 2, 4, 8, 16), got 3"),
    E("attention-num_stages-0", "bad tile config", KA, lambda: attn(num_stages=0), ValueError,
      "num_stages must be an int in 1..8, got 0"),
    E("attention-num_stages-9", "bad tile config", KA, lambda: attn(num_stages=9), ValueError,
      "num_stages must be an int in 1..8, got 9"),
    E("attention-tile-exceeds-smem", "bad tile config", KA,
      lambda: attn(*qkv(e=256), block_m=256, block_n=256, num_stages=8), ValueError,
      "tile config block_m=256, block_n=256, num_stages=8 needs about"),
    E("decode-block_n-48", "bad tile config", KD, lambda: dec(block_n=48), ValueError,
      "block_n must be a power of two in 16..256, got 48"),
    E("decode-num_splits-0", "bad tile config", KD, lambda: dec(num_splits=0), ValueError,
      "num_splits must be in 1..64, got 0"),
    E("decode-num_splits-65", "bad tile config", KD, lambda: dec(num_splits=65), ValueError,
      "num_splits must be in 1..64, got 65"),
    E("decode-num_splits-float", "bad tile config", KD, lambda: dec(num_splits=2.0), TypeError,
      "num_splits must be an int, got float"),
    # --- flags
    E("attention-return_lse-int", "bad flag", KA, lambda: attn(return_lse=1), TypeError,
      "return_lse must be a bool, got int"),
    E("attention-allow_tf32-int", "bad flag", KA, lambda: attn(allow_tf32=1), TypeError,
      "allow_tf32 must be a bool, got int"),
    E("attention-deterministic-int", "bad flag", KA, lambda: attn(deterministic=1), TypeError,
      "deterministic must be a bool, got int"),
    E("decode-return_lse-int", "bad flag", KD, lambda: dec(return_lse=1), TypeError, "return_lse must be a bool"),
    E("sdpa-dropout", "bad flag", KS, lambda: sdpa(dropout_p=0.1), NotImplementedError,
      "dropout is not supported (dropout_p=0.1); pass dropout_p=0.0"),
    E("sdpa-dropout-str", "bad flag", KS, lambda: sdpa(dropout_p="0"), TypeError, "dropout_p must be a float, got str"),
    # --- sdpa attn_mask
    E("sdpa-attn_mask-shape", "bad attn_mask", KS, lambda: sdpa(attn_mask=torch.ones(2, 5, dtype=torch.bool)),
      ValueError, "attn_mask of shape (2, 5) does not broadcast to (B, H, Lq, Lk) = (1, 2, 3, 5)"),
    E("sdpa-attn_mask-int", "bad attn_mask", KS, lambda: sdpa(attn_mask=torch.ones(3, 5, dtype=torch.int32)),
      TypeError, "attn_mask has dtype torch.int32"),
    E("sdpa-attn_mask-rank5", "bad attn_mask", KS,
      lambda: sdpa(attn_mask=torch.ones(1, 1, 1, 3, 5, dtype=torch.bool)), ValueError,
      "attn_mask must have rank <= 4"),
    E("sdpa-attn_mask-list", "bad attn_mask", KS, lambda: sdpa(attn_mask=[[True]]), TypeError,
      "attn_mask must be a torch.Tensor, got list"),
    E("sdpa-attn_mask-requires-grad", "bad attn_mask", KS,
      lambda: sdpa(attn_mask=torch.zeros(3, 5, requires_grad=True)), NotImplementedError,
      "gradients with respect to attn_mask are not supported"),
    # --- decode: block_table / seqlens / page_size
    E("decode-block_table-float", "bad block_table", KD, lambda: paged(block_table=bt([0, 1], [2, 3]).float()),
      TypeError, "block_table has dtype torch.float32; supported: torch.int32, torch.int64"),
    E("decode-block_table-int16", "bad block_table", KD,
      lambda: paged(block_table=bt([0, 1], [2, 3], dtype=torch.int16)), TypeError, "block_table has dtype torch.int16"),
    E("decode-block_table-out-of-range", "bad block_table", KD, lambda: paged(block_table=bt([0, 1], [2, 5])),
      ValueError, "block_table[1, 1] = 5 is not a page of k_cache (0..4) but the sequence uses it"),
    E("decode-block_table-negative", "bad block_table", KD, lambda: paged(block_table=bt([0, -1], [2, 3])),
      ValueError, "block_table[0, 1] = -1 is not a page of k_cache"),
    E("decode-block_table-rank1", "bad block_table", KD, lambda: paged(block_table=torch.tensor([0, 1], dtype=torch.int32)),
      ValueError, "block_table must have shape (B=2, max_pages), got (2,)"),
    E("decode-block_table-batch", "bad block_table", KD, lambda: paged(block_table=bt([0, 1])), ValueError,
      "block_table must have shape (B=2, max_pages), got (1, 2)"),
    E("decode-seqlens-beyond-cache", "bad seqlens", KD, lambda: dec(seqlens=torch.tensor([9, 1], dtype=torch.int32)),
      ValueError, "seqlens must lie in [0, 8] (the cache's capacity), got [1, 9]"),
    E("decode-seqlens-beyond-pages", "bad seqlens", KD,
      lambda: paged(seqlens=torch.tensor([9, 1], dtype=torch.int32)), ValueError, "seqlens must lie in [0, 8]"),
    E("decode-seqlens-negative", "bad seqlens", KD, lambda: dec(seqlens=torch.tensor([-1, 1], dtype=torch.int32)),
      ValueError, "seqlens must lie in [0, 8] (the cache's capacity), got [-1, 1]"),
    E("decode-seqlens-float", "bad seqlens", KD, lambda: dec(seqlens=torch.tensor([1.0, 1.0])), TypeError,
      "seqlens has dtype torch.float32"),
    E("decode-seqlens-list", "bad seqlens", KD, lambda: dec(seqlens=[1, 1]), TypeError,
      "seqlens must be a torch.Tensor, got list"),
    E("decode-seqlens-shape", "bad seqlens", KD, lambda: dec(seqlens=torch.tensor([1, 1, 1], dtype=torch.int32)),
      ValueError, "seqlens must have shape (B,) = (2,), got (3,)"),
    E("decode-page_size-0", "bad page_size", KD, lambda: paged(page_size=0), ValueError, "page_size must be >= 1, got 0"),
    E("decode-page_size-negative", "bad page_size", KD, lambda: paged(page_size=-4), ValueError,
      "page_size must be >= 1, got -4"),
    E("decode-page_size-mismatch", "bad page_size", KD, lambda: paged(page_size=8), ValueError,
      "page_size=8 but k_cache has 4 slots per page"),
    E("decode-page_size-float", "bad page_size", KD, lambda: paged(page_size=4.0), TypeError,
      "page_size must be an int, got float"),
    E("decode-page_size-without-block_table", "bad page_size", KD, lambda: dec(page_size=4), ValueError,
      "page_size is given but block_table is None"),
    E("decode-cache-zero-slots-per-page", "bad page_size", KD,
      lambda: paged(k=T(5, 2, 0, 16), v=T(5, 2, 0, 16)), ValueError, "k_cache has page_size 0; it must be >= 1"),
]


# ---------------------------------------------------------------------------- reference
def _do_for(q, v):
    """A dO of the right shape when q and v have rank 4, else something (the rank check comes first)."""
    if getattr(q, "ndim", 0) == 4 and getattr(v, "ndim", 0) == 4:
        return torch.ones(*q.shape[:3], v.shape[-1], device=q.device)
    return torch.ones(1)


REF_FNS = {
    "forward_fp64": lambda q, k, v, **kw: reference.forward_fp64(q, k, v, **kw),
    "forward_mp": lambda q, k, v, **kw: reference.forward_mp(q, k, v, prec=53, **kw),
    "forward_certified": lambda q, k, v, **kw: reference.forward_certified(q, k, v, **kw),
    "forward_tiled": lambda q, k, v, **kw: reference.forward_tiled(q, k, v, boundaries=2, **kw),
    "forward_naive": lambda q, k, v, **kw: reference.forward_naive(q, k, v, **kw),
    "backward_fp64": lambda q, k, v, **kw: reference.backward_fp64(q, k, v, _do_for(q, v), **kw),
    "backward_mp": lambda q, k, v, **kw: reference.backward_mp(q, k, v, _do_for(q, v), prec=53, **kw),
}
FORWARDS = ("forward_fp64", "forward_mp", "forward_certified", "forward_tiled", "forward_naive")


def rq(**kw):
    """Reference inputs: q (1,2,3,4), k/v (1,2,5,4), with overrides."""
    q, k, v = qkv(e=4)
    return kw.get("q", q), kw.get("k", k), kw.get("v", v)


# (suffix, class, args builder -> (q, k, v, opts), exception, fragment, gap)
_REF_COMMON = [
    ("query-rank3", "wrong rank", lambda: (*rq(q=T(2, 3, 4)), {}), ValueError,
     "query must have rank 4 (B, H, L, E), got shape (2, 3, 4)", None),
    ("batch", "mismatched shapes", lambda: (*rq(q=T(2, 2, 3, 4)), {}), ValueError,
     "batch sizes differ: query 2, key 1, value 1", None),
    ("kv-length", "mismatched shapes", lambda: (*rq(v=T(1, 2, 4, 4)), {}), ValueError,
     "key and value lengths differ: key 5, value 4", None),
    ("int32", "wrong dtype", lambda: (*(x.int() for x in rq()), {}), TypeError,
     "query must be a floating-point tensor, got dtype torch.int32", None),
    ("complex64", "wrong dtype", lambda: (*(x.to(torch.complex64) for x in rq()), {}), TypeError,
     "query must be a floating-point tensor, got dtype torch.complex64", None),
    ("numpy-int32", "wrong dtype", lambda: (rq()[0].numpy().astype(np.int32), *rq()[1:], {}), TypeError,
     "query must be a float16/float32/float64 array, got dtype int32", None),
    ("list", "not a tensor", lambda: ([[1.0]], *rq()[1:], {}), TypeError,
     "query must be a torch.Tensor or numpy.ndarray, got list", None),
    ("key-meta", "device mismatch", lambda: (*rq(k=T(1, 2, 5, 4, device="meta")), {}), ValueError,
     "tensors are on different devices", None),
    ("all-meta", "device mismatch", lambda: (*(x.to("meta") for x in rq()), {}), (ValueError, TypeError),
     "query.*meta|meta.*query", None),
    ("H-not-multiple", "head counts", lambda: (*rq(q=T(1, 3, 3, 4)), {}), ValueError,
     "query heads (3) must be a multiple of key/value heads (2)", None),
    ("Hkv-0", "head counts", lambda: (*rq(k=T(1, 0, 5, 4), v=T(1, 0, 5, 4)), {}), ValueError,
     "must be a multiple of key/value heads (0)", None),
    ("E-0", "E unsupported", lambda: (*rq(q=T(1, 2, 3, 0), k=T(1, 2, 5, 0)), {}), ValueError,
     "head dims must be positive: E=0, Ev=4", None),
    ("window-minus2", "bad window", lambda: (*rq(), dict(window=(-2, 0))), ValueError,
     "window[0] (left) must be >= 0, or -1 for unbounded; got -2", None),
    ("window-bool", "bad window", lambda: (*rq(), dict(window=(0, True))), TypeError,
     "window[1] (right) must be an int, got bool", None),
    ("causal-str", "bad causal", lambda: (*rq(), dict(causal="yes")), ValueError,
     "causal must be False, True, 'top_left' or 'bottom_right'; got 'yes'", None),
    ("scale-nan", "bad scale", lambda: (*rq(), dict(scale=NAN)), ValueError, "scale must be finite, got nan", None),
    ("scale-inf", "bad scale", lambda: (*rq(), dict(scale=INF)), ValueError, "scale must be finite, got inf", None),
    ("scale-str", "bad scale", lambda: (*rq(), dict(scale="1")), TypeError,
     "scale must be a real number or None, got str", None),
    ("softcap-negative", "bad softcap", lambda: (*rq(), dict(softcap=-2.0)), ValueError,
     "softcap must be > 0 (or None/0/inf for none), got -2.0", None),
    ("softcap-nan", "bad softcap", lambda: (*rq(), dict(softcap=NAN)), ValueError,
     "softcap must be > 0 (or None/0/inf for none), got nan", None),
    ("attn_mask-shape", "bad attn_mask", lambda: (*rq(), dict(attn_mask=torch.ones(2, 2, dtype=torch.bool))),
     ValueError, "attn_mask of shape (2, 2) does not broadcast to (B,H,Lq,Lk) = (1, 2, 3, 5)", None),
    ("attn_mask-int", "bad attn_mask", lambda: (*rq(), dict(attn_mask=torch.ones(3, 5, dtype=torch.int32))),
     TypeError, "attn_mask must be bool or floating point, got dtype torch.int32", None),
    ("attn_mask-list", "bad attn_mask", lambda: (*rq(), dict(attn_mask=[[True]])), TypeError,
     "attn_mask must be None, a torch.Tensor or a numpy.ndarray, got list", None),
]


def _ref_call(fn, build):
    def call():
        q, k, v, opts = build()
        return REF_FNS[fn](q, k, v, **opts)
    return call


_REF_REGEX = {"all-meta"}


def _ref_specific():
    q, k, v = (lambda: rq()[0]), (lambda: rq()[1]), (lambda: rq()[2])

    def R(id, cls, api, call, exc, fragment, gap=None, regex=False):
        return E(id, cls, "reference." + api, call, exc, fragment, gap, regex)

    def do(x):
        return lambda: reference.backward_fp64(q(), k(), v(), x)

    return [
        R("forward_naive-mixed-dtypes", "mixed dtypes", "forward_naive",
          lambda: reference.forward_naive(q().half(), k(), v()), TypeError,
          "forward_naive needs one dtype: query torch.float16, key torch.float32, value torch.float32"),
        R("forward_mp-prec-1", "bad precision", "forward_mp", lambda: reference.forward_mp(q(), k(), v(), prec=1),
          ValueError, "prec must be an int >= 2 (bits), got 1"),
        R("forward_mp-prec-str", "bad precision", "forward_mp", lambda: reference.forward_mp(q(), k(), v(), prec="x"),
          ValueError, "prec must be an int >= 2 (bits), got 'x'"),
        R("forward_mp-prec-bool", "bad precision", "forward_mp", lambda: reference.forward_mp(q(), k(), v(), prec=True),
          ValueError, "prec must be an int >= 2 (bits), got True"),
        R("forward_certified-prec-1", "bad precision", "forward_certified",
          lambda: reference.forward_certified(q(), k(), v(), prec=1), ValueError, "prec must be an int >= 2 (bits)"),
        R("backward_mp-prec-1", "bad precision", "backward_mp",
          lambda: reference.backward_mp(q(), k(), v(), torch.ones(1, 2, 3, 4), prec=1), ValueError,
          "prec must be an int >= 2 (bits)"),
        R("forward_tiled-arithmetic", "bad tiling", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), arithmetic="fp16"), ValueError,
          "arithmetic must be one of ('fp64', 'fp32', 'mp')"),
        R("forward_tiled-mp-prec-1", "bad precision", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), arithmetic="mp", prec=1), ValueError,
          "prec must be an int >= 2 (bits)"),
        R("forward_tiled-boundaries-0", "bad tiling", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), boundaries=0), ValueError,
          "boundaries as a block size must be >= 1, got 0"),
        R("forward_tiled-boundaries-beyond-Lk", "bad tiling", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), boundaries=[9]), ValueError,
          "boundaries must lie in [0, Lk=5], got [9]"),
        R("forward_tiled-boundaries-decreasing", "bad tiling", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), boundaries=[3, 1]), ValueError,
          "boundaries must be non-decreasing, got [3, 1]"),
        R("forward_tiled-boundaries-str", "bad tiling", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), boundaries="x"), (TypeError, ValueError),
          "boundaries", regex=True),
        R("forward_tiled-tree", "bad tiling", "forward_tiled",
          lambda: reference.forward_tiled(q(), k(), v(), tree="zigzag"), ValueError,
          "tree must be 'left', 'right', 'balanced', 'random' or a nested tuple, got 'zigzag'"),
        R("backward_fp64-do-shape", "mismatched shapes", "backward_fp64", do(torch.ones(1, 2, 4, 4)), ValueError,
          "do (grad of the output) must have shape (B,H,Lq,Ev) = (1, 2, 3, 4), got (1, 2, 4, 4)"),
        R("backward_fp64-do-int", "wrong dtype", "backward_fp64", do(torch.ones(1, 2, 3, 4, dtype=torch.int32)),
          TypeError, "do must be a floating-point tensor, got dtype torch.int32"),
        R("backward_fp64-do-meta", "device mismatch", "backward_fp64", do(T(1, 2, 3, 4, device="meta")),
          ValueError, "'do': 'meta'"),
        R("backward_fp64-do-list", "not a tensor", "backward_fp64", do([1.0]), TypeError,
          "do must be a torch.Tensor or numpy.ndarray, got list"),
    ]


REF_SPECIFIC = _ref_specific()
REFERENCE_ERRORS = [
    E(f"{fn}-{suffix}", cls, "reference." + fn, _ref_call(fn, build), exc, frag, gap, regex=suffix in _REF_REGEX)
    for suffix, cls, build, exc, frag, gap in _REF_COMMON for fn in REF_FNS
] + REF_SPECIFIC

ERRORS = KERNEL_ERRORS + REFERENCE_ERRORS


@pytest.mark.parametrize("row", [r.param() for r in KERNEL_ERRORS])
def test_kernel_errors(row: Err):
    with pytest.raises(row.exc, match=row.pattern):
        row.call()


@pytest.mark.parametrize("row", [r.param() for r in REFERENCE_ERRORS])
def test_reference_errors(row: Err):
    with pytest.raises(row.exc, match=row.pattern):
        row.call()


# ============================================================================ checks
def _np(x):
    return x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def assert_within(name, got, want, bound):
    """|got - want| <= bound elementwise; NaN/inf must sit where the reference has the same value.

    The message names the tensor, the worst indices, and counts NaN and inf separately."""
    got, want, bound = _np(got), _np(want), np.broadcast_to(_np(bound), np.shape(want))
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    same_special = (np.isnan(got) & np.isnan(want)) | (np.isinf(want) & (got == want))
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
        bad = ~same_special & ~(err <= bound)
    if bad.any():
        n_nan = int(np.count_nonzero(bad & np.isnan(got)))
        n_inf = int(np.count_nonzero(bad & np.isinf(got)))
        excess = np.where(bad, np.nan_to_num(err - bound, nan=np.inf, posinf=np.inf), -np.inf)
        worst = np.argsort(excess, axis=None)[::-1][:5]
        idx = [tuple(int(i) for i in np.unravel_index(w, got.shape)) for w in worst if bad.flat[w]]
        raise AssertionError(
            f"{name}: {int(bad.sum())} element(s) outside the bound ({n_nan} NaN, {n_inf} inf where the "
            f"reference differs); worst at {idx}: got {[got[i] for i in idx]}, want {[want[i] for i in idx]}, "
            f"bound {[bound[i] for i in idx]}")


def kernel_bound(q, k, v, **opts):
    """Rigorous |kernel - exact| (proofs.bounds, fp32 accumulators) plus forward_fp64's own error
    (the same running bound at float64 precision): together they bound |kernel - forward_fp64|."""
    ob, lb = bounds.running_forward_bound(q, k, v, precision=bounds.precision_for(q.dtype), **opts)
    rb, rl = bounds.running_forward_bound(q, k, v, precision=bounds.precision_for(torch.float64, accumulator="same"),
                                          **opts)
    return ob + rb, lb + rl


def assert_matches_fp64(o, lse, q, k, v, **opts):
    ro, rl = reference.forward_fp64(q, k, v, **opts)
    ob, lb = kernel_bound(q, k, v, **opts)
    assert_within("O", o, ro, ob)
    if lse is not None:
        assert_within("LSE", lse, rl, lb)


def assert_bitwise(name, got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, f"{name}: {got.shape}/{got.dtype} vs {want.shape}/{want.dtype}"
    same = (got == want) | (torch.isnan(got) & torch.isnan(want))
    if not bool(same.all()):
        idx = [tuple(i.tolist()) for i in (~same).nonzero()[:5]]
        raise AssertionError(f"{name}: {int((~same).sum())} element(s) differ bitwise from the reference run; "
                             f"first at {idx}: {[got[i].item() for i in idx]} vs {[want[i].item() for i in idx]}")


# ============================================================================ verdicts
#: (input class, API, documented behaviour, test id): rendered into docs/validation.md.
VERDICTS: list = []
#: verdict test id -> GAP reason (xfail strict)
GAPS: dict = {}


def verdict(cls, api, behaviour, test_id):
    VERDICTS.append((cls, api, behaviour, test_id))


def gap(test_id, reason):
    GAPS[test_id] = reason
    return pytest.mark.xfail(strict=True, reason=reason)


# ---------------------------------------------------------------------------- strides
def _strided(kind):
    """(q, k, v) views of an odd layout, all with E = 16, Lq = 3, Lk = 5."""
    if kind == "noncontiguous-last-dim":
        return T(1, 2, 3, 32)[..., ::2], T(1, 2, 5, 32, seed=1)[..., ::2], T(1, 2, 5, 32, seed=2)[..., ::2]
    if kind == "expanded-zero-stride":  # one key/value row broadcast over heads and keys
        return T(1, 2, 3, 16), T(1, 1, 1, 16, seed=1).expand(1, 2, 5, 16), T(1, 1, 5, 16, seed=2).expand(1, 2, 5, 16)
    if kind == "zero-stride-last-dim":
        return T(1, 2, 3, 1).expand(1, 2, 3, 16), T(1, 2, 5, 16, seed=1), T(1, 2, 5, 1, seed=2).expand(1, 2, 5, 16)
    if kind == "transposed-views":
        return (T(1, 3, 2, 16).transpose(1, 2), T(1, 5, 2, 16, seed=1).transpose(1, 2),
                T(1, 2, 16, 5, seed=2).transpose(2, 3))
    if kind == "storage-offset-slices":
        return T(2, 3, 6, 16)[1:, 1:, 2:5], T(2, 3, 7, 16, seed=1)[1:, :2, 1:6], T(2, 3, 7, 16, seed=2)[:1, 1:, 2:]
    raise KeyError(kind)


STRIDES = ("noncontiguous-last-dim", "expanded-zero-stride", "zero-stride-last-dim", "transposed-views",
           "storage-offset-slices")
verdict("bad strides", KA, "handled: bitwise equal to the contiguous copy, within the proofs bound of forward_fp64",
        "test_verdict_strides_attention[*]")


@pytest.mark.parametrize("kind", STRIDES)
def test_verdict_strides_attention(kind):
    q, k, v = _strided(kind)
    o, lse = kernels.attention(q, k, v, return_lse=True, causal="bottom_right")
    oc, lc = kernels.attention(q.contiguous(), k.contiguous(), v.contiguous(), return_lse=True, causal="bottom_right")
    assert_bitwise("O", o, oc)
    assert_bitwise("LSE", lse, lc)
    assert_matches_fp64(o, lse, q, k, v, causal="bottom_right")


verdict("bad strides", KA + " (backward)", "handled: gradients bitwise equal to those of the contiguous copy",
        "test_verdict_strides_attention_backward")


def test_verdict_strides_attention_backward():
    views = [x.detach().requires_grad_() for x in (T(1, 3, 2, 16).transpose(1, 2), T(1, 2, 5, 32, seed=1)[..., ::2],
                                                   T(1, 2, 16, 5, seed=2).transpose(2, 3))]
    conts = [x.detach().contiguous().requires_grad_() for x in views]
    do = T(1, 2, 3, 16, seed=3)
    kernels.attention(*views).backward(do)
    kernels.attention(*conts).backward(do)
    for n, a, b in zip(("dq", "dk", "dv"), views, conts):
        assert_bitwise(n, a.grad, b.grad)


verdict("bad strides", KS + ", " + KD, "handled: bitwise equal to the contiguous copy", "test_verdict_strides_sdpa_decode")


def test_verdict_strides_sdpa_decode():
    q, k, v = _strided("transposed-views")
    assert_bitwise("sdpa O", kernels.sdpa(q, k, v), kernels.sdpa(q.contiguous(), k.contiguous(), v.contiguous()))
    qd, kc, vc = T(2, 1, 2, 16).transpose(1, 2), T(2, 8, 2, 16, seed=1).transpose(1, 2), T(2, 2, 8, 32, seed=2)[..., ::2]
    sl = torch.tensor([8, 5], dtype=torch.int32)
    assert_bitwise("decode O", kernels.decode(qd, kc, vc, seqlens=sl),
                   kernels.decode(qd.contiguous(), kc.contiguous(), vc.contiguous(), seqlens=sl))


verdict("bad strides", "reference.forward_fp64", "handled: exact conversion, equal to the contiguous copy",
        "test_verdict_strides_reference[*]")


@pytest.mark.parametrize("kind", STRIDES)
def test_verdict_strides_reference(kind):
    q, k, v = _strided(kind)
    o, lse = reference.forward_fp64(q, k, v)
    oc, lc = reference.forward_fp64(q.contiguous(), k.contiguous(), v.contiguous())
    np.testing.assert_array_equal(o, oc)
    np.testing.assert_array_equal(lse, lc)


# ---------------------------------------------------------------------------- empty tensors, L = 0
EMPTY = {  # name -> (q, k, v) shapes; H = 0 needs Hkv >= 1 (Hkv = 0 is refused: head counts)
    "B=0": ((0, 2, 3, 16), (0, 2, 5, 16), (0, 2, 5, 16)),
    "H=0": ((1, 0, 3, 16), (1, 1, 5, 16), (1, 1, 5, 16)),
    "Lq=0": ((1, 2, 0, 16), (1, 2, 5, 16), (1, 2, 5, 16)),
    "Lq=Lk=0": ((1, 2, 0, 16), (1, 2, 0, 16), (1, 2, 0, 16)),
}
verdict("empty tensors (B = 0, H = 0), Lq = 0", KA + ", " + KS,
        "empty output of shape (B, H, Lq, Ev) (and LSE (B, H, Lq)); backward gives empty/zero grads",
        "test_verdict_empty_attention_sdpa[*]")


@pytest.mark.parametrize("case", list(EMPTY))
def test_verdict_empty_attention_sdpa(case):
    sq, sk, sv = EMPTY[case]
    q, k, v = (T(*s).requires_grad_() for s in (sq, sk, sv))
    o, lse = kernels.attention(q, k, v, return_lse=True)
    assert tuple(o.shape) == (sq[0], sq[1], sq[2], sv[3]) and tuple(lse.shape) == sq[:3]
    o.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and not bool(k.grad.any())
    so = kernels.sdpa(q.detach(), k.detach(), v.detach(), enable_gqa=sq[1] != sk[1])
    assert tuple(so.shape) == tuple(o.shape)


verdict("empty tensors (B = 0), Lq = 0", KD, "empty output of shape (B, H, Lq, Ev)", "test_verdict_empty_decode")


def test_verdict_empty_decode():
    assert tuple(dec(T(0, 2, 1, 16), T(0, 2, 8, 16), T(0, 2, 8, 16)).shape) == (0, 2, 1, 16)
    assert tuple(paged(q=T(0, 2, 1, 16), block_table=torch.empty(0, 2, dtype=torch.int32)).shape) == (0, 2, 1, 16)
    o, lse = dec(q=T(2, 2, 0, 16), return_lse=True)
    assert tuple(o.shape) == (2, 2, 0, 16) and tuple(lse.shape) == (2, 2, 0)


verdict("Lk = 0", KA, "every row is empty: o = 0 exactly, lse = -inf; gradients 0 (spec: empty rows)",
        "test_verdict_lk_zero_attention")


def test_verdict_lk_zero_attention():
    q, k, v = (x.requires_grad_() for x in qkv(lk=0))
    o, lse = kernels.attention(q, k, v, return_lse=True)
    assert bool((o == 0).all()) and bool(torch.isneginf(lse).all())
    (o.sum() + lse.masked_fill(torch.isneginf(lse), 0).sum()).backward()
    assert bool((q.grad == 0).all()) and tuple(k.grad.shape) == tuple(k.shape)


verdict("Lk = 0", KS, "o = 0 exactly (torch's math path gives NaN; flashproof follows spec)", "test_verdict_lk_zero_sdpa")


def test_verdict_lk_zero_sdpa():
    assert bool((kernels.sdpa(*qkv(lk=0)) == 0).all())


verdict("Lk = 0, seqlens = 0, no pages", KD, "o = 0 exactly, lse = -inf", "test_verdict_lk_zero_decode")


def test_verdict_lk_zero_decode():
    outs = [dec(k=T(2, 2, 0, 16), v=T(2, 2, 0, 16), return_lse=True),
            dec(seqlens=torch.zeros(2, dtype=torch.int32), return_lse=True),
            dec(seqlens=torch.zeros(2, dtype=torch.int32), num_splits=3, return_lse=True),
            paged(block_table=torch.empty(2, 0, dtype=torch.int32), return_lse=True)]
    for i, (o, lse) in enumerate(outs):
        assert bool((o == 0).all()) and bool(torch.isneginf(lse).all()), f"case {i}: o={o}, lse={lse}"


verdict("empty tensors, L = 0", "reference.forward_*",
        "B/H/Lq = 0: empty outputs; Lk = 0: o = 0, lse = -inf (certified: radius 0); backward: dq = 0",
        "test_verdict_empty_reference[*]")


@pytest.mark.parametrize("fn", FORWARDS + ("backward_fp64", "backward_mp"))
def test_verdict_empty_reference(fn):
    for case, (sq, sk, sv) in EMPTY.items():
        q, k, v = T(*sq[:3], 4), T(*sk[:3], 4), T(*sv[:3], 4)
        out = REF_FNS[fn](q, k, v)
        if fn.startswith("forward"):
            o = out.o_mid if fn == "forward_certified" else out[0]
            assert tuple(o.shape) == (*sq[:3], 4), case
    out = REF_FNS[fn](*rq(k=T(1, 2, 0, 4), v=T(1, 2, 0, 4)))
    if fn == "forward_certified":
        assert (out.o_mid == 0).all() and np.isneginf(out.lse_mid).all() and (out.o_rad == 0).all()
        assert (out.lse_rad == 0).all()
    elif fn.startswith("forward"):
        o, lse = (_np(x) for x in out)
        assert (o == 0).all() and np.isneginf(lse).all()
    else:
        assert (out[0] == 0).all() and out[1].shape == (1, 2, 0, 4)


# ---------------------------------------------------------------------------- head dims
verdict("E = 1 and odd E/Ev", KA, "supported (padded in-kernel, scale from the real E): within the bound of forward_fp64",
        "test_verdict_small_head_dims[*]")


@pytest.mark.parametrize("e,ev", [(1, 1), (3, 5), (255, 7)])
def test_verdict_small_head_dims(e, ev):
    q, k, v = qkv(e=e, ev=ev)
    o, lse = kernels.attention(q, k, v, return_lse=True)
    assert_matches_fp64(o, lse, q, k, v)


verdict("E = 1, 300, 512", "reference.forward_fp64", "supported (no limit on E): within the float64 bound of "
        "forward_certified", "test_verdict_reference_any_head_dim[*]")


@pytest.mark.parametrize("e", [1, 300, 512])
def test_verdict_reference_any_head_dim(e):
    q, k, v = T(1, 1, 2, e), T(1, 1, 3, e, seed=1), T(1, 1, 3, 4, seed=2)
    o, lse = reference.forward_fp64(q, k, v)
    c = reference.forward_certified(q, k, v)
    rb, rl = bounds.running_forward_bound(q, k, v, precision=bounds.precision_for(torch.float64, accumulator="same"))
    assert_within("O", o, c.o_mid, rb + c.o_rad)
    assert_within("LSE", lse, c.lse_mid, rl + c.lse_rad)


# ---------------------------------------------------------------------------- NaN / inf
verdict("NaN/inf inputs", KA, "spec NaN policy: NaN in q_i -> exactly row i NaN (o and lse), other rows bitwise "
        "unchanged; inf/NaN in a masked key -> bitwise equal to the clean run; NaN in an attended v -> NaN pattern "
        "of forward_fp64", "test_verdict_nan_policy_attention")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_verdict_nan_policy_attention():
    q, k, v = qkv()
    o0, l0 = kernels.attention(q, k, v, return_lse=True, causal=True)
    qn = q.clone()
    qn[0, 1, 2, 5] = NAN
    o, lse = kernels.attention(qn, k, v, return_lse=True, causal=True)
    row = torch.zeros_like(lse, dtype=torch.bool)
    row[0, 1, 2] = True
    assert bool(torch.isnan(lse[row]).all()) and bool(torch.isnan(o[row]).all())
    assert_bitwise("O (other rows)", o[~row], o0[~row])
    assert_bitwise("LSE (other rows)", lse[~row], l0[~row])
    kn, vn = k.clone(), v.clone()
    kn[0, :, 4, 0], vn[0, :, 3:, :] = INF, NAN  # keys 3, 4 lie beyond the causal diagonal of Lq = 3
    o, lse = kernels.attention(q, kn, vn, return_lse=True, causal=True)
    assert_bitwise("O (garbage in masked keys)", o, o0)
    assert_bitwise("LSE (garbage in masked keys)", lse, l0)
    vn = v.clone()
    vn[0, 0, 1, 2] = NAN  # key 1 is attended by rows 1, 2 of head 0
    o, _ = kernels.attention(q, k, vn, return_lse=True, causal=True)
    ro, _ = reference.forward_fp64(q, k, vn, causal=True)
    np.testing.assert_array_equal(torch.isnan(o).numpy(), np.isnan(ro))


verdict("NaN/inf inputs", KS, "spec NaN policy: NaN/inf in keys/values masked by attn_mask (bool False or additive "
        "-inf) never reaches the output (bitwise equal to the clean run)", "test_verdict_nan_policy_sdpa_values")
verdict("NaN/inf inputs", KS, "as above, for garbage in masked KEYS", "test_verdict_nan_policy_sdpa_keys[*]")


def _sdpa_garbage(mask_kind, key=None, value=None):
    q, k, v = qkv()
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 1] = False
    if mask_kind == "additive":
        mask = torch.zeros(3, 5).masked_fill(~mask, -INF)
    kn, vn = k.clone(), v.clone()
    if key is not None:
        kn[:, :, 1] = key
    if value is not None:
        vn[:, :, 1] = value
    assert_bitwise("sdpa O", kernels.sdpa(q, kn, vn, attn_mask=mask), kernels.sdpa(q, k, v, attn_mask=mask))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_verdict_nan_policy_sdpa_values():
    for mask_kind in ("bool", "additive"):
        _sdpa_garbage(mask_kind, value=NAN)
        _sdpa_garbage(mask_kind, value=INF)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("mask_kind,key", [("bool", NAN), ("bool", INF), ("additive", NAN)],
                         ids=["bool-nan", "bool-inf", "additive-nan"])
def test_verdict_nan_policy_sdpa_keys(mask_kind, key):
    _sdpa_garbage(mask_kind, key=key)


verdict("NaN/inf inputs", KD, "spec NaN policy: NaN in the cache beyond seqlens or in pages no sequence uses never "
        "reaches the output (bitwise equal to the clean run)", "test_verdict_nan_policy_decode")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_verdict_nan_policy_decode():
    sl = torch.tensor([6, 3], dtype=torch.int32)
    kc, vc = T(2, 2, 8, 16, seed=1), T(2, 2, 8, 16, seed=2)
    kg, vg = kc.clone(), vc.clone()
    kg[0, :, 6:], vg[1, :, 3:] = NAN, NAN
    assert_bitwise("decode O", dec(k=kg, v=vg, seqlens=sl), dec(k=kc, v=vc, seqlens=sl))
    pk, pv = T(5, 2, 4, 16, seed=1), T(5, 2, 4, 16, seed=2)
    pkg, pvg = pk.clone(), pv.clone()
    pkg[4], pvg[4] = NAN, NAN  # page 4 is in no sequence's table
    assert_bitwise("paged O", paged(k=pkg, v=pvg), paged(k=pk, v=pv))


verdict("NaN/inf inputs", "reference.forward_*", "spec NaN policy: NaN in q_i -> row i NaN in o and lse "
        "(certified: radius inf there), others finite; NaN in a causally masked key -> equal to the clean run. "
        "forward_naive (torch math baseline) lets NaN in a masked v leak, as documented in its docstring",
        "test_verdict_nan_policy_reference[*]")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("fn", FORWARDS)
def test_verdict_nan_policy_reference(fn):
    def run(q, k, v, **kw):
        out = REF_FNS[fn](q, k, v, **kw)
        return (out.o_mid, out.lse_mid, out.o_rad) if fn == "forward_certified" else (_np(out[0]), _np(out[1]), None)

    q, k, v = rq()
    qn = q.clone()
    qn[0, 0, 1, 2] = NAN
    o, lse, rad = run(qn, k, v)
    nan_rows = np.zeros(lse.shape, bool)
    nan_rows[0, 0, 1] = True
    assert np.isnan(lse[nan_rows]).all() and np.isnan(o[nan_rows]).all()
    assert np.isfinite(o[~nan_rows]).all() and np.isfinite(lse[~nan_rows]).all()
    if rad is not None:
        assert np.isinf(rad[nan_rows]).all() and np.isfinite(rad[~nan_rows]).all()
    kn = k.clone()
    kn[0, :, 4] = NAN  # key 4 lies beyond the causal diagonal of every row (Lq = 3)
    np.testing.assert_array_equal(run(q, kn, v, causal=True)[0], run(q, k, v, causal=True)[0])
    vn = v.clone()
    vn[0, :, 4] = NAN
    leaked = np.isnan(run(q, k, vn, causal=True)[0]).any()
    assert leaked == (fn == "forward_naive"), f"{fn}: NaN in a masked v leaked={leaked}"


# ---------------------------------------------------------------------------- accepted odd values
verdict("bad causal / softcap (accepted spellings)", KA + ", " + KD, "causal=None == False; softcap 0 and +inf == None "
        "(spec: no softcap); bitwise equal", "test_verdict_accepted_spellings")


def test_verdict_accepted_spellings():
    q, k, v = qkv()
    base = kernels.attention(q, k, v)
    assert_bitwise("causal=None", kernels.attention(q, k, v, causal=None), base)
    for c in (0, INF):
        assert_bitwise(f"softcap={c}", kernels.attention(q, k, v, softcap=c), base)
        assert_bitwise(f"decode softcap={c}", dec(softcap=c), dec())


verdict("bad causal (causal=True with alignment='bottom_right')", KA + ", reference",
        "accepted: the alignment argument wins (bottom-right causal), identically in kernel and reference "
        "(spec.make_mask); only causal='top_left' vs alignment='bottom_right' is a contradiction",
        "test_verdict_causal_true_with_alignment")


def test_verdict_causal_true_with_alignment():
    q, k, v = qkv()
    assert_bitwise("O", kernels.attention(q, k, v, causal=True, alignment="bottom_right"),
                   kernels.attention(q, k, v, causal="bottom_right"))
    np.testing.assert_array_equal(reference.forward_fp64(q, k, v, causal=True, alignment="bottom_right")[0],
                                  reference.forward_fp64(q, k, v, causal="bottom_right")[0])


verdict("mixed dtypes, float64", "reference.forward_fp64/mp/certified/tiled, backward_*",
        "accepted: every input converted exactly to float64 (equal to the all-float64 call); forward_naive refuses "
        "mixed dtypes (error table)", "test_verdict_reference_mixed_dtypes[*]")


@pytest.mark.parametrize("fn", [f for f in REF_FNS if f != "forward_naive"])
def test_verdict_reference_mixed_dtypes(fn):
    q, k, v = rq()
    mixed = (q.half(), k.to(torch.bfloat16), v)
    a = REF_FNS[fn](*mixed)
    b = REF_FNS[fn](*(x.double() for x in mixed))
    flat = (lambda c: (c.o_mid, c.lse_mid, c.o_rad)) if fn == "forward_certified" else (lambda t: t)
    for x, y in zip(flat(a), flat(b)):
        np.testing.assert_array_equal(_np(x), _np(y))


verdict("decode: negative page id in an unused slot", KD, "accepted: slots past a sequence's length are never read "
        "(bitwise equal to a valid id there)", "test_verdict_decode_unused_slot_ignored")


def test_verdict_decode_unused_slot_ignored():
    sl = torch.tensor([3, 8], dtype=torch.int32)
    assert_bitwise("O", paged(block_table=bt([0, -1], [2, 3]), seqlens=sl),
                   paged(block_table=bt([0, 1], [2, 3]), seqlens=sl))


# ---------------------------------------------------------------------------- gaps found in the kernels
verdict("bad scale (finite but beyond fp32)", f"{KA}, {KS}, {KD}", "either ValueError naming scale, or the "
        "forward_fp64 answer (no NaN)", "test_verdict_scale_beyond_fp32[*]")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("api", ["attention", pytest.param("sdpa"), "decode"])
def test_verdict_scale_beyond_fp32(api):
    q, k, v = qkv(h=1, hkv=1, lq=1 if api == "decode" else 3)
    call = {"attention": lambda: kernels.attention(q, k, v, scale=1e300),
            "sdpa": lambda: kernels.sdpa(q, k, v, scale=1e300),
            "decode": lambda: kernels.decode(q, k, v, scale=1e300)}[api]
    try:
        o = call()
    except ValueError as exc:
        assert "scale" in str(exc), f"refused, but the message does not name scale: {exc}"
        return
    ro, _ = reference.forward_fp64(q, k, v, scale=1e300, causal="bottom_right" if api == "decode" else False)
    assert not bool(torch.isnan(o).any()), f"{api}(scale=1e300): {int(torch.isnan(o).sum())} NaN element(s)"
    # at this scale the softmax is one-hot (ties impossible for randn): o is the max key's v, rounded once
    np.testing.assert_allclose(_np(o), ro, rtol=2.0 ** -23, atol=0)


verdict("bad tile config (numpy integer)", KA, "either accepted like the Python int (bitwise equal) or TypeError "
        "naming block_m", "test_verdict_tile_numpy_int")


def test_verdict_tile_numpy_int():
    q, k, v = qkv()
    try:
        o = kernels.attention(q, k, v, block_m=np.int64(32))
    except TypeError as exc:
        assert "block_m" in str(exc)
        return
    assert_bitwise("O", o, kernels.attention(q, k, v, block_m=32))


# ============================================================================ CLI and plugin
_LIGHT = '''\
"""Bad targets without a torch import (cheap to load)."""
NOT_CALLABLE = 42


def factory_raises():
    raise RuntimeError("fpv factory boom")


def factory_returns_int():
    return 3


def cuda_only():
    from flashproof.properties.targets import Target

    def fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        raise AssertionError("never called")
    return Target(name="cuda_only", sdpa=fn, devices=("cuda",))
'''
_BROKEN = 'raise RuntimeError("fpv_broken fails at import on purpose")\n'
_TARGETS = '''\
"""SDPA-signature targets that misbehave in one way each."""
import threading
import time

import torch
import torch.nn.functional as F


def _sdpa(q, k, v, attn_mask, is_causal, scale, enable_gqa):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


def raising(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    raise RuntimeError("fpv boom from the target")


def wrong_shape(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa)[..., :1]


def wrong_dtype(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa).to(torch.float64)


def nan_out(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return torch.full_like(_sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa), float("nan"))


def returns_none(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return None


def returns_numpy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa).numpy()


def hangs(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if threading.current_thread().name.startswith("flashproof-example:"):  # in the suite, not load_target's probe
        time.sleep(10 ** 6)
    return _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa)
'''
TARGET_MODULES = {"fpv_light.py": _LIGHT, "fpv_broken.py": _BROKEN, "fpv_targets.py": _TARGETS}

SEL = ["--select", "output_within_error_bound", "--fail-fast", "--quiet"]
SDPA = "torch.nn.functional:scaled_dot_product_attention"
AUDIT_TWO = ["audit", "--no-defaults", "--dtype", "float32", "--out", "{tmp}/audit-out", "fpv_targets:raising",
             "fpv_targets:wrong_dtype"]
USAGE_ERROR = 4  # pytest.ExitCode.USAGE_ERROR


@dataclass(frozen=True)
class Cli:
    """One CLI/plugin row: ``argv`` ({tmp} = a scratch folder holding the target modules)."""

    id: str
    cls: str
    argv: tuple
    rc: int
    fragment: str
    one_line: bool = False
    gap: str | None = None
    plugin: bool = False
    #: CPU seconds, roughly (bigger runs start first)
    cost: float = 1.0

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=self.gap)] if self.gap else []
        return pytest.param(self, id=self.id, marks=marks)

    @property
    def key(self):
        """Rows with the same command share one run."""
        return (self.plugin, self.argv)

    @property
    def api(self):
        return "pytest plugin" if self.plugin else f"flashproof {self.argv[0]}" if self.argv else "flashproof"

    def command(self, tmp="{tmp}"):
        if self.plugin:
            return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flashproof.properties",
                    *(a.replace("{tmp}", tmp) for a in self.argv)]
        return [str(FLASHPROOF), *(a.replace("{tmp}", tmp) for a in self.argv)]

    def shown(self):
        if self.plugin:
            return "pytest --pyargs flashproof.properties " + " ".join(self.argv)
        return " ".join(["flashproof", *(a.replace("{tmp}/", "").replace("{tmp}", "<dir>") for a in self.argv)])


def C(id, cls, argv, rc, fragment, **kw):
    return Cli(id, cls, tuple(argv), rc, fragment, **kw)


CLI = [
    C("cli-no-command", "usage", [], 2, "the following arguments are required: COMMAND", cost=0.1),
    C("cli-unknown-command", "usage", ["frobnicate"], 2, "invalid choice: 'frobnicate'", cost=0.1),
    C("cli-help", "usage", ["--help"], 0, "prove", cost=0.1),
    C("check-help", "usage", ["check", "--help"], 0, "module:attr", cost=0.3),
    C("check-bad-profile", "usage", ["check", "--profile", "bogus", "x:y"], 2, "invalid choice: 'bogus'", cost=0.3),
    C("check-select-matches-nothing", "usage", ["check", SDPA, "--select", "no_such_property"], 2,
      "select: 'no_such_property' matches no property", one_line=True, cost=0.5),
    C("check-target-without-colon", "target string", ["check", "nocolon"], 2,
      "target must be given as 'module:attr'", one_line=True, cost=0.5),
    C("check-target-too-many-colons", "target string", ["check", "a:b:c"], 2,
      "target must be given as 'module:attr'", one_line=True, cost=0.5),
    C("check-target-empty-attr", "target string", ["check", "os:"], 2, "target must be given as 'module:attr', got 'os:'",
      one_line=True, cost=0.5),
    C("check-module-not-found", "target import", ["check", "fpv_no_such_module:fn"], 2,
      "cannot import module 'fpv_no_such_module': ModuleNotFoundError", one_line=True, cost=0.5),
    C("check-module-raises-on-import", "target import", ["check", "fpv_broken:fn"], 2,
      "cannot import module 'fpv_broken': RuntimeError: fpv_broken fails at import on purpose", one_line=True,
      cost=0.5),
    C("check-attribute-missing", "target attribute", ["check", "fpv_light:no_such_attr"], 2,
      "module 'fpv_light' has no attribute 'no_such_attr'", one_line=True, cost=0.5),
    C("check-not-callable", "target not callable", ["check", "fpv_light:NOT_CALLABLE"], 2,
      "is a int, not a Target or a callable", one_line=True, cost=0.5),
    C("check-factory-raises", "target raises", ["check", "fpv_light:factory_raises"], 2,
      "the factory raised RuntimeError: fpv factory boom", one_line=True, cost=0.5),
    C("check-factory-returns-non-target", "target not callable", ["check", "fpv_light:factory_returns_int"], 2,
      "a zero-argument factory must return a Target, got int", one_line=True, cost=0.5),
    C("check-unknown-adapter", "target adapter", ["check", SDPA, "--adapter", "bogus"], 2,
      "unknown adapter 'bogus'; known adapters: flash_attn, fla, blhd, sdpa", one_line=True, cost=0.5),
    C("check-adapter-without-target", "target adapter", ["check", "--adapter", "flash_attn"], 2,
      "an adapter ('flash_attn') needs a target module:attr to apply to", one_line=True, cost=0.5),
    C("check-target-device-unavailable", "device mismatch", ["check", "fpv_light:cuda_only"], 2,
      "declares devices ('cuda',), none available here", one_line=True, cost=2),
    C("check-target-raises", "target raises", ["check", "fpv_targets:raising", *SEL], 1,
      "raised RuntimeError on a valid input: fpv boom from the target", cost=2.5),
    C("check-wrong-shape", "target output shape", ["check", "fpv_targets:wrong_shape", *SEL], 1,
      "O has shape (", cost=2.5),
    C("check-wrong-dtype", "target output dtype", ["check", "fpv_targets:wrong_dtype", *SEL], 1,
      "O has dtype torch.float64, expected the input dtype", cost=2.5),
    C("check-nan-output", "target output NaN", ["check", "fpv_targets:nan_out", *SEL], 1,
      "O violates the running error bound", cost=2.5),
    C("check-returns-none", "target output type", ["check", "fpv_targets:returns_none", *SEL], 1,
      "torch.Tensor", cost=2.5),
    C("check-returns-numpy", "target output type", ["check", "fpv_targets:returns_numpy", *SEL], 1,
      "torch.Tensor", cost=2.5),
    C("check-target-hangs", "target hangs", ["check", "fpv_targets:hangs", "--select", "output_within_error_bound",
                                             "--example-timeout", "1", "--quiet"], 1,
      "did not finish within the per-example time limit of 1 s", cost=3),
    C("check-example-timeout-negative", "usage", ["check", SDPA, "--example-timeout", "-1"], 2,
      "--example-timeout must be >= 0 seconds", cost=0.3),
    C("check-example-timeout-not-a-number", "usage", ["check", SDPA, "--example-timeout", "soon"], 2,
      "--example-timeout: not a number of seconds: 'soon'", cost=0.3),
    C("check-state-dir-is-a-file", "output path", ["check", SDPA, "--select", "invalid_window_rejected", "--state-dir",
                                                   "{tmp}/fpv_light.py"], 2, "fpv_light.py", one_line=True, cost=1),
    C("check-json-unwritable", "output path", ["check", SDPA, "--select", "invalid_window_rejected", "--quiet",
                                               "--json", "{tmp}/fpv_light.py/out.json"], 2, "out.json",
      one_line=True, cost=2),
    C("audit-target-without-colon", "target string", ["audit", "--no-defaults", "nocolon"], 2,
      "target must be given as 'module:attr'", one_line=True, cost=2),
    C("audit-no-cuda", "device mismatch", ["audit", "--device", "cuda"], 2, "--device cuda but no CUDA GPU is available",
      one_line=True, cost=2),
    C("audit-bad-dtype", "wrong dtype", ["audit", "--dtype", "float64"], 2, "invalid choice: 'float64'", cost=0.3),
    # one audit run with both targets (the audit's CPU goes into the shared fp64 references and bounds)
    C("audit-target-raises", "target raises", AUDIT_TWO, 1, "fpv_targets:raising", cost=8),
    C("audit-wrong-dtype", "target output dtype", AUDIT_TWO, 1, "dtype", cost=8),
    C("bench-without-gpu", "device mismatch", ["bench"], 2, "needs a CUDA GPU; none is available here",
      one_line=True, cost=2),
    C("prove-unknown-theorem", "usage", ["prove", "--only", "bogus"], 2, "invalid choice: 'bogus'", cost=0.5),
    C("prove-out-is-a-directory", "output path", ["prove", "--only", "rope", "--out", "{tmp}"], 2, "{tmp}",
      one_line=True, cost=2.5),
]

PLUGIN = [
    C("plugin-target-without-colon", "target string", ["--flashproof-target=nocolon", "-k", "lse_is_natural_log"],
      USAGE_ERROR, "target must be given as 'module:attr'", plugin=True, cost=1.5),
    C("plugin-not-callable", "target not callable", ["--flashproof-target=fpv_light:NOT_CALLABLE", "-k",
                                                     "lse_is_natural_log"], USAGE_ERROR,
      "not a Target or a callable", plugin=True, cost=1.5),
    C("plugin-unknown-adapter", "target adapter", [f"--flashproof-target={SDPA}", "--flashproof-adapter=bogus", "-k",
                                                   "lse_is_natural_log"], USAGE_ERROR,
      "unknown adapter 'bogus'; known adapters: flash_attn, fla, blhd, sdpa", plugin=True, cost=1.5),
    C("plugin-bad-example-timeout", "usage", ["--flashproof-example-timeout=-2", "-k", "lse_is_natural_log"],
      USAGE_ERROR, "--flashproof-example-timeout must be >= 0 seconds", plugin=True, cost=1.5),
    C("plugin-target-raises", "target raises", ["--flashproof-target=fpv_targets:raising", "-k",
                                                "test_output_within_error_bound"], 1,
      "raised RuntimeError on a valid input: fpv boom from the target", plugin=True, cost=3.5),
]
ALL_RUNS = CLI + PLUGIN

_POOL: dict = {}


def _env(tmp):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([tmp] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def _execute(case: Cli, tmp: str):
    return subprocess.run(case.command(tmp), cwd=tmp, env=_env(tmp), capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module", autouse=True)
def _cli_runs(request, tmp_path_factory):
    """Start every selected CLI/plugin subprocess at once (biggest first) so they overlap with the rest."""
    wanted = {}
    for item in request.session.items:
        cs = getattr(item, "callspec", None)
        case = cs.params.get("case") if cs else None
        if isinstance(case, Cli) and item.module is request.module:
            wanted[case.key] = case
    if not wanted:
        yield
        return
    tmp = tmp_path_factory.mktemp("fpv")
    for name, text in TARGET_MODULES.items():
        (tmp / name).write_text(text)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=3)
    _POOL.update(tmp=str(tmp), futures={})
    if FLASHPROOF.exists():
        for case in sorted(wanted.values(), key=lambda c: -c.cost):
            _POOL["futures"][case.key] = pool.submit(_execute, case, str(tmp))
    yield
    pool.shutdown(wait=True, cancel_futures=True)
    _POOL.clear()


def _result(case: Cli):
    if not FLASHPROOF.exists():
        pytest.skip(f"no flashproof executable beside {sys.executable} (install the package: make test)")
    fut = _POOL.get("futures", {}).get(case.key)
    return fut.result() if fut is not None else _execute(case, _POOL["tmp"])


def _check_cli(case: Cli):
    r = _result(case)
    out = r.stdout + r.stderr
    frag = case.fragment.replace("{tmp}", _POOL["tmp"])
    shown = f"$ {case.shown()}\nexit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert r.returncode == case.rc, f"expected exit {case.rc}\n{shown}"
    assert frag in out, f"expected {frag!r} in the output\n{shown}"
    assert "Traceback" not in out, f"a traceback was printed\n{shown}"
    if case.one_line:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and not r.stdout.strip(), f"expected a one-line message on stderr\n{shown}"
    if case.plugin and case.rc == USAGE_ERROR:
        assert "def load_target" not in out, f"the plugin printed flashproof's source as a traceback\n{shown}"


@pytest.mark.parametrize("case", [c.param() for c in CLI])
def test_cli(case: Cli):
    _check_cli(case)


@pytest.mark.parametrize("case", [c.param() for c in PLUGIN])
def test_plugin(case: Cli):
    _check_cli(case)


# ============================================================================ the document
_INTRO = """\
# Input validation

Every class of bad input to flashproof's public entry points, and what happens: a specific
exception whose message names the argument at fault, an exit code with a one-line message, or a
documented verdict checked against `flashproof.reference`. Each row is a test in
`tests/test_validation.py` (`-k <test id>` runs it). Rows marked **GAP** are known gaps: they run as
`xfail(strict=True)` and fail loudly once fixed (then drop the row's `gap=`, or the verdict test's
`@gap(...)` line, and regenerate).

This file is generated: `.venv/bin/python tests/test_validation.py --write-doc`
(`test_docs_table_is_current` fails when it is stale).

Conventions
- Exceptions: `TypeError` for a wrong type (including bool where an int is meant), `ValueError` for a
  wrong value or shape, `NotImplementedError` for a feature the kernels do not offer (dropout,
  gradients w.r.t. attn_mask). Every check runs before any kernel launch or heavy work.
- CLI exit codes: 0 ok, 1 the target violated the spec or its bound, 2 flashproof could not run
  (bad target string, import error, missing attribute, not callable, no device, usage error).
  A target that raises, returns the wrong shape/dtype/type or NaN on a valid input, or whose example
  runs past `--example-timeout`, is a violation (exit 1); `check` interrupted by Ctrl-C exits 130
  (docs/robustness.md). The pytest plugin should turn a target that cannot be loaded into a usage
  error (exit 4).
- NaN policy (spec/README.md): NaN/inf in an allowed q, k or v propagates by IEEE rules to the rows
  that attend it and only those; masked or padded positions never influence anything.
- Meta tensors stand in for a second device on this CPU-only machine. Under the Triton
  interpreter the kernels take CPU tensors only; compiled, CUDA tensors only.
- CLI target modules used by the tests: `fpv_light` (no torch: `NOT_CALLABLE = 42`, factories that
  raise / return an int / declare only CUDA), `fpv_broken` (raises at import), `fpv_targets`
  (SDPA-signature callables: `raising`, `wrong_shape`, `wrong_dtype`, `nan_out`, `returns_none`,
  `returns_numpy`, `hangs` (sleeps inside the suite's examples)).
"""


#: the order of input classes in the tables (the reliability issue's order)
CLASS_ORDER = ["wrong rank", "mismatched shapes", "wrong dtype", "mixed dtypes", "device mismatch", "not a tensor",
               "head counts", "E unsupported", "grid limits", "bad window", "bad causal", "bad scale", "bad softcap",
               "bad tile config", "bad flag", "bad attn_mask", "bad block_table", "bad seqlens", "bad page_size",
               "bad precision", "bad tiling"]


def _cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def _status(g):
    if not g:
        return "ok"
    owner = re.search(r"owner: ([^;]+)$", g)
    return f"**GAP** ({owner.group(1) if owner else '?'}): " + g.split("; owner:")[0].removeprefix("GAP: ")


def render_doc() -> str:
    out = [_INTRO]

    def table(title, head, rows, note=""):
        out.append(f"\n## {title}\n")
        if note:
            out.append(note + "\n")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in rows:
            out.append("| " + " | ".join(_cell(c) for c in r) + " |")

    def exc_name(exc):
        return exc.__name__ if isinstance(exc, type) else " or ".join(e.__name__ for e in exc)

    def order(row):
        return (CLASS_ORDER.index(row[0]) if row[0] in CLASS_ORDER else len(CLASS_ORDER), row[1])

    rows = [(r.cls, r.api, f"{exc_name(r.exc)}: `{r.shown}`", f"test_kernel_errors[{r.id}]", _status(r.gap))
            for r in KERNEL_ERRORS]
    table("Kernel API: errors", ("input class", "API", "behaviour (error type: message fragment)", "test id",
                                 "status"), sorted(rows, key=order))
    every = "all 7 (`<fn>`)"
    rows = [(cls, every, f"{exc_name(exc)}: `{f'/{frag}/' if suffix in _REF_REGEX else frag}`",
             f"test_reference_errors[<fn>-{suffix}]", _status(g))
            for suffix, cls, _, exc, frag, g in _REF_COMMON]
    rows += [(r.cls, r.api, f"{exc_name(r.exc)}: `{r.shown}`", f"test_reference_errors[{r.id}]", _status(r.gap))
             for r in REF_SPECIFIC]
    table("Reference API: errors", ("input class", "API", "behaviour (error type: message fragment)", "test id",
                                    "status"), sorted(rows, key=order),
          note="`all 7`: each of `reference." + "`, `reference.".join(REF_FNS) + "` is tested (`<fn>` in the "
               "test id). Reference entry points also take numpy arrays, any float dtype and any device.")
    table("Documented verdicts (valid but unusual inputs)", ("input class", "API", "behaviour", "test id", "status"),
          [(c, a, b, t, _status(GAPS.get(t))) for c, a, b, t in VERDICTS])
    rows = []
    for c in ALL_RUNS:
        kind = "stderr, one line" if c.one_line else "output"
        frag = c.fragment.replace("{tmp}", "<the --out path>")
        test = ("test_plugin" if c.plugin else "test_cli") + f"[{c.id}]"
        rows.append((c.cls, f"`{c.shown()}`", f"exit {c.rc}; {kind}: `{frag}`; no traceback", test, _status(c.gap)))
    table("CLI and pytest plugin", ("input class", "command", "behaviour", "test id", "status"), rows)
    by_gap: dict = {}
    for test_id, g in ([(f"test_kernel_errors[{r.id}]", r.gap) for r in KERNEL_ERRORS if r.gap]
                       + [(f"test_reference_errors[{r.id}]", r.gap) for r in REFERENCE_ERRORS if r.gap]
                       + [(("test_plugin" if c.plugin else "test_cli") + f"[{c.id}]", c.gap) for c in ALL_RUNS if c.gap]
                       + list(GAPS.items())):
        by_gap.setdefault(g, []).append(test_id)
    out.append(f"\n## Open gaps ({len(by_gap)})\n")
    for g, ids in by_gap.items():
        out.append(f"- {g.removeprefix('GAP: ')} ({', '.join(f'`{i}`' for i in ids)})")
    return "\n".join(out) + "\n"


def test_docs_table_is_current():
    want = render_doc()
    have = DOC.read_text() if DOC.exists() else ""
    assert have == want, (f"{DOC} is stale; regenerate it with: .venv/bin/python tests/test_validation.py "
                          f"--write-doc")


def test_every_verdict_row_names_a_test():
    names = {n for n in globals() if n.startswith("test_")}
    for cls, api, _, test_id in VERDICTS:
        assert test_id.split("[")[0] in names, f"docs row ({cls}, {api}) names a missing test {test_id}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-doc"]:
        DOC.write_text(render_doc())
        print(f"wrote {DOC}")
    else:
        sys.stdout.write(render_doc())

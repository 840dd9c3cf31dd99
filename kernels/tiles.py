"""Tile configurations: which (block_m, block_n, num_warps, num_stages) the kernels accept, and
the defaults. No triton here: the choice is plain arithmetic on shapes and dtypes.

A config is accepted for a given head dim and dtype when its shared-memory estimate fits the
H100's 227 KiB per block. The same rule applies under the interpreter, so a config accepted on
CPU is accepted on the GPU too (and the other way round).
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

__all__ = [
    "TileConfig",
    "TILE_CONFIGS",
    "SPLIT_RANGE",
    "BLOCK_SIZES",
    "SMEM_LIMIT_BYTES",
    "MAX_HEAD_DIM",
    "head_block",
    "check_tile_config",
    "accepts_tile_config",
    "default_forward_config",
    "default_backward_config",
    "backward_config",
    "backward_split",
    "default_decode_block",
    "default_num_splits",
    "decode_num_stages",
]


class TileConfig(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


#: Powers of two allowed for block_m and block_n (tl.dot needs >= 16 on every side).
BLOCK_SIZES = (16, 32, 64, 128, 256)
#: Largest head dim (E and Ev) the kernels take; the tile pads to the next power of two.
MAX_HEAD_DIM = 256
#: H100 (sm_90) opt-in shared memory per block: 227 KiB.
SMEM_LIMIT_BYTES = 227 * 1024
_NUM_WARPS = (1, 2, 4, 8, 16)


def _warps(bm: int, bn: int) -> int:
    return 4 if bm * bn <= 64 * 64 else 8


# Every (block_m, block_n) pair once with a natural warp count, plus the pipelining and warp
# variants the heuristics and the tuning issue use.
TILE_CONFIGS: tuple[TileConfig, ...] = tuple(
    [TileConfig(bm, bn, _warps(bm, bn), 2) for bm in (16, 32, 64, 128) for bn in (16, 32, 64, 128)]
    + [
        TileConfig(16, 16, 1, 1),
        TileConfig(32, 32, 2, 1),
        TileConfig(64, 64, 4, 1),
        TileConfig(64, 64, 4, 3),
        TileConfig(64, 32, 4, 3),
        TileConfig(128, 64, 4, 3),
        TileConfig(128, 64, 8, 3),
        TileConfig(128, 32, 8, 4),
        TileConfig(128, 128, 8, 1),
        TileConfig(256, 64, 8, 2),
        TileConfig(64, 256, 8, 1),
        # the GPU defaults (default_forward_config / default_backward_config) and their fallbacks
        TileConfig(128, 128, 4, 2),
        TileConfig(128, 128, 8, 3),
        TileConfig(128, 64, 8, 1),
        TileConfig(128, 64, 4, 2),
        TileConfig(32, 128, 4, 3),
        TileConfig(32, 64, 8, 2),
    ]
)

#: num_splits values decode accepts (splits beyond the key count are empty and merge to nothing).
SPLIT_RANGE = range(1, 65)


def head_block(e: int) -> int:
    """The padded head-dim tile: next power of two, at least 16 (tl.dot's minimum K)."""
    return max(16, 1 << (int(e) - 1).bit_length())


def _elt(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _smem_forward(bm, bn, ns, dk, dv, elt, bias=False):
    # Q tile resident, K and V tiles buffered num_stages + 1 deep: the H100 run of 2026-11-21
    # refused 64x64, 3 stages at E=256 bf16 for 256 KiB (= Q + 4 K/V buffers less one Q).
    # An fp32 bias tile is pipelined too: the H200 run of 2026-12-03 refused 256x64, 2 stages at
    # E=128, Ev=256 fp16 with a bool attn_mask for 262168 B (docs/findings.md F5).
    bias_bytes = (max(ns, 1) + 1) * bm * bn * 4 if bias else 0
    return elt * (bm * dk + (max(ns, 1) + 1) * bn * (dk + dv)) + bias_bytes


def _smem_backward(bm, bn, ns, dk, dv, elt):
    # One side resident (K,V or Q,dO), the other buffered num_stages + 1 deep, plus P/dS staged.
    # An upper bound for the split dK/dV kernels too (backward_split): the dV one holds K but not V
    # and stages no dS, the dK one holds what the fused kernel holds less the dV accumulator.
    big, small = max(bm, bn), min(bm, bn)
    return elt * (big * (dk + dv) + (max(ns, 1) + 1) * small * (dk + dv) + 2 * bm * bn)


def check_tile_config(block_m, block_n, num_warps, num_stages, *, head_dim, head_dim_v, dtype,
                      backward=False, has_bias=False):
    """Raise ValueError (naming the argument) unless the config is accepted for these dims/dtype
    (and an additive bias, the attn_mask path, when ``has_bias``)."""
    for name, x in (("block_m", block_m), ("block_n", block_n), ("num_warps", num_warps), ("num_stages", num_stages)):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral):
            raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if b not in BLOCK_SIZES:
            raise ValueError(f"{name} must be a power of two in {BLOCK_SIZES}, got {b!r}")
    if num_warps not in _NUM_WARPS:
        raise ValueError(f"num_warps must be one of {_NUM_WARPS}, got {num_warps!r}")
    if not 1 <= num_stages <= 8:
        raise ValueError(f"num_stages must be an int in 1..8, got {num_stages!r}")
    dk, dv = head_block(head_dim), head_block(head_dim_v)
    elt = _elt(dtype)
    est = (_smem_backward(block_m, block_n, num_stages, dk, dv, elt) if backward
           else _smem_forward(block_m, block_n, num_stages, dk, dv, elt, bias=has_bias))
    if elt == 4:
        # fp32 (IEEE FMA path) stages more than the operand tiles: measured sm_90 builds used up
        # to 1.25x this estimate (triton 3.9, 128x64 tiles, E=64), so keep a 1.5x margin.
        est = est * 3 // 2
    if est > SMEM_LIMIT_BYTES:
        raise ValueError(
            f"tile config block_m={block_m}, block_n={block_n}, num_stages={num_stages} needs about "
            f"{est // 1024} KiB of shared memory for E={head_dim}, Ev={head_dim_v}, {dtype} "
            f"({'backward' if backward else 'forward'}{', with attn_mask' if has_bias else ''}); the GPU has {SMEM_LIMIT_BYTES // 1024} KiB: "
            f"use smaller blocks or fewer stages")


def accepts_tile_config(config, *, head_dim, head_dim_v=None, dtype=torch.float16, has_bias=False) -> bool:
    """Whether the forward accepts ``config`` (a TileConfig or 4-tuple) for these dims and dtype
    (with an attn_mask when ``has_bias``)."""
    try:
        check_tile_config(*config, head_dim=head_dim, head_dim_v=head_dim_v or head_dim, dtype=dtype,
                          has_bias=has_bias)
    except (ValueError, TypeError):
        return False
    return True


def _first_fit(candidates, *, head_dim, head_dim_v, dtype, backward=False, has_bias=False) -> TileConfig:
    for c in candidates:
        try:
            check_tile_config(*c, head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype, backward=backward,
                              has_bias=has_bias)
            return TileConfig(*c)
        except ValueError:
            continue
    return TileConfig(16, 16, 4, 1)  # fits every dtype and E <= 256


def default_forward_config(*, head_dim, head_dim_v, dtype, interpret: bool, has_bias: bool = False,
                           causal: bool = False) -> TileConfig:
    """Heuristic forward tiles. Interpreter: fixed 32x32 (few, cheap numpy steps). fp16/bf16 on
    the GPU: the fastest config of the H100 sweep of the two-pass kernels with K/V read through
    tensor descriptors (benchmarks/results/tune-h100-run4.md, bf16 B8 H16 L4096), which led causal
    and not at every E; first fit when the shared memory of a larger head dim rules it out.
    ``causal`` (a bounded right side: causal or a window): 64x64, 3 stages up to E=128, the fastest
    or within 2% of it at 20 of the 23 causal B x L points of the H200 sweep (L 512..4096, B 1..32,
    docs/audits/h200/session7/call1), up to 1.14x the 128x64 default."""
    if interpret:
        return TileConfig(32, 32, 4, 1)
    d = max(head_block(head_dim), head_block(head_dim_v))
    if dtype == torch.float32:
        cands = [(64, 32, 4, 2), (32, 32, 4, 2), (16, 32, 4, 1)] if d <= 64 else [(32, 32, 4, 2), (16, 32, 4, 1)]
    elif causal and d <= 128:
        cands = [(64, 64, 4, 3), (64, 64, 4, 2)]
    elif d <= 64:
        cands = [(128, 64, 4, 3)]
    elif d <= 128:
        cands = [(128, 64, 4, 2)]
    else:
        cands = [(64, 64, 4, 1), (64, 32, 4, 2)]
    return _first_fit(cands, head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype, has_bias=has_bias)


def default_backward_config(*, head_dim, head_dim_v, dtype, interpret: bool, split: bool = False) -> TileConfig:
    """Backward tiles: block_n rows stay resident (keys in dK/dV, queries in dQ) while block_m
    rows stream; fp16/bf16 from the same H100 sweep with tensor-descriptor loads
    (tune-h100-run4.md: causal and not at E=128, non-causal at E=64 and 256). ``split`` (dK and dV
    in two kernels, backward_split): 32x64, 2 stages above E=128, the fastest of the 28 accepted
    configs of the H200 sweep at E=256 bf16 B4 H16 L4096 (238 TFLOP/s against 248 for SDPA flash;
    docs/audits/h200/session7/call3/bwd256)."""
    if interpret:
        return TileConfig(32, 32, 4, 1)
    d = max(head_block(head_dim), head_block(head_dim_v))
    if dtype == torch.float32:
        cands = [(32, 32, 4, 1), (16, 32, 4, 1), (16, 16, 4, 1)]
    elif split and d > 128:
        cands = [(32, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 1), (16, 32, 4, 1)]
    elif d <= 64:
        cands = [(64, 64, 4, 3), (32, 128, 4, 3)]
    elif d <= 128:
        cands = [(64, 64, 4, 2), (32, 64, 4, 2)]
    else:
        cands = [(64, 32, 4, 2), (32, 32, 4, 1), (16, 32, 4, 1)]
    return _first_fit(cands, head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype, backward=True)


def backward_config(fwd: TileConfig, *, forced: bool, head_dim, head_dim_v, dtype, interpret,
                    split: bool = False) -> TileConfig:
    """The forward's forced blocks when they fit the backward's larger footprint, else the default."""
    if forced:
        for ns in (fwd.num_stages, 1):
            try:
                check_tile_config(fwd.block_m, fwd.block_n, fwd.num_warps, ns, head_dim=head_dim,
                                  head_dim_v=head_dim_v, dtype=dtype, backward=True)
                return TileConfig(fwd.block_m, fwd.block_n, fwd.num_warps, ns)
            except ValueError:
                continue
    return default_backward_config(head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype, interpret=interpret,
                                   split=split)


def backward_split(*, head_dim, head_dim_v, dtype, interpret: bool) -> bool:
    """Whether the backward computes dK and dV in two kernels (dV, then dK), each holding one
    fp32 [block_n, head block] accumulator, instead of one kernel holding both: the E=256
    dK/dV kernel spills (255 registers, 112 spilled values on triton 3.6, H100 profile
    benchmarks/results/profile-h100-e256.json). Split for fp16/bf16 when the larger head block
    exceeds 128, never under the interpreter (one kernel does less interpreted work). Measured on
    the H200 at E=256 bf16 B4 H16 L4096: the whole backward at 173-182 TFLOP/s fused (default
    tiles) and 238 split (default_backward_config's split tiles), SDPA flash 244-248
    (docs/audits/h200/session7/call1 and call3)."""
    if interpret or dtype not in (torch.float16, torch.bfloat16):
        return False
    return max(head_block(head_dim), head_block(head_dim_v)) > 128


def default_decode_block(*, head_dim, head_dim_v, dtype, interpret: bool, page_size: int = 0) -> int:
    """Keys per tile in decode (block_n). A paged cache whose pages hold whole 128-key tiles reads
    128 keys per page lookup: on the H200 (E=128 bf16, page_size 256) 128-key tiles with 2 stages
    moved 1.1-1.5x the bytes per second of 64-key tiles at every (B, Lk) point
    (docs/audits/h200/session7/call5)."""
    if interpret:
        return 32
    d = max(head_block(head_dim), head_block(head_dim_v))
    if d > 128 or dtype == torch.float32:
        return 32
    return 128 if page_size and page_size % 128 == 0 else 64


def decode_num_stages(*, block_n, head_dim, head_dim_v, dtype) -> int:
    """Decode's K/V pipeline depth: 4 where 4 + 1 K/V buffers fit in 160 KiB, else 2. At E=128 bf16,
    block_n=64, 4 stages (4 warps) was within 2% of the fastest launch of the H200 sweep at every
    (B, Lk) point and 2 stages up to 1.5x slower (docs/audits/h200/session7/call1)."""
    per_stage = _elt(dtype) * block_n * (head_block(head_dim) + head_block(head_dim_v))
    return 4 if 5 * per_stage <= 160 * 1024 else 2


def default_num_splits(*, programs: int, lk: int, block_n: int, interpret: bool,
                       num_sms: int = 132) -> int:
    """Flash-decoding split count: about one wave of programs (num_sms // programs splits), >= 2
    key tiles each. The H200 sweep (E=128 bf16, GQA 64:8, docs/audits/h200/session7/call1) put the
    fastest split count at 16, 2 and 1 for B = 1, 8 and 64 (8, 64 and 512 programs before the split),
    one wave each; the two-wave rule it replaces (33 -> 16, 5, 1) was up to 1.5x slower at B = 8."""
    if interpret or lk <= 0:
        return 1
    want = max(1, num_sms // max(programs, 1))
    most = max(1, lk // (2 * block_n))
    return int(max(1, min(want, most, SPLIT_RANGE[-1])))

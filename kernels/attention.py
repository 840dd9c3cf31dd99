"""FlashAttention forward and backward in Triton, and the public ``attention`` function.

Layout (B, H, L, E) with any strides; fp16, bf16, fp32; E, Ev <= 256; GQA/MQA; causal in both
alignments; sliding window; softcap; an optional additive bias (for sdpa's attn_mask). The
semantics are flashproof.spec's (spec/README.md); the kernels cite what they rely on.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from flashproof import spec

from .blocks import (LN2, finalize, head_base, key_range, load2d, logits, masked_block, masked_mma,
                     masked_mma_acc, mma, mma_acc, nonfinite, query_range, rerun_flag, round_to, signed_keep,
                     skip_program, span)
from .runtime import interpreting
from .tiles import (TileConfig, backward_config, backward_split, check_tile_config,
                    default_forward_config, head_block)
from .validate import check_qkv, logit_scales, mask_args

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - triton < 3.4 has no host-side descriptors
    TensorDescriptor = None

__all__ = ["attention"]


# ----------------------------------------------------------------------------- jit kernels

@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, bias_base, offs_n, k_rows, v_rows, kv_b, kv_h, n,
              offs_m, lo, hi, skd, svd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE,
              E: tl.constexpr, EV: tl.constexpr, BLOCK_N: tl.constexpr,
              BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
              SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
              UPCAST: tl.constexpr, EXACT: tl.constexpr, TMA: tl.constexpr):
    """One key block folded into the running state (m, l, acc): spec.online.merge of the
    block's state, in log2 units (proofs/rescaling.py, theorem 1: the rescaling identity); exact
    for any tiling by proofs/merge_algebra.py, theorem 2 (merge is a commutative monoid and a
    homomorphism from key-block concatenation). Key j of the block lives at k_base + k_rows[j]
    (v_base + v_rows[j]): strided rows here, paged rows in decode. TMA: k_base and v_base are
    the (B, Hkv, Lk, E) tensor descriptors instead, and the block is keys n .. n + BLOCK_N of
    head (kv_b, kv_h), read by the copy engine, which zero-fills what load2d masks."""
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    if TMA:
        # [BLOCK_DK, BLOCK_N]
        kt = tl.trans(k_base.load([kv_b, kv_h, n, 0]).reshape(BLOCK_N, BLOCK_DK))
    else:
        # [BLOCK_DK, BLOCK_N]
        kt = load2d(k_base + offs_dk[:, None].to(tl.int64) * skd + k_rows[None, :],
                    offs_dk, E, offs_n, LK, E != BLOCK_DK, MASKED)
    # [BLOCK_M, BLOCK_N]
    s, _t = logits(mma(q, kt, PRECISION, UPCAST), QK_SCALE, OUT_SCALE, SOFTCAP)
    if HAS_BIAS:
        # [BLOCK_M, BLOCK_N]
        bias = load2d(bias_base + offs_m[:, None].to(tl.int64) * sbm + offs_n[None, :].to(tl.int64) * sbn,
                      offs_m, LQ, offs_n, LK, True, True).to(tl.float32)
        # an additive -inf masks (spec "Mask"): the key is dropped even if q.k is NaN or inf
        s = tl.where(bias == -float("inf"), -float("inf"), s + bias * 1.4426950408889634)
    if MASKED:
        # -inf, never a finite sentinel: a real logit of -1e6 must still win (spec "Mask").
        allowed = (offs_n[None, :] >= lo[:, None]) & (offs_n[None, :] < hi[:, None])
        if HAS_BIAS:
            allowed = allowed & (bias != -float("inf"))
        s = tl.where(allowed, s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # spec.online.ScalarOps.shift: an all-masked row so far shifts by 0, never -inf - -inf.
    m_sh = tl.where(m_new == -float("inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_sh)
    # one rounding per logit in every tile, no fma(q.k, c, -m): its residual can under/overflow exp2(max)
    p = tl.exp2(s - m_sh[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if TMA:
        # [BLOCK_N, BLOCK_DV]
        v = v_base.load([kv_b, kv_h, n, 0]).reshape(BLOCK_N, BLOCK_DV)
    else:
        # [BLOCK_N, BLOCK_DV]
        v = load2d(v_base + v_rows[:, None] + offs_dv[None, :].to(tl.int64) * svd,
                   offs_n, LK, offs_dv, EV, MASKED, EV != BLOCK_DV)
    pv = round_to(p, v.dtype, UPCAST)
    if MASKED:
        # kept by the mask and the bias, not by the logit (docs/findings.md F10)
        acc = masked_mma(acc * alpha[:, None], signed_keep(pv, allowed), v, None, PRECISION, UPCAST, EXACT)
    elif v.dtype == tl.float32:
        # fp32: one product tile per block, so the FMA chain is Lk / BLOCK_N + BLOCK_N long
        acc = acc * alpha[:, None] + mma(pv, v, PRECISION, UPCAST)
    else:
        acc, _c = mma_acc(acc * alpha[:, None], 0.0, pv, v, PRECISION, UPCAST, False)
    return acc, l_i, m_new


@triton.jit
def _fwd_kernel(RERUN, Q, K, V, BIAS, O, LSE2,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                sbb, sbh, sbm, sbn, sob, soh, som, sod,
                H, GROUP, LQ, LK, DIAG, LEFT, RIGHT, QK_SCALE, OUT_SCALE,
                E: tl.constexpr, EV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr,
                HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr, EXACT: tl.constexpr,
                TMA: tl.constexpr):
    # two passes (blocks.rerun_flag): the exact one recomputes only the programs the fast one flagged
    if skip_program(RERUN, EXACT):
        return
    if HAS_RIGHT:
        # causal: the longest rows first, so the short ones fill the last wave
        pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    else:
        pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    hk = h // GROUP  # spec.kv_head
    b64 = b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_base = Q + b64 * sqb + h.to(tl.int64) * sqh
    k_base = head_base(K, b64, hk, skb, skh, TMA)
    v_base = head_base(V, b64, hk, svb, svh, TMA)
    bias_base = BIAS + b64 * sbb + h.to(tl.int64) * sbh
    # [BLOCK_M, BLOCK_DK]
    q = load2d(q_base + offs_m[:, None].to(tl.int64) * sqm + offs_dk[None, :].to(tl.int64) * sqd,
               offs_m, LQ, offs_dk, E, True, E != BLOCK_DK)
    lo, hi = key_range(offs_m, LQ, LK, DIAG, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT)
    # Only key blocks meeting some row's range; masking only in the boundary blocks (two loops).
    start, n_lead, n_masked, fstart, fend = span(lo, hi, offs_m < LQ, BLOCK_N, HAS_BIAS)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    # [BLOCK_M, BLOCK_DV]
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for t in range(0, n_masked):
        n = masked_block(t, start, n_lead, fend, BLOCK_N)
        offs_n = n + tl.arange(0, BLOCK_N)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, bias_base, offs_n,
                                  offs_n.to(tl.int64) * skn, offs_n.to(tl.int64) * svn, b, hk, n,
                                  offs_m, lo, hi, skd, svd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE,
                                  E, EV, BLOCK_N, BLOCK_DK, BLOCK_DV, True, SOFTCAP, HAS_BIAS,
                                  PRECISION, UPCAST, EXACT, TMA)
    for n in range(fstart, fend, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, bias_base, offs_n,
                                  offs_n.to(tl.int64) * skn, offs_n.to(tl.int64) * svn, b, hk, n,
                                  offs_m, lo, hi, skd, svd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE,
                                  E, EV, BLOCK_N, BLOCK_DK, BLOCK_DV, False, SOFTCAP, HAS_BIAS,
                                  PRECISION, UPCAST, EXACT, TMA)
    o, lse2 = finalize(acc, l_i, m_i)
    if not EXACT:
        rerun_flag(RERUN, nonfinite(o, offs_m < LQ))
    o_ptrs = O + b64 * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * som \
        + offs_dv[None, :].to(tl.int64) * sod
    tl.store(o_ptrs, round_to(o, O.dtype.element_ty, UPCAST), mask=(offs_m[:, None] < LQ) & (offs_dv[None, :] < EV))
    row = (b64 * H + h) * LQ
    tl.store(LSE2 + row + offs_m, lse2, mask=offs_m < LQ)


@triton.jit
def _bwd_delta_kernel(O, DO, DLSE, DELTA, sob, soh, som, sod, sdb, sdh, sdm, sdd,
                      H, LQ, EV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr,
                      HAS_DLSE: tl.constexpr):
    """D_i = rowsum(dO_i * O_i) - dlse_i (dlse: gradient reaching the natural-log LSE), so that
    dS = P * (dP - D) (proofs/backward.py, theorem 4)."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    # [BLOCK_M, BLOCK_DV]
    o = load2d(O + b64 * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * som
               + offs_dv[None, :].to(tl.int64) * sod, offs_m, LQ, offs_dv, EV, True, EV != BLOCK_DV)
    # [BLOCK_M, BLOCK_DV]
    do = load2d(DO + b64 * sdb + h.to(tl.int64) * sdh + offs_m[:, None].to(tl.int64) * sdm
                + offs_dv[None, :].to(tl.int64) * sdd, offs_m, LQ, offs_dv, EV, True, EV != BLOCK_DV)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    row = (b64 * H + h) * LQ
    if HAS_DLSE:
        delta = delta - tl.load(DLSE + row + offs_m, mask=offs_m < LQ, other=0.0)
    tl.store(DELTA + row + offs_m, delta, mask=offs_m < LQ)


@triton.jit
def _dkdv_tile(dk, dv, ck, cv, k, v, q_base, do_base, bias_base, lse_base, delta_base, b, h, m, offs_n,
               ilo, ihi, sqm, sqd, sdm, sdd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE,
               E: tl.constexpr, EV: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
               SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
               UPCAST: tl.constexpr, KAHAN: tl.constexpr, EXACT: tl.constexpr, TMA: tl.constexpr,
               COMPUTE_DK: tl.constexpr, COMPUTE_DV: tl.constexpr):
    """dK, dV of one key block from one query block, with P^T recomputed from the saved LSE
    (dV = P^T dO, dK = scale dS^T Q: proofs/backward.py, theorem 4). TMA: q_base and do_base are
    the Q and dO tensor descriptors (_fwd_tile), the block is rows m .. m + BLOCK_M of (b, h).
    COMPUTE_DV only: S, P and dO (no V, no dP, no D); COMPUTE_DK only: dS as well, no dV. Each
    accumulator sees the same operands and MMAs as in the fused tile, so it is bitwise the same."""
    offs_m = m + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    if TMA:
        # [BLOCK_DK, BLOCK_M]
        qt = tl.trans(q_base.load([b, h, m, 0]).reshape(BLOCK_M, BLOCK_DK))
    else:
        # [BLOCK_DK, BLOCK_M]
        qt = load2d(q_base + offs_dk[:, None].to(tl.int64) * sqd + offs_m[None, :].to(tl.int64) * sqm,
                    offs_dk, E, offs_m, LQ, E != BLOCK_DK, MASKED)
    # [BLOCK_N, BLOCK_M]
    st, tt = logits(mma(k, qt, PRECISION, UPCAST), QK_SCALE, OUT_SCALE, SOFTCAP)
    if HAS_BIAS:
        # [BLOCK_N, BLOCK_M]
        bias = load2d(bias_base + offs_n[:, None].to(tl.int64) * sbn + offs_m[None, :].to(tl.int64) * sbm,
                      offs_n, LK, offs_m, LQ, True, True).to(tl.float32)
        st = tl.where(bias == -float("inf"), -float("inf"), st + bias * 1.4426950408889634)
    if MASKED:
        allowed = (offs_m[None, :] >= ilo[:, None]) & (offs_m[None, :] < ihi[:, None])
        if HAS_BIAS:
            allowed = allowed & (bias != -float("inf"))
        st = tl.where(allowed, st, -float("inf"))
        lse2 = tl.load(lse_base + offs_m, mask=offs_m < LQ, other=0.0)
        if COMPUTE_DK:
            delta = tl.load(delta_base + offs_m, mask=offs_m < LQ, other=0.0)
    else:
        lse2 = tl.load(lse_base + offs_m)
        if COMPUTE_DK:
            delta = tl.load(delta_base + offs_m)
    # Empty rows have LSE -inf: P = 0 there, never exp2(-inf - -inf).
    empty = lse2 == -float("inf")
    pt = tl.where(empty[None, :], 0.0, tl.exp2(st - tl.where(empty, 0.0, lse2)[None, :]))
    if TMA:
        # [BLOCK_M, BLOCK_DV]
        do = do_base.load([b, h, m, 0]).reshape(BLOCK_M, BLOCK_DV)
    else:
        # [BLOCK_M, BLOCK_DV]
        do = load2d(do_base + offs_m[:, None].to(tl.int64) * sdm + offs_dv[None, :].to(tl.int64) * sdd,
                    offs_m, LQ, offs_dv, EV, MASKED, EV != BLOCK_DV)
    if MASKED:
        keep = st != -float("inf")
        # A masked pair's P is 0 even in a row whose LSE is NaN (a non-finite q_i, or k_j it attends):
        # exp2(-inf - NaN) is NaN, and masked_mma drops a pair by its a = 0 (spec "NaN and inf policy")
        pt = tl.where(allowed, pt, 0.0)
    if COMPUTE_DV:
        if MASKED:
            dv, cv = masked_mma_acc(dv, cv, round_to(pt, do.dtype, UPCAST), do, keep, PRECISION, UPCAST, KAHAN,
                                    EXACT)
        else:
            dv, cv = mma_acc(dv, cv, round_to(pt, do.dtype, UPCAST), do, PRECISION, UPCAST, KAHAN)
    if COMPUTE_DK:
        # [BLOCK_N, BLOCK_M]
        dpt = mma(v, tl.trans(do), PRECISION, UPCAST)
        dst = pt * (dpt - delta[None, :])
        if SOFTCAP:
            dst = dst * (1.0 - tt * tt)  # d/dx c tanh(x/c) = 1 - tanh^2
        q = tl.trans(qt)
        if MASKED:
            dst = tl.where(allowed, dst, 0.0)
            dk, ck = masked_mma_acc(dk, ck, round_to(dst, q.dtype, UPCAST), q, keep, PRECISION, UPCAST, KAHAN,
                                    EXACT)
        else:
            dk, ck = mma_acc(dk, ck, round_to(dst, q.dtype, UPCAST), q, PRECISION, UPCAST, KAHAN)
    return dk, dv, ck, cv


@triton.jit
def _bwd_dkdv_kernel(RERUN, Q, K, V, BIAS, DO, LSE2, DELTA, DK, DV,
                     sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                     sbb, sbh, sbm, sbn, sdb, sdh, sdm, sdd,
                     sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
                     H, GROUP, LQ, LK, DIAG, LEFT, RIGHT, QK_SCALE, OUT_SCALE, DS_SCALE,
                     E: tl.constexpr, EV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr,
                     HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, KAHAN: tl.constexpr,
                     EXACT: tl.constexpr, TMA: tl.constexpr, COMPUTE_DK: tl.constexpr,
                     COMPUTE_DV: tl.constexpr):
    """One key block of one KV head: loops over the GROUP query heads sharing it and over the
    query blocks that attend it; no atomics, so the result is bitwise deterministic. COMPUTE_DK,
    COMPUTE_DV: which of dK, dV this build accumulates and stores (both: the fused kernel; one:
    the split kernels of large head dims, one fp32 accumulator each, tiles.backward_split)."""
    if skip_program(RERUN, EXACT):
        return
    pid_n = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    # [BLOCK_N, BLOCK_DK]
    k = load2d(K + b64 * skb + hk.to(tl.int64) * skh + offs_n[:, None].to(tl.int64) * skn
               + offs_dk[None, :].to(tl.int64) * skd, offs_n, LK, offs_dk, E, True, E != BLOCK_DK)
    if COMPUTE_DK:
        # [BLOCK_N, BLOCK_DV]; only dP = dO V^T reads V
        v = load2d(V + b64 * svb + hk.to(tl.int64) * svh + offs_n[:, None].to(tl.int64) * svn
                   + offs_dv[None, :].to(tl.int64) * svd, offs_n, LK, offs_dv, EV, True, EV != BLOCK_DV)
        # [BLOCK_N, BLOCK_DK]
        dk = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32)
    else:
        v = 0.0
        dk = 0.0
    if COMPUTE_DV:
        # [BLOCK_N, BLOCK_DV]
        dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    else:
        dv = 0.0
    ilo, ihi = query_range(offs_n, LQ, LK, DIAG, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT)
    start, n_lead, n_masked, fstart, fend = span(ilo, ihi, offs_n < LK, BLOCK_M, HAS_BIAS)
    if KAHAN and COMPUTE_DK:
        ck = tl.zeros([BLOCK_N, BLOCK_DK], tl.float32)
    else:
        ck = 0.0
    if KAHAN and COMPUTE_DV:
        cv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    else:
        cv = 0.0
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = head_base(Q, b64, h, sqb, sqh, TMA)
        do_base = head_base(DO, b64, h, sdb, sdh, TMA)
        bias_base = BIAS + b64 * sbb + h.to(tl.int64) * sbh
        lse_base = LSE2 + (b64 * H + h) * LQ
        delta_base = DELTA + (b64 * H + h) * LQ
        for t in range(0, n_masked):
            m = masked_block(t, start, n_lead, fend, BLOCK_M)
            dk, dv, ck, cv = _dkdv_tile(dk, dv, ck, cv, k, v, q_base, do_base, bias_base, lse_base, delta_base, b, h,
                                m, offs_n, ilo, ihi, sqm, sqd, sdm, sdd, sbm, sbn, LQ, LK, QK_SCALE,
                                OUT_SCALE, E, EV, BLOCK_M, BLOCK_DK, BLOCK_DV, True, SOFTCAP,
                                HAS_BIAS, PRECISION, UPCAST, KAHAN, EXACT, TMA, COMPUTE_DK, COMPUTE_DV)
        for m in range(fstart, fend, BLOCK_M):
            dk, dv, ck, cv = _dkdv_tile(dk, dv, ck, cv, k, v, q_base, do_base, bias_base, lse_base, delta_base, b, h,
                                m, offs_n, ilo, ihi, sqm, sqd, sdm, sdd, sbm, sbn, LQ, LK, QK_SCALE,
                                OUT_SCALE, E, EV, BLOCK_M, BLOCK_DK, BLOCK_DV, False, SOFTCAP,
                                HAS_BIAS, PRECISION, UPCAST, KAHAN, EXACT, TMA, COMPUTE_DK, COMPUTE_DV)
    if COMPUTE_DK:
        dk = dk * DS_SCALE
    if not EXACT:
        # blocks.rerun_flag per launch: each build flags (and its exact pass rewrites) only what it stores
        if COMPUTE_DK and COMPUTE_DV:
            rerun_flag(RERUN, tl.maximum(nonfinite(dk, offs_n < LK), nonfinite(dv, offs_n < LK)))
        elif COMPUTE_DK:
            rerun_flag(RERUN, nonfinite(dk, offs_n < LK))
        else:
            rerun_flag(RERUN, nonfinite(dv, offs_n < LK))
    nmask = offs_n[:, None] < LK
    if COMPUTE_DK:
        tl.store(DK + b64 * sdkb + hk.to(tl.int64) * sdkh + offs_n[:, None].to(tl.int64) * sdkn
                 + offs_dk[None, :].to(tl.int64) * sdkd, round_to(dk, DK.dtype.element_ty, UPCAST),
                 mask=nmask & (offs_dk[None, :] < E))
    if COMPUTE_DV:
        tl.store(DV + b64 * sdvb + hk.to(tl.int64) * sdvh + offs_n[:, None].to(tl.int64) * sdvn
                 + offs_dv[None, :].to(tl.int64) * sdvd, round_to(dv, DV.dtype.element_ty, UPCAST),
                 mask=nmask & (offs_dv[None, :] < EV))


@triton.jit
def _dq_tile(dq, cq, q, do, lse2, delta, k_base, v_base, bias_base, b, hk, n, offs_m, lo, hi,
             skn, skd, svn, svd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE,
             E: tl.constexpr, EV: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, MASKED: tl.constexpr,
             SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
             UPCAST: tl.constexpr, KAHAN: tl.constexpr, EXACT: tl.constexpr, TMA: tl.constexpr):
    """dQ of one query block from one key block (dQ = scale dS K: proofs/backward.py, theorem 4).
    TMA: k_base and v_base are the K and V tensor descriptors (_fwd_tile)."""
    offs_n = n + tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    if TMA:
        # [BLOCK_DK, BLOCK_N]
        kt = tl.trans(k_base.load([b, hk, n, 0]).reshape(BLOCK_N, BLOCK_DK))
    else:
        # [BLOCK_DK, BLOCK_N]
        kt = load2d(k_base + offs_dk[:, None].to(tl.int64) * skd + offs_n[None, :].to(tl.int64) * skn,
                    offs_dk, E, offs_n, LK, E != BLOCK_DK, MASKED)
    # [BLOCK_M, BLOCK_N]
    s, t = logits(mma(q, kt, PRECISION, UPCAST), QK_SCALE, OUT_SCALE, SOFTCAP)
    if HAS_BIAS:
        # [BLOCK_M, BLOCK_N]
        bias = load2d(bias_base + offs_m[:, None].to(tl.int64) * sbm + offs_n[None, :].to(tl.int64) * sbn,
                      offs_m, LQ, offs_n, LK, True, True).to(tl.float32)
        s = tl.where(bias == -float("inf"), -float("inf"), s + bias * 1.4426950408889634)
    if MASKED:
        allowed = (offs_n[None, :] >= lo[:, None]) & (offs_n[None, :] < hi[:, None])
        if HAS_BIAS:
            allowed = allowed & (bias != -float("inf"))
        s = tl.where(allowed, s, -float("inf"))
    # Empty rows have LSE -inf: P = 0 there, never exp2(-inf - -inf).
    empty = lse2 == -float("inf")
    p = tl.where(empty[:, None], 0.0, tl.exp2(s - tl.where(empty, 0.0, lse2)[:, None]))
    if TMA:
        # [BLOCK_DV, BLOCK_N]
        vt = tl.trans(v_base.load([b, hk, n, 0]).reshape(BLOCK_N, BLOCK_DV))
    else:
        # [BLOCK_DV, BLOCK_N]
        vt = load2d(v_base + offs_dv[:, None].to(tl.int64) * svd + offs_n[None, :].to(tl.int64) * svn,
                    offs_dv, EV, offs_n, LK, EV != BLOCK_DV, MASKED)
    # [BLOCK_M, BLOCK_N]
    dp = mma(do, vt, PRECISION, UPCAST)
    ds = p * (dp - delta[:, None])
    if SOFTCAP:
        ds = ds * (1.0 - t * t)
    k = tl.trans(kt)
    if MASKED:
        # kept by the mask and the bias, not by the logit: an allowed pair of logit -inf (an inf in k_j)
        # gives dS = 0, and 0 * inf = NaN as in full tiles (docs/findings.md F10)
        dq, cq = masked_mma_acc(dq, cq, signed_keep(round_to(ds, k.dtype, UPCAST), allowed), k, None, PRECISION,
                                UPCAST, KAHAN, EXACT)
    else:
        dq, cq = mma_acc(dq, cq, round_to(ds, k.dtype, UPCAST), k, PRECISION, UPCAST, KAHAN)
    return dq, cq


@triton.jit
def _bwd_dq_kernel(RERUN, Q, K, V, BIAS, DO, LSE2, DELTA, DQ,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   sbb, sbh, sbm, sbn, sdb, sdh, sdm, sdd, sdqb, sdqh, sdqm, sdqd,
                   H, GROUP, LQ, LK, DIAG, LEFT, RIGHT, QK_SCALE, OUT_SCALE, DS_SCALE,
                   E: tl.constexpr, EV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr,
                   HAS_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr, HAS_BIAS: tl.constexpr,
                   PRECISION: tl.constexpr, UPCAST: tl.constexpr, KAHAN: tl.constexpr,
                   EXACT: tl.constexpr, TMA: tl.constexpr):
    if skip_program(RERUN, EXACT):
        return
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    hk = h // GROUP
    b64 = b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    # [BLOCK_M, BLOCK_DK]
    q = load2d(Q + b64 * sqb + h.to(tl.int64) * sqh + offs_m[:, None].to(tl.int64) * sqm
               + offs_dk[None, :].to(tl.int64) * sqd, offs_m, LQ, offs_dk, E, True, E != BLOCK_DK)
    # [BLOCK_M, BLOCK_DV]
    do = load2d(DO + b64 * sdb + h.to(tl.int64) * sdh + offs_m[:, None].to(tl.int64) * sdm
                + offs_dv[None, :].to(tl.int64) * sdd, offs_m, LQ, offs_dv, EV, True, EV != BLOCK_DV)
    row = (b64 * H + h) * LQ
    lse2 = tl.load(LSE2 + row + offs_m, mask=offs_m < LQ, other=0.0)
    delta = tl.load(DELTA + row + offs_m, mask=offs_m < LQ, other=0.0)
    k_base = head_base(K, b64, hk, skb, skh, TMA)
    v_base = head_base(V, b64, hk, svb, svh, TMA)
    bias_base = BIAS + b64 * sbb + h.to(tl.int64) * sbh
    lo, hi = key_range(offs_m, LQ, LK, DIAG, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT)
    start, n_lead, n_masked, fstart, fend = span(lo, hi, offs_m < LQ, BLOCK_N, HAS_BIAS)
    # [BLOCK_M, BLOCK_DK]
    dq = tl.zeros([BLOCK_M, BLOCK_DK], tl.float32)
    if KAHAN:
        cq = tl.zeros([BLOCK_M, BLOCK_DK], tl.float32)
    else:
        cq = 0.0
    for t in range(0, n_masked):
        dq, cq = _dq_tile(dq, cq, q, do, lse2, delta, k_base, v_base, bias_base, b, hk,
                      masked_block(t, start, n_lead, fend, BLOCK_N), offs_m, lo, hi,
                      skn, skd, svn, svd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE, E, EV, BLOCK_N,
                      BLOCK_DK, BLOCK_DV, True, SOFTCAP, HAS_BIAS, PRECISION, UPCAST, KAHAN, EXACT, TMA)
    for n in range(fstart, fend, BLOCK_N):
        dq, cq = _dq_tile(dq, cq, q, do, lse2, delta, k_base, v_base, bias_base, b, hk, n, offs_m, lo, hi,
                      skn, skd, svn, svd, sbm, sbn, LQ, LK, QK_SCALE, OUT_SCALE, E, EV, BLOCK_N,
                      BLOCK_DK, BLOCK_DV, False, SOFTCAP, HAS_BIAS, PRECISION, UPCAST, KAHAN, EXACT, TMA)
    dq = dq * DS_SCALE
    if not EXACT:
        rerun_flag(RERUN, nonfinite(dq, offs_m < LQ))
    tl.store(DQ + b64 * sdqb + h.to(tl.int64) * sdqh + offs_m[:, None].to(tl.int64) * sdqm
             + offs_dk[None, :].to(tl.int64) * sdqd, round_to(dq, DQ.dtype.element_ty, UPCAST),
             mask=(offs_m[:, None] < LQ) & (offs_dk[None, :] < E))


# ----------------------------------------------------------------------------- launchers

@dataclass(frozen=True)
class _Plan:
    """Everything a launch needs besides the tensors; built once, reused by the backward."""
    diag: int
    left: int
    right: int
    has_left: bool
    has_right: bool
    qk_scale: float
    out_scale: float
    ds_scale: float
    softcap: bool
    fwd: TileConfig
    bwd: TileConfig
    precision: str
    upcast: bool
    tma_fwd: bool  # tensor-descriptor loads where the layout allows (_tma_descriptor)
    tma_bwd: bool
    split_dkdv: bool  # dK and dV from two kernels, one accumulator each (tiles.backward_split)


def _launch(kernel, grid, *args, num_warps, num_stages, **meta):
    if min(grid) <= 0:
        return
    try:
        # No FMA contraction: exp2(s * c - m) fused into fma(qk, c, -m) in interior tiles but not in
        # masked ones (the select breaks it) gives the same logit two different roundings; off, the
        # compiled arithmetic is also the interpreter's.
        return kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=False, **meta)
    except OutOfResources as e:  # compiled, not launched: report it as a refused config
        raise ValueError(f"tile config refused by the GPU ({kernel.fn.__name__ if hasattr(kernel, 'fn') else kernel}): "
                         f"{e}; use smaller block_m/block_n or fewer num_stages") from e


def _launch_passes(kernel, grid, *args, **meta):
    """The fast pass, then the exact pass over the programs whose output it flagged non-finite
    (blocks.rerun_flag); device-side only, no host sync."""
    if min(grid) <= 0:
        return
    device = next(a.device for a in args if isinstance(a, torch.Tensor))  # args[0] may be a descriptor
    rerun = torch.empty(grid[0] * grid[1] * grid[2], dtype=torch.int32, device=device)
    fast = _launch(kernel, grid, rerun, *args, EXACT=False, **meta)
    exact = _EXACT_BUILDS.get(fast) if fast is not None else None
    if exact is None:
        exact = _launch(kernel, grid, rerun, *args, EXACT=True, **meta)
        if fast is not None and exact is not None:
            _EXACT_BUILDS[fast] = exact
        return
    # Same arguments as the fast launch, so the same specialization: its exact build is known, and
    # launching it directly skips triton's binding (host time per small forward 250 -> 198 us on the
    # H200, benchmarks/exact_launch_check.py, docs/gpu-runs.md session 8).
    consts = dict(meta, EXACT=True)
    exact[grid](rerun, *args, *(consts[n] for n in kernel.arg_names[len(args) + 1:]))


# A compiled fast pass -> the exact build of its specialization (compiled mode only; the interpreter
# returns no compiled kernel). Triton's own cache keeps both alive anyway; this adds only the pairing.
_EXACT_BUILDS: dict = {}


def _tma_descriptor(t, block_rows, interp=None):
    """A (B, H, L, D) tensor's descriptor for the copy engine (TMA), blocks of
    [1, 1, block_rows, head_block(D)] zero-filled past L and D; None where the layout breaks TMA's
    rules (16-byte aligned base and strides, unit last stride, no empty dimension)."""
    if TensorDescriptor is None or t.dtype not in (torch.float16, torch.bfloat16) or t.numel() == 0:
        return None
    if not (interpreting() if interp is None else interp) and _capability(t.device) < 9:
        return None
    es = t.element_size()
    if t.stride(-1) != 1 or t.data_ptr() % 16 or any(st <= 0 or (st * es) % 16 for st in t.stride()[:-1]):
        return None
    key = (t.shape, t.stride(), t.dtype, block_rows)
    template = _DESCRIPTORS.get(key)
    if template is None:
        # triton validates the layout once per key; the template keeps no tensor alive
        template = TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, block_rows, head_block(t.shape[-1])])
        template.base = None
        if len(_DESCRIPTORS) >= 1024:
            _DESCRIPTORS.clear()
        _DESCRIPTORS[key] = template
    # a copy without __post_init__ (the host cost of a launch matters at small shapes)
    desc = object.__new__(TensorDescriptor)
    desc.__dict__.update(template.__dict__)
    desc.base = t
    return desc


_DESCRIPTORS: dict = {}


@functools.lru_cache(maxsize=None)
def _capability(device) -> int:
    return torch.cuda.get_device_capability(device)[0]


def _tma_pair(x, y, block_rows, enabled):
    """(x, y, True) as tensor descriptors when enabled and both layouts allow TMA (one kernel
    reads both the same way), else (x, y, False)."""
    if enabled:
        interp = interpreting()
        dx, dy = _tma_descriptor(x, block_rows, interp), _tma_descriptor(y, block_rows, interp)
        if dx is not None and dy is not None:
            return dx, dy, True
    return x, y, False


# Kernels read K/V (Q/dO in dK/dV) through tensor descriptors where _tma_descriptor allows: on the
# H100 the re-tuned descriptor configs beat the best pointer ones (benchmarks/results/tma-h100.md).
TMA_FORWARD = True
TMA_BACKWARD = True
# dK/dV as two launches (dV, then dK) instead of one: None = tiles.backward_split's rule, True/False
# forces it (benchmarks/tune_tiles.py --split-dkdv and the tests; not a user option).
SPLIT_DKDV = None


def _bias_strides(bias):
    return (0, 0, 0, 0) if bias is None else tuple(bias.stride())


def _forward(q, k, v, bias, plan: _Plan):
    b, h, lq, e = q.shape
    hkv, lk, ev = k.shape[1], k.shape[2], v.shape[3]
    o = torch.empty((b, h, lq, ev), dtype=q.dtype, device=q.device)
    lse2 = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    cfg = plan.fwd
    if bias is not None:  # the bias tile's shared memory, refused before any launch (tiles._smem_forward)
        check_tile_config(*cfg, head_dim=e, head_dim_v=ev, dtype=q.dtype, has_bias=True)
    grid = (triton.cdiv(lq, cfg.block_m), h, b)
    k_arg, v_arg, tma = _tma_pair(k, v, cfg.block_n, plan.tma_fwd)
    _launch_passes(_fwd_kernel, grid, q, k_arg, v_arg, q if bias is None else bias, o, lse2,
            *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias), *o.stride(),
            h, h // hkv, lq, lk, plan.diag, plan.left, plan.right, plan.qk_scale, plan.out_scale,
            E=e, EV=ev, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_DK=head_block(e),
            BLOCK_DV=head_block(ev), HAS_LEFT=plan.has_left, HAS_RIGHT=plan.has_right,
            SOFTCAP=plan.softcap, HAS_BIAS=bias is not None, PRECISION=plan.precision,
            UPCAST=plan.upcast, TMA=tma, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return o, lse2


def _backward(q, k, v, bias, o, lse2, do, dlse, plan: _Plan):
    try:
        return _backward_with(q, k, v, bias, o, lse2, do, dlse, plan, plan.bwd)
    except ValueError:
        # The GPU refused the backward tiles (shared memory beyond the estimate): the forward's
        # config was accepted, so its gradient must still come; small tiles always fit.
        if plan.bwd == _SAFE_BWD:
            raise
        return _backward_with(q, k, v, bias, o, lse2, do, dlse, plan, _SAFE_BWD)


_SAFE_BWD = TileConfig(16, 16, 4, 1)


def _backward_with(q, k, v, bias, o, lse2, do, dlse, plan: _Plan, cfg: TileConfig):
    b, h, lq, e = q.shape
    hkv, lk, ev = k.shape[1], k.shape[2], v.shape[3]
    delta = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    _launch(_bwd_delta_kernel, (triton.cdiv(lq, cfg.block_m), h, b), o, do,
            delta if dlse is None else dlse, delta, *o.stride(), *do.stride(), h, lq,
            EV=ev, BLOCK_M=cfg.block_m, BLOCK_DV=head_block(ev), HAS_DLSE=dlse is not None,
            num_warps=4, num_stages=1)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    common = dict(E=e, EV=ev, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_DK=head_block(e),
                  BLOCK_DV=head_block(ev), HAS_LEFT=plan.has_left, HAS_RIGHT=plan.has_right,
                  SOFTCAP=plan.softcap, HAS_BIAS=bias is not None, PRECISION=plan.precision,
                  UPCAST=plan.upcast, KAHAN=q.dtype == torch.float32, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    scalars = (h, h // hkv, lq, lk, plan.diag, plan.left, plan.right, plan.qk_scale,
               plan.out_scale, plan.ds_scale)
    bias_t = q if bias is None else bias
    if lq == 0:
        dk.zero_()
        dv.zero_()
    else:
        q_arg, do_arg, tma = _tma_pair(q, do, cfg.block_m, plan.tma_bwd)
        dkdv = (q_arg, k, v, bias_t, do_arg, lse2, delta, dk, dv, *q.stride(), *k.stride(), *v.stride(),
                *_bias_strides(bias), *do.stride(), *dk.stride(), *dv.stride(), *scalars)
        # split: one fp32 accumulator per program; each launch has its own rerun flags (_launch_passes)
        for compute_dk, compute_dv in ((False, True), (True, False)) if plan.split_dkdv else ((True, True),):
            _launch_passes(_bwd_dkdv_kernel, (triton.cdiv(lk, cfg.block_n), hkv, b), *dkdv, TMA=tma,
                           COMPUTE_DK=compute_dk, COMPUTE_DV=compute_dv, **common)
    # dQ keeps block_n queries resident and streams block_m keys: both kernels hold the larger
    # block and stream the smaller (measured: benchmarks/results/tune-h200-run2.log).
    k_arg, v_arg, tma = _tma_pair(k, v, cfg.block_m, plan.tma_bwd)
    _launch_passes(_bwd_dq_kernel, (triton.cdiv(lq, cfg.block_n), h, b), q, k_arg, v_arg, bias_t, do, lse2,
            delta, dq, *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias), *do.stride(),
            *dq.stride(), *scalars, TMA=tma,
            **dict(common, BLOCK_M=cfg.block_n, BLOCK_N=cfg.block_m))
    return dq, dk, dv


def _plan(q, k, v, *, mask, scale, softcap, block_m, block_n, num_warps, num_stages, allow_tf32, has_bias=False):
    """Validate the options (spec for semantics, tiles for the config) and build a _Plan
    (``has_bias``: the launch will read an additive bias, the attn_mask path). Plans are cached by
    shapes, dtype and options (their values and types), so a repeated call skips the checks that
    already passed; an option the key cannot hold exactly (a tensor scale, a list window) is not cached."""
    opts = (scale, softcap, block_m, block_n, num_warps, num_stages, allow_tf32, has_bias)
    key = _plan_key(q, k, v, mask, opts)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _make_plan(q, k, v, mask=mask, scale=scale, softcap=softcap, block_m=block_m, block_n=block_n,
                          num_warps=num_warps, num_stages=num_stages, allow_tf32=allow_tf32, has_bias=has_bias)
        if key is not None:
            if len(_PLANS) >= 1024:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan


_PLANS: dict = {}


def _plan_key(q, k, v, mask, opts):
    """A hashable key that determines _make_plan's result, or None. Each option enters with its
    type (True and 1 differ: one is refused), floats by repr (-0.0 and 0.0 differ)."""
    parts = []
    for x in opts:
        if x is None or type(x) in (bool, int, str):
            parts.append((type(x), x))
        elif type(x) is float:
            parts.append((float, repr(x)))
        else:
            return None
    key = (q.shape, k.shape, v.shape, q.dtype, mask, tuple(parts), interpreting(), TMA_FORWARD, TMA_BACKWARD,
           SPLIT_DKDV)
    try:
        hash(key)
    except TypeError:  # a mask holding a list
        return None
    return key


def _make_plan(q, k, v, *, mask, scale, softcap, block_m, block_n, num_warps, num_stages, allow_tf32, has_bias):
    b, h, lq, e = q.shape
    lk, ev = k.shape[2], v.shape[3]
    scale = spec.resolve_scale(scale, e)  # real E, never the padded tile
    cap = spec.normalize_softcap(softcap)
    diag, left, right, has_left, has_right = mask_args(mask, lq, lk)
    interp = interpreting()
    d = default_forward_config(head_dim=e, head_dim_v=ev, dtype=q.dtype, interpret=interp, has_bias=has_bias,
                               causal=has_right)
    forced = any(x is not None for x in (block_m, block_n, num_warps, num_stages))
    fwd = TileConfig(d.block_m if block_m is None else block_m, d.block_n if block_n is None else block_n,
                     d.num_warps if num_warps is None else num_warps,
                     d.num_stages if num_stages is None else num_stages)
    check_tile_config(*fwd, head_dim=e, head_dim_v=ev, dtype=q.dtype, has_bias=has_bias)
    fwd = TileConfig(*(int(x) for x in fwd))  # numpy ints become plain ints (same kernel key)
    split = (backward_split(head_dim=e, head_dim_v=ev, dtype=q.dtype, interpret=interp) if SPLIT_DKDV is None
             else bool(SPLIT_DKDV))
    bwd = backward_config(fwd, forced=forced, head_dim=e, head_dim_v=ev, dtype=q.dtype, interpret=interp,
                          split=split)
    if not isinstance(allow_tf32, bool):
        raise TypeError(f"allow_tf32 must be a bool, got {type(allow_tf32).__name__}")
    precision = "ieee" if (q.dtype == torch.float32 and not allow_tf32) else "tf32"
    qk_scale, out_scale = logit_scales(scale, cap)
    return _Plan(diag, left, right, has_left, has_right, qk_scale, out_scale, scale, cap is not None,
                 fwd, bwd, precision, interp and q.dtype == torch.bfloat16, TMA_FORWARD, TMA_BACKWARD, split)


# ----------------------------------------------------------------------------- autograd

class _AttentionFunction(torch.autograd.Function):
    """o, lse = attention(q, k, v); lse is natural-log and differentiable too."""

    @staticmethod
    def forward(ctx, q, k, v, bias, plan):
        o, lse2 = _forward(q, k, v, bias, plan)
        ctx.save_for_backward(q, k, v, bias, o, lse2)
        ctx.plan = plan
        return o, lse2 * LN2

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, bias, o, lse2 = ctx.saved_tensors
        if do is None:
            do = torch.zeros_like(o)
        dq, dk, dv = _backward(q, k, v, bias, o, lse2, do, dlse, ctx.plan)
        return dq, dk, dv, None, None


def _run(q, k, v, bias, plan, return_lse):
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (q, k, v, bias)):
        o, lse = _AttentionFunction.apply(q, k, v, bias, plan)
    else:  # nothing to differentiate: the same forward without autograd's bookkeeping
        o, lse2 = _forward(q, k, v, bias, plan)
        lse = lse2 * LN2 if return_lse else None
    return (o, lse) if return_lse else o


# ----------------------------------------------------------------------------- public

def attention(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None,
              return_lse=False, block_m=None, block_n=None, num_warps=None, num_stages=None,
              allow_tf32=False, deterministic=False):
    """FlashAttention forward (and backward through autograd) with flashproof.spec semantics.

    Args:
        q: (B, H, Lq, E) query; k: (B, Hkv, Lk, E); v: (B, Hkv, Lk, Ev); any strides, one of
            float16, bfloat16, float32; H % Hkv == 0 (query head h reads KV head h // (H/Hkv));
            E, Ev <= 256 (padded in-kernel to the next power of two; scale uses the real E).
        causal: False, True (= "top_left", torch's is_causal) or "top_left"/"bottom_right".
        alignment: the diagonal of a non-causal window (spec.make_mask; default top_left).
        window: (left, right) in keys around the aligned diagonal, -1 = unbounded.
        scale: logit scale, default 1/sqrt(E).
        softcap: c > 0 maps scaled logits s -> c*tanh(s/c) before masking; None/0/inf = off.
        return_lse: also return the natural-log LSE, float32 (B, H, Lq); rows with no allowed
            key give O = 0 and LSE = -inf. The LSE is differentiable as well.
        block_m, block_n: query/key tile (powers of two in 16..256); num_warps, num_stages:
            launch options. Unset ones come from a heuristic (fixed small tiles under the
            interpreter). Every config in TILE_CONFIGS is accepted where its shared memory fits
            (tiles.check_tile_config raises ValueError otherwise, before any launch).
        allow_tf32: fp32 inputs multiply in TF32 instead of IEEE fp32.
        deterministic: accepted for API compatibility; the kernels use no atomics, so forward
            and backward are always bitwise reproducible.

    Returns:
        o (B, H, Lq, Ev) in the input dtype, or (o, lse).

    NaN/inf in an allowed q, k or v reach only the rows that attend them; values in masked or
    padded positions are never used (spec/README.md, "NaN and inf policy").
    """
    check_qkv(q, k, v)
    for name, flag in (("return_lse", return_lse), ("deterministic", deterministic)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    plan = _plan(q, k, v, mask=mask, scale=scale, softcap=softcap, block_m=block_m, block_n=block_n,
                 num_warps=num_warps, num_stages=num_stages, allow_tf32=allow_tf32)
    return _run(q, k, v, None, plan, return_lse)

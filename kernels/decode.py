"""Split-KV decoding (flash-decoding) over a contiguous or paged KV cache, and ``decode``.

One program handles a block of (query head of a GQA group, query row) pairs against one KV
head and one split of the keys, so the K/V tiles are loaded once for the whole group. Each
split writes its online-softmax state (m, l, acc); a second kernel merges the states with
spec.online.merge (flash-decoding's LSE merge, without normalizing each part first).
"""
from __future__ import annotations

import numbers

import torch
import triton
import triton.language as tl

from flashproof import spec

from .attention import _fwd_tile, _launch
from .blocks import LN2, finalize, key_range, load2d, masked_block, round_to, span
from .runtime import interpreting, num_sms
from .tiles import SPLIT_RANGE, decode_num_stages, default_decode_block, default_num_splits, head_block
from .validate import check_qkv, check_tensor, logit_scales, mask_args

__all__ = ["decode"]


# ----------------------------------------------------------------------------- rules

def _seqlens_rule(capacity="capacity"):
    """The seqlens rule, stated once: the host check fills in the number, the device assert the name."""
    return f"seqlens must lie in [0, {capacity}] (the cache's capacity)"


def _page_rule(last="num_pages - 1"):
    """The block_table rule, said of an entry the sequence uses (host: the number; device: the name)."""
    return f"is not a page of k_cache (0..{last}) but the sequence uses it"


# CUDA prints the failing program's block index with the message: b is its first coordinate.
_SEQLENS_ASSERT = tl.constexpr(f"decode: {_seqlens_rule()}; seqlens[b] is not (b = the block index)")
_PAGE_ASSERT = tl.constexpr(f"decode: block_table[b, p] {_page_rule()} (b = the block index)")
#: Table entries per step of _check_kernel.
_CHECK_BLOCK = 256


# ----------------------------------------------------------------------------- jit kernels

@triton.jit
def _decode_kernel(Q, K, V, O, LSE2, MS, SEQLENS, BT,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   sbt0, sbt1, sob, soh, sos, som, sod, slb, slh, sls, slm,
                   GROUP, LQ, LK, LEFT, RIGHT, QK_SCALE, OUT_SCALE, NUM_SPLITS, NUM_RBLOCKS,
                   PAGE_SIZE, NUM_PAGES,
                   E: tl.constexpr, EV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_LEFT: tl.constexpr,
                   HAS_RIGHT: tl.constexpr, BOTTOM_RIGHT: tl.constexpr, SOFTCAP: tl.constexpr,
                   HAS_SEQLENS: tl.constexpr, PAGED: tl.constexpr, PAGE_TILES: tl.constexpr,
                   FINALIZE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """One split's online-softmax state. FINALIZE (one split): (o, lse2) in O, LSE2. Otherwise
    the raw state spec.online.State (m, l, acc) in log2 units: acc in O, l in LSE2, m in MS
    (unnormalized, so the merge adds no rounding beyond a single pass's rescales).
    K/V dim 0 is the batch, or the physical page if PAGED. A seqlen outside [0, LK] or a used
    page outside [0, NUM_PAGES) is never followed (clamped) and makes the state NaN: decode's
    validate=False contract (the host check is skipped there)."""
    pid = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    split = pid // NUM_RBLOCKS
    pid_r = pid % NUM_RBLOCKS
    b64 = b.to(tl.int64)
    if HAS_SEQLENS:
        lk_in = tl.load(SEQLENS + b).to(tl.int64)
        bad = (lk_in < 0) | (lk_in > LK)
        lk = tl.minimum(tl.maximum(lk_in, 0), LK).to(tl.int32)
    else:
        bad = tl.program_id(0) < 0  # False, as a scalar tensor (a loop-carried value)
        lk = LK
    if BOTTOM_RIGHT:  # spec.Mask.diagonal with this sequence's own length
        diag = lk - LQ
    else:
        diag = lk * 0
    # Rows are (g, i): query head hk * GROUP + g, query position i.
    offs_r = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = offs_r < GROUP * LQ
    g = offs_r // LQ
    i = offs_r - g * LQ
    h = hk * GROUP + g
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    # [BLOCK_M, BLOCK_DK]
    q = load2d(Q + b64 * sqb + h[:, None].to(tl.int64) * sqh + i[:, None].to(tl.int64) * sqm
               + offs_dk[None, :].to(tl.int64) * sqd, offs_r, GROUP * LQ, offs_dk, E, True, E != BLOCK_DK)
    lo, hi = key_range(i, LQ, lk, diag, LEFT, RIGHT, HAS_LEFT, HAS_RIGHT)
    # This split's keys: [c_lo, c_hi), whole tiles, the last split shorter (flash-decoding).
    chunk = tl.cdiv(tl.cdiv(lk, NUM_SPLITS), BLOCK_N) * BLOCK_N
    c_lo = split * chunk
    c_hi = tl.minimum(c_lo + chunk, lk)
    lo = tl.maximum(lo, c_lo)
    hi = tl.minimum(hi, c_hi)
    start, n_lead, n_masked, fstart, fend = span(lo, hi, valid, BLOCK_N, False)
    if PAGED:
        k_base = K + hk.to(tl.int64) * skh
        v_base = V + hk.to(tl.int64) * svh
    else:
        k_base = K + b64 * skb + hk.to(tl.int64) * skh
        v_base = V + b64 * svb + hk.to(tl.int64) * svh
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    # [BLOCK_M, BLOCK_DV]
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for t in range(0, n_masked):
        n = masked_block(t, start, n_lead, fend, BLOCK_N)
        offs_n = n + tl.arange(0, BLOCK_N)
        k_rows, v_rows, bad_page = _kv_rows(BT, b64, n, offs_n, lk, sbt0, sbt1, skb, skn, svb, svn, PAGE_SIZE,
                                            NUM_PAGES, PAGED, PAGE_TILES, True)
        bad = bad | bad_page
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, Q, offs_n, k_rows, v_rows, 0, 0, 0, i, lo,
                                  hi, skd, svd, 0, 0, LQ, lk, QK_SCALE, OUT_SCALE, E, EV, BLOCK_N, BLOCK_DK,
                                  BLOCK_DV, True, SOFTCAP, False, PRECISION, UPCAST, True, False)
    for n in range(fstart, fend, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        k_rows, v_rows, bad_page = _kv_rows(BT, b64, n, offs_n, lk, sbt0, sbt1, skb, skn, svb, svn, PAGE_SIZE,
                                            NUM_PAGES, PAGED, PAGE_TILES, False)
        bad = bad | bad_page
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, Q, offs_n, k_rows, v_rows, 0, 0, 0, i, lo,
                                  hi, skd, svd, 0, 0, LQ, lk, QK_SCALE, OUT_SCALE, E, EV, BLOCK_N, BLOCK_DK,
                                  BLOCK_DV, False, SOFTCAP, False, PRECISION, UPCAST, True, False)
    row_o = b64 * sob + h.to(tl.int64) * soh + split.to(tl.int64) * sos + i.to(tl.int64) * som
    o_ptrs = O + row_o[:, None] + offs_dv[None, :].to(tl.int64) * sod
    row_l = b64 * slb + h.to(tl.int64) * slh + split.to(tl.int64) * sls + i.to(tl.int64) * slm
    omask = valid[:, None] & (offs_dv[None, :] < EV)
    # invalid seqlen or page (validate=False): NaN, never a plausible number; NaN merges to NaN
    acc = tl.where(bad, float("nan"), acc)
    l_i = tl.where(bad, float("nan"), l_i)
    m_i = tl.where(bad, float("nan"), m_i)
    if FINALIZE:
        # spec.online.finalize; an empty sequence gives o = 0, lse = -inf.
        o, lse2 = finalize(acc, l_i, m_i)
        tl.store(o_ptrs, round_to(o, O.dtype.element_ty, UPCAST), mask=omask)
        tl.store(LSE2 + row_l, lse2, mask=valid)
    else:
        # An empty split stores the merge identity (-inf, 0, 0).
        tl.store(o_ptrs, acc, mask=omask)
        tl.store(LSE2 + row_l, l_i, mask=valid)
        tl.store(MS + row_l, m_i, mask=valid)


@triton.jit
def _kv_rows(BT, b64, n, offs_n, lk, sbt0, sbt1, skb, skn, svb, svn, PAGE_SIZE, NUM_PAGES,
             PAGED: tl.constexpr, PAGE_TILES: tl.constexpr, MASKED: tl.constexpr):
    """Offsets of keys offs_n = n + arange(BLOCK_N) in the cache, and whether a used key's page is
    out of range. Paged: physical page block_table[b, j // PAGE_SIZE]; entries past the sequence
    are never read (their pages may hold garbage); an out-of-range page reads page 0 instead (the
    caller turns the result into NaN). PAGE_TILES (page_size a multiple of BLOCK_N): the tile
    lies in one page, read once (n < lk: visited tiles start inside the sequence), and its rows
    are contiguous there."""
    if PAGED:
        if PAGE_TILES:
            slot = n // PAGE_SIZE
            page = tl.load(BT + b64 * sbt0 + slot.to(tl.int64) * sbt1).to(tl.int64)
            out = (page < 0) | (page >= NUM_PAGES)
            bad = out
        else:
            slot = offs_n // PAGE_SIZE
            if MASKED:
                page = tl.load(BT + b64 * sbt0 + slot.to(tl.int64) * sbt1, mask=offs_n < lk, other=0)
            else:
                page = tl.load(BT + b64 * sbt0 + slot.to(tl.int64) * sbt1)
            page = page.to(tl.int64)
            out = (page < 0) | (page >= NUM_PAGES)
            bad = tl.max(tl.where(out & (offs_n < lk), 1, 0), axis=0) > 0
        page = tl.where(out, 0, page)
        within = (offs_n - slot * PAGE_SIZE).to(tl.int64)
        k_rows = page * skb + within * skn
        v_rows = page * svb + within * svn
    else:
        bad = tl.program_id(0) < 0  # False, as a scalar tensor
        k_rows = offs_n.to(tl.int64) * skn
        v_rows = offs_n.to(tl.int64) * svn
    return k_rows, v_rows, bad


@triton.jit
def _merge_kernel(ACC, LS, MS, O, LSE2, H, LQ, NUM_SPLITS, sob, soh, som, sod,
                  EV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr, UPCAST: tl.constexpr):
    """Fold the splits' states (m_s, l_s, acc_s) with spec.online.merge, then finalize.

    Exact for any split by proofs/merge_algebra.py, theorem 2 (the merge is a commutative
    monoid and a homomorphism from key-set concatenation); empty splits are its identity
    (-inf, 0, 0), and an all-empty row shifts by 0 (spec.online.ScalarOps.shift), so no
    -inf - -inf is ever formed.
    """
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    b64 = b.to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    rmask = offs_m < LQ
    base = (b64 * H + h) * NUM_SPLITS
    m = tl.full([BLOCK_M], -float("inf"), tl.float32)
    for s in range(0, NUM_SPLITS):
        m = tl.maximum(m, tl.load(MS + (base + s) * LQ + offs_m, mask=rmask, other=-float("inf")))
    m_sh = tl.where(m == -float("inf"), 0.0, m)
    l = tl.zeros([BLOCK_M], tl.float32)
    # [BLOCK_M, BLOCK_DV]
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for s in range(0, NUM_SPLITS):
        alpha = tl.exp2(tl.load(MS + (base + s) * LQ + offs_m, mask=rmask, other=-float("inf")) - m_sh)
        l_s = tl.load(LS + (base + s) * LQ + offs_m, mask=rmask, other=0.0)
        # [BLOCK_M, BLOCK_DV]
        acc_s = load2d(ACC + ((base + s) * LQ + offs_m[:, None].to(tl.int64)) * EV + offs_dv[None, :],
                       offs_m, LQ, offs_dv, EV, True, EV != BLOCK_DV)
        l += alpha * l_s
        acc += alpha[:, None] * acc_s
    o, lse2 = finalize(acc, l, m)
    tl.store(O + b64 * sob + h.to(tl.int64) * soh + offs_m[:, None].to(tl.int64) * som
             + offs_dv[None, :].to(tl.int64) * sod, round_to(o, O.dtype.element_ty, UPCAST),
             mask=rmask[:, None] & (offs_dv[None, :] < EV))
    tl.store(LSE2 + (b64 * H + h) * LQ + offs_m, lse2, mask=rmask)


@triton.jit(debug=True)
def _check_kernel(SEQLENS, BT, sbt0, sbt1, CAPACITY, PAGE_SIZE, NUM_PAGES, MAX_PAGES,
                  HAS_SEQLENS: tl.constexpr, PAGED: tl.constexpr, BLOCK_P: tl.constexpr):
    """decode's validate=True on the device, one program per sequence b: 0 <= seqlens[b] <= CAPACITY
    and, PAGED, 0 <= block_table[b, p] < NUM_PAGES for each page p the sequence uses. A failure is a
    device-side assert (debug=True keeps tl.device_assert in the compiled code); no host sync.
    int64 throughout: debug=True also adds overflow asserts to int32 arithmetic."""
    b64 = tl.program_id(0).to(tl.int64)
    if HAS_SEQLENS:
        lk = tl.load(SEQLENS + b64).to(tl.int64)
        tl.device_assert((lk >= 0) & (lk <= CAPACITY), _SEQLENS_ASSERT)
        # pages used; a bad seqlen reads no further than the table (int64 sums, not tl.cdiv's int32 one)
        n_used = (tl.minimum(tl.maximum(lk, 0), CAPACITY) + PAGE_SIZE - 1) // PAGE_SIZE
    else:
        n_used = MAX_PAGES
    if PAGED:
        for p0 in range(0, n_used, BLOCK_P):
            # [BLOCK_P]
            p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
            live = p < n_used
            page = tl.load(BT + b64 * sbt0 + p * sbt1, mask=live, other=0).to(tl.int64)
            tl.device_assert(((page >= 0) & (page < NUM_PAGES)) | ~live, _PAGE_ASSERT)


# ----------------------------------------------------------------------------- launchers

def _check_int(x, name, lo=None):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if lo is not None and x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    return int(x)


def _host_resident(t):
    """Whether metadata t is checked on the host: a CPU tensor's values are read without a device sync."""
    return t.device.type == "cpu"


def _check_metadata(t, name, device):
    """seqlens / block_table: an int tensor on q's device, or on the host (copied over after the check)."""
    check_tensor(t, name, dtypes=(torch.int32, torch.int64), device=False)
    if t.device != device and not _host_resident(t):
        raise ValueError(f"{name} is on {t.device}, q on {device}: pass it on q's device, or on the CPU "
                         f"to have it checked on the host")


def _check_layout(q, k_cache, v_cache, block_table, page_size):
    """Shapes, dtypes and devices of the cache (no tensor values); returns (dims, capacity, page_size or 0)."""
    for x, n in ((q, "q"), (k_cache, "k_cache"), (v_cache, "v_cache")):
        check_tensor(x, n)
        if x.dim() != 4:
            raise ValueError(f"{n} must have rank 4, got shape {tuple(x.shape)}")
    b = q.shape[0]
    if block_table is None:
        if page_size is not None:
            raise ValueError("page_size is given but block_table is None (a contiguous cache has no pages)")
        dims = check_qkv(q, k_cache, v_cache, names=("q", "k_cache", "v_cache"))
        return dims, dims.lk, 0
    _check_metadata(block_table, "block_table", q.device)
    if block_table.dim() != 2 or block_table.shape[0] != b:
        raise ValueError(f"block_table must have shape (B={b}, max_pages), got {tuple(block_table.shape)}")
    ps = k_cache.shape[2]
    if page_size is not None and _check_int(page_size, "page_size", 1) != ps:
        raise ValueError(f"page_size={page_size} but k_cache has {ps} slots per page "
                         f"(shape (num_pages, Hkv, page_size, E) = {tuple(k_cache.shape)})")
    if ps < 1:
        raise ValueError(f"k_cache has page_size {ps}; it must be >= 1")
    if tuple(k_cache.shape[:3]) != tuple(v_cache.shape[:3]):
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                         f"must agree in (num_pages, Hkv, page_size)")
    capacity = block_table.shape[1] * ps
    virt_k = (b, k_cache.shape[1], capacity, k_cache.shape[3])
    virt_v = (b, v_cache.shape[1], capacity, v_cache.shape[3])
    dims = spec.check_dims(tuple(q.shape), virt_k, virt_v)
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q, k_cache, v_cache must share a dtype; got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if not (q.device == k_cache.device == v_cache.device):
        raise ValueError("q, k_cache, v_cache must be on one device")
    if max(dims.e, dims.ev) > 256:
        raise ValueError(f"head dims E={dims.e}, Ev={dims.ev} not supported (at most 256)")
    return dims, capacity, ps


def _check_seqlens_on_host(seqlens, capacity):
    """Host-resident seqlens against _seqlens_rule; returns max(seqlens) (0 for B = 0)."""
    lo, hi = (int(x) for x in torch.aminmax(seqlens)) if seqlens.numel() else (0, 0)
    if lo < 0 or hi > capacity:
        raise ValueError(f"{_seqlens_rule(capacity)}, got [{lo}, {hi}]")
    return hi


def _check_pages_on_host(block_table, seqlens, capacity, page_size, num_pages):
    """Host-resident block_table (and seqlens, or None: the whole capacity) against _page_rule."""
    used = torch.full((block_table.shape[0],), capacity) if seqlens is None else seqlens.to(torch.int64)
    live = torch.arange(block_table.shape[1])[None, :] < ((used + page_size - 1) // page_size)[:, None]
    bad = live & ((block_table < 0) | (block_table >= num_pages))
    if bad.any():
        bi, si = bad.nonzero()[0].tolist()
        raise ValueError(f"block_table[{bi}, {si}] = {int(block_table[bi, si])} {_page_rule(num_pages - 1)}")


def _check_on_device(seqlens, block_table, capacity, page_size, num_pages):
    """Queue _check_kernel (one program per sequence) before the decode kernels: no host sync."""
    paged = block_table is not None
    b = (block_table if paged else seqlens).shape[0]
    sl = seqlens if seqlens is not None else block_table
    bt = block_table if paged else seqlens
    _launch(_check_kernel, (b,), sl, bt, *(bt.stride() if paged else (0, 0)), capacity, max(page_size, 1),
            num_pages, block_table.shape[1] if paged else 0, HAS_SEQLENS=seqlens is not None, PAGED=paged,
            BLOCK_P=_CHECK_BLOCK, num_warps=1, num_stages=1)


def _check_cache(q, k_cache, v_cache, seqlens, block_table, page_size, validate=True):
    """Check the cache and its metadata without a device sync; returns (dims, capacity, lk_max,
    page_size or 0, device_check). validate: host-resident metadata are checked here (a ValueError);
    device_check says what is left to _check_on_device. lk_max: max(seqlens) where that is known
    without a sync, else the capacity."""
    dims, capacity, ps = _check_layout(q, k_cache, v_cache, block_table, page_size)
    if seqlens is not None:
        _check_metadata(seqlens, "seqlens", q.device)
        if seqlens.shape != (dims.batch,):
            raise ValueError(f"seqlens must have shape (B,) = ({dims.batch},), got {tuple(seqlens.shape)}")
    on_host = all(_host_resident(t) for t in (seqlens, block_table) if t is not None)
    num_pages = k_cache.shape[0]
    lk_max = capacity
    if validate and seqlens is not None and _host_resident(seqlens):
        lk_max = _check_seqlens_on_host(seqlens, capacity)
    if validate and block_table is not None and on_host:
        _check_pages_on_host(block_table, seqlens, capacity, ps, num_pages)
    elif block_table is not None and num_pages == 0:
        raise ValueError("k_cache has no pages; a block_table not checked on the host (validate=False, or on "
                         "the GPU) needs at least one (an unused page 0 is read in place of an out-of-range one)")
    return dims, capacity, lk_max, ps, validate and not on_host


# ----------------------------------------------------------------------------- public

def decode(q, k_cache, v_cache, *, seqlens=None, block_table=None, page_size=None, num_splits=None,
           causal="bottom_right", alignment=None, window=None, scale=None, softcap=None,
           return_lse=False, block_n=None, validate=True):
    """Attention of a few new query tokens against a KV cache, split over the keys (flash-decoding).

    Args:
        q: (B, H, Lq, E), Lq small (1 for one-token decode). Any strides.
        k_cache, v_cache: contiguous cache (B, Hkv, Lmax, E) / (B, Hkv, Lmax, Ev), or with
            ``block_table`` a paged cache (num_pages, Hkv, page_size, E) / (..., Ev).
        seqlens: (B,) int32/int64, valid keys per sequence (0 allowed: o = 0, lse = -inf);
            default: the whole cache (Lmax, or max_pages * page_size). On q's device or on the
            CPU (see ``validate``; copied over with non_blocking=True, so a pinned CPU tensor must
            not change until the call's kernels have run).
        block_table: (B, max_pages) int32/int64: logical page p of sequence b is physical page
            block_table[b, p]. Only the pages a sequence uses are read; the rest may hold
            garbage (its entries and pages are never touched). On q's device or on the CPU.
        page_size: must equal k_cache.shape[2] when given (any size >= 1, odd ones too).
        num_splits: number of key splits in SPLIT_RANGE; default picked from B*Hkv and the
            length (1 under the interpreter). Empty splits merge as the identity.
        causal: default "bottom_right" (the new tokens are the last positions of each sequence,
            aligned to that sequence's own length); also False, True (= top_left), "top_left".
        alignment, window, scale, softcap: as in :func:`flashproof.kernels.attention`.
        return_lse: also return the natural-log LSE (float32, (B, H, Lq)).
        block_n: keys per tile (power of two 16..256); default from a heuristic.
        validate: check 0 <= seqlens[b] <= capacity and, for each page a sequence uses,
            0 <= block_table[b, p] < num_pages; never a device-to-host sync. Metadata on the
            CPU are checked on the host: a ValueError naming the bad entry. Metadata on q's
            device are checked by a small kernel queued before the decode, with device-side
            asserts: CUDA prints the rule broken and the block index (= b) of the bad sequence,
            and, as with torch's own indexing asserts, a failed assert ends the CUDA context (the
            next synchronizing call raises "device-side assert triggered"; the process must
            restart). Pass seqlens / block_table on the CPU to get a catchable error. On the
            device the default num_splits follows the capacity, as max(seqlens) is not known.
            With the metadata on q's device the validated call is CUDA-graph capturable too
            (H200: replay == eager, benchmarks/gpu_kernel_checks.py decode, session 7).
            False: no check at all (CUDA-graph capturable with the metadata on q's device); the
            kernel still never reads outside the cache or the table: a sequence whose seqlen is
            outside [0, capacity] or that uses a page outside k_cache gets NaN output and LSE,
            the other sequences are unaffected.

    Returns:
        o (B, H, Lq, Ev) in q's dtype, or (o, lse). Not differentiable (inference only).
    """
    for name, flag in (("return_lse", return_lse), ("validate", validate)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    dims, capacity, lk_max, ps, device_check = _check_cache(q, k_cache, v_cache, seqlens, block_table, page_size,
                                                           validate)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    scale = spec.resolve_scale(scale, dims.e)
    cap = spec.normalize_softcap(softcap)
    interp = interpreting()
    if block_n is None:
        block_n = default_decode_block(head_dim=dims.e, head_dim_v=dims.ev, dtype=q.dtype, interpret=interp,
                                       page_size=ps)
    elif _check_int(block_n, "block_n") not in (16, 32, 64, 128, 256):
        raise ValueError(f"block_n must be a power of two in 16..256, got {block_n!r}")
    block_n = int(block_n)
    group = dims.heads // dims.kv_heads
    rows = group * dims.lq
    block_m = min(max(16, triton.next_power_of_2(max(rows, 1))), 64)
    n_rblocks = triton.cdiv(rows, block_m)
    if num_splits is None:
        num_splits = default_num_splits(programs=dims.batch * dims.kv_heads * n_rblocks, lk=lk_max,
                                        block_n=block_n, interpret=interp,
                                        **({} if interp else {"num_sms": num_sms(q.device)}))
    elif _check_int(num_splits, "num_splits") not in SPLIT_RANGE:
        raise ValueError(f"num_splits must be in {SPLIT_RANGE.start}..{SPLIT_RANGE.stop - 1}, got {num_splits}")
    num_splits = int(num_splits)
    # The diagonal is per sequence (in-kernel); the window/causal sides come from spec.Mask.
    _, left, right, has_left, has_right = mask_args(mask, dims.lq, capacity)
    qk_scale, out_scale = logit_scales(scale, cap)
    b, h, lq, ev = dims.batch, dims.heads, dims.lq, dims.ev
    o = torch.empty((b, h, lq, ev), dtype=q.dtype, device=q.device)
    lse2 = torch.empty((b, h, lq), dtype=torch.float32, device=q.device)
    if num_splits == 1:
        out, out_l, out_m = o, lse2, lse2
        so = (*o.stride()[:2], 0, *o.stride()[2:])
        sl = (*lse2.stride()[:2], 0, lse2.stride()[2])
    else:
        out = torch.empty((b, h, num_splits, lq, ev), dtype=torch.float32, device=q.device)
        out_l = torch.empty((b, h, num_splits, lq), dtype=torch.float32, device=q.device)
        out_m = torch.empty_like(out_l)
        so, sl = out.stride(), out_l.stride()
    # Every argument is checked: host metadata go over (a copy queued like a kernel), then the device check.
    seqlens, block_table = (None if t is None else t.to(q.device, non_blocking=True) for t in (seqlens, block_table))
    if device_check:
        _check_on_device(seqlens, block_table, capacity, ps, k_cache.shape[0])
    paged = block_table is not None
    bt = block_table if paged else lse2
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _launch(_decode_kernel, (n_rblocks * num_splits, dims.kv_heads, b), q, k_cache, v_cache, out, out_l,
            out_m, lse2 if seqlens is None else seqlens, bt, *q.stride(), *k_cache.stride(),
            *v_cache.stride(), *(bt.stride() if paged else (0, 0)), *so, *sl,
            group, lq, capacity, left, right, qk_scale, out_scale, num_splits, n_rblocks, max(ps, 1),
            k_cache.shape[0] if paged else 0,
            E=dims.e, EV=ev, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DK=head_block(dims.e),
            BLOCK_DV=head_block(ev), HAS_LEFT=has_left, HAS_RIGHT=has_right,
            BOTTOM_RIGHT=mask.alignment == spec.BOTTOM_RIGHT, SOFTCAP=cap is not None,
            HAS_SEQLENS=seqlens is not None, PAGED=paged, PAGE_TILES=paged and ps % block_n == 0,
            FINALIZE=num_splits == 1,
            PRECISION=precision, UPCAST=interp and q.dtype == torch.bfloat16, num_warps=4,
            num_stages=decode_num_stages(block_n=block_n, head_dim=dims.e, head_dim_v=ev, dtype=q.dtype))
    if num_splits > 1:
        bm = 16
        _launch(_merge_kernel, (triton.cdiv(lq, bm), h, b), out, out_l, out_m, o, lse2, h, lq, num_splits,
                *o.stride(), EV=ev, BLOCK_M=bm, BLOCK_DV=head_block(ev),
                UPCAST=interp and q.dtype == torch.bfloat16, num_warps=4, num_stages=1)
    return (o, lse2 * LN2) if return_lse else o

"""A correct tiled FlashAttention in torch: the suite's development target and a correct peer.

It computes what a FlashAttention-2 kernel computes, in the same precisions: logits in fp32
from the stored q/k, the online softmax over key tiles through spec.block_state / spec.merge /
spec.finalize (no second copy of the merge), P rounded to the storage dtype before P@V, fp32
accumulators, the output rounded to the storage dtype, LSE in fp32. Tiles are (block_m,
block_n); split-KV decode merges ``num_splits`` partial states, paged KV reads through a block
table. Masked keys are dropped, never multiplied by 0, so garbage in them cannot leak.

Everything runs in autograd-friendly torch ops, so the peer is differentiable (backward by
autograd through the tiled forward, in fp32). Its Target is ``builtin_targets.tiled_peer``.
"""
from __future__ import annotations

import math

import torch

from flashproof import spec
from flashproof.spec import ScalarOps, State, block_state, finalize, identity, merge

__all__ = ["TorchRowOps", "tiled_attention", "tiled_decode", "PEER_TILES"]

#: Tile configs the peer accepts (block_m, block_n).
PEER_TILES = ({"block_m": 16, "block_n": 16}, {"block_m": 32, "block_n": 16}, {"block_m": 16, "block_n": 32},
              {"block_m": 8, "block_n": 8}, {"block_m": 64, "block_n": 64})


class TorchRowOps(ScalarOps):
    """spec's ops over a block of query rows in torch (fp32 accumulators).

    A "score sequence" is a one-element list holding the (rows, n) logit block (-inf = masked),
    so spec.block_state's per-key loop runs once over the whole block; a "scalar" is a (rows,)
    tensor and ``acc`` a (rows, Ev) tensor. P is rounded to ``storage`` before P@V, as the
    kernels do; the row sum uses the fp32 P (FlashAttention-2's choice).
    """

    neg_inf = -math.inf
    zero = 0.0

    def __init__(self, storage: torch.dtype):
        self.storage = storage

    def exp(self, x):
        return torch.exp(x)

    def log(self, x):
        return torch.log(x)

    def maximum(self, a, b):
        a, b = torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
        return torch.maximum(a, b)  # NaN propagates

    def is_neg_inf(self, x):
        return torch.isneginf(torch.as_tensor(x))

    def shift(self, m):
        return torch.where(torch.isneginf(m), torch.zeros_like(m), m)

    def exp_shifted(self, x, m):
        masked = torch.isneginf(x)
        # masked entries see exp(m - m) = 1 in the discarded branch: exp(0 - m) could be inf, and
        # where's backward would then form 0 * inf = NaN in the gradient
        safe = torch.where(masked, m[:, None].expand_as(x), x)
        return torch.where(masked, torch.zeros_like(x), torch.exp(safe - m[:, None]))

    def row_max(self, s):
        (blk,) = s
        if blk.shape[-1] == 0:
            return torch.full(blk.shape[:-1], -math.inf, dtype=torch.float32)
        return blk.amax(dim=-1)

    def total(self, p):
        (pb,) = p
        return pb.sum(dim=-1)

    def weighted_sum(self, s, p, v, dim):
        (blk,), (pb,) = s, p
        keep = ~torch.isneginf(blk)
        pr = pb.to(self.storage).to(torch.float32)  # P rounded to the storage dtype, as the kernels
        finite = torch.isfinite(v)
        # Masked keys are dropped, not multiplied by 0: 0 * NaN would leak.
        out = pr @ torch.where(finite, v, torch.zeros_like(v))
        if not bool(finite.all()):
            bad_key = ~finite.all(dim=-1)  # (n,)
            rows = (keep & bad_key[None, :]).any(dim=-1)
            if bool(rows.any()):
                contrib = torch.where(keep[:, :, None], pr[:, :, None] * v[None, :, :], torch.zeros((), dtype=v.dtype))
                out = torch.where(rows[:, None], contrib.sum(dim=1), out)
        return out

    def vec_scale(self, a, acc):
        return a[:, None] * acc

    def vec_add(self, x, y):
        return x + y

    def zeros(self, dim):
        return torch.zeros(dim)

    def full(self, shape, x):
        return torch.full(shape, x, dtype=torch.float32)

    def is_empty(self, l):
        return l == 0

    def finalize(self, st: State):
        empty = st.l == 0
        l_safe = torch.where(empty, torch.ones_like(st.l), st.l)  # no 0/0 even in the unused branch
        o = torch.where(empty[:, None], torch.zeros_like(st.acc), st.acc / l_safe[:, None])
        m_safe = torch.where(torch.isneginf(st.m), torch.zeros_like(st.m), st.m)
        lse = torch.where(empty, torch.full_like(st.l, -math.inf), m_safe + torch.log(l_safe))
        return o, lse


def _logits(qb, kb, scale, softcap, bias):
    s = (qb @ kb.transpose(-1, -2)) * scale  # fp32, as the kernels' fp32 accumulators
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias
    return s


def _check_tile(block_m, block_n):
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"{name} must be a positive int, got {b!r}")


def tiled_attention(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None,
                    attn_mask=None, return_lse=False, block_m=16, block_n=16, splits=None):
    """FlashAttention-2 forward in torch: o (B,H,Lq,Ev) in q's dtype, and lse (fp32) if asked.

    ``splits`` (optional) lists key boundaries: each [b_i, b_{i+1}) range is reduced to its own
    state and the states are merged at the end (split-KV), instead of one running state.
    """
    _check_tile(block_m, block_n)
    d = spec.check_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    sc = spec.resolve_scale(scale, d.e)
    cap = spec.normalize_softcap(softcap)
    storage = q.dtype
    ops = TorchRowOps(storage)
    qf, kf, vf = q.to(torch.float32), k.to(torch.float32), v.to(torch.float32)
    sc32 = torch.tensor(sc, dtype=torch.float32)
    cap32 = None if cap is None else torch.tensor(cap, dtype=torch.float32)
    bmask = bbias = None
    if attn_mask is not None:
        am = attn_mask.expand(d.batch, d.heads, d.lq, d.lk)
        if am.dtype == torch.bool:
            bmask = am
        else:
            bbias = am.to(torch.float32)
    rep = d.heads // d.kv_heads
    o = torch.zeros(d.batch, d.heads, d.lq, d.ev, dtype=torch.float32)
    lse = torch.full((d.batch, d.heads, d.lq), -math.inf, dtype=torch.float32)
    bounds = list(range(0, d.lk, block_n)) + [d.lk] if splits is None else list(splits)
    rows_out_o, rows_out_l = [], []
    for b in range(d.batch):
        for h in range(d.heads):
            hk = h // rep
            for r0 in range(0, d.lq, block_m):
                r1 = min(d.lq, r0 + block_m)
                lo, hi = mask.key_range(torch.arange(r0, r1).numpy(), d.lq, d.lk)
                span_lo, span_hi = int(lo.min()), int(hi.max())
                st = identity(d.ev, ops, batch=(r1 - r0,))
                for t0, t1 in _tiles(bounds, block_n, splits is not None):
                    if t1 <= span_lo or t0 >= span_hi:
                        continue  # the whole tile is masked for every row of the block: skipped
                    allowed = torch.from_numpy(mask.allowed(torch.arange(r0, r1).numpy()[:, None],
                                                            torch.arange(t0, t1).numpy()[None, :], d.lq, d.lk))
                    bias = None
                    if bmask is not None:
                        allowed = allowed & bmask[b, h, r0:r1, t0:t1]
                    if bbias is not None:
                        bias = bbias[b, h, r0:r1, t0:t1]
                        allowed = allowed & ~torch.isneginf(bias)  # an additive -inf masks the key
                    s = _logits(qf[b, h, r0:r1], kf[b, hk, t0:t1], sc32, cap32, bias)
                    s = torch.where(allowed, s, torch.full_like(s, -math.inf))
                    st = merge(st, block_state([s], vf[b, hk, t0:t1], d.ev, ops), ops)
                ob, lb = finalize(st, ops)
                rows_out_o.append(((b, h, r0, r1), ob))
                rows_out_l.append(((b, h, r0, r1), lb))
    # Assemble without in-place writes on autograd leaves.
    o = _assemble(rows_out_o, (d.batch, d.heads, d.lq, d.ev))
    lse = _assemble(rows_out_l, (d.batch, d.heads, d.lq))
    out = o.to(storage)
    return (out, lse) if return_lse else out


def _tiles(bounds, block_n, is_split):
    """Key tiles: block_n tiles, or within each split range block_n tiles reduced to one state."""
    if not is_split:
        return list(zip(bounds[:-1], bounds[1:]))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for t in range(a, b, block_n):
            out.append((t, min(b, t + block_n)))
    return out


def _assemble(parts, shape):
    if not parts:
        return torch.zeros(shape) if len(shape) == 4 else torch.full(shape, -math.inf)
    b_, h_ = shape[0], shape[1]
    rows = {}
    for (b, h, r0, r1), x in parts:
        rows.setdefault((b, h), []).append((r0, x))
    per_bh = []
    for b in range(b_):
        hs = []
        for h in range(h_):
            chunks = [x for _, x in sorted(rows[(b, h)], key=lambda t: t[0])]
            hs.append(torch.cat(chunks, dim=0))
        per_bh.append(torch.stack(hs))
    return torch.stack(per_bh)


def _split_state(qf, kf, vf, *, allowed, sc32, cap32, ops, block_n, t0, t1, ev):
    """State of keys [t0, t1) for the rows of qf, folded tile by tile."""
    st = identity(ev, ops, batch=(qf.shape[0],))
    for a in range(t0, t1, block_n):
        b_ = min(t1, a + block_n)
        s = _logits(qf, kf[a:b_], sc32, cap32, None)
        s = torch.where(allowed[:, a:b_], s, torch.full_like(s, -math.inf))
        st = merge(st, block_state([s], vf[a:b_], ev, ops), ops)
    return st


def tiled_decode(q, k_cache, v_cache, *, seqlens=None, block_table=None, page_size=None, num_splits=None,
                 causal="bottom_right", window=None, scale=None, softcap=None, return_lse=False, block_n=16):
    """Split-KV decode over a contiguous or paged KV cache (see Target.decode for the layout).

    Each sequence's keys are cut into ``num_splits`` contiguous parts (some may be empty); each
    part is reduced to a state and the states are merged with spec.merge, in split order.
    """
    b_, h_, lq, e = q.shape
    paged = block_table is not None
    if paged:
        if page_size is None:
            page_size = int(k_cache.shape[2])
        if int(k_cache.shape[2]) != page_size:
            raise ValueError(f"page_size {page_size} does not match k_cache.shape[2] = {k_cache.shape[2]}")
        hkv, ev = int(k_cache.shape[1]), int(v_cache.shape[-1])
        lmax = int(block_table.shape[1]) * page_size
    else:
        hkv, lmax, ev = int(k_cache.shape[1]), int(k_cache.shape[2]), int(v_cache.shape[-1])
    if seqlens is None:
        seqlens = torch.full((b_,), lmax, dtype=torch.int32)
    n_splits = 1 if num_splits is None else int(num_splits)
    if n_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    storage = q.dtype
    ops = TorchRowOps(storage)
    sc = spec.resolve_scale(scale, e)
    cap = spec.normalize_softcap(softcap)
    sc32 = torch.tensor(sc, dtype=torch.float32)
    cap32 = None if cap is None else torch.tensor(cap, dtype=torch.float32)
    # causal follows spec (True = top_left); a window without causal aligns bottom-right, as decode does
    mask = spec.make_mask(causal=causal, window=window, alignment=None if causal else "bottom_right")
    rep = h_ // hkv
    outs_o, outs_l = [], []
    for b in range(b_):
        lk = int(seqlens[b])
        if paged:
            pages = [int(p) for p in block_table[b, : (lk + page_size - 1) // page_size]]
            kb = torch.cat([k_cache[p] for p in pages], dim=1)[:, :lk] if pages else k_cache[:0, :, :0].reshape(hkv, 0, e)
            vb = torch.cat([v_cache[p] for p in pages], dim=1)[:, :lk] if pages else v_cache[:0, :, :0].reshape(hkv, 0, ev)
        else:
            kb, vb = k_cache[b, :, :lk], v_cache[b, :, :lk]
        allowed = torch.from_numpy(mask.matrix(lq, lk))
        per = -(-lk // n_splits) if lk else 0
        hs_o, hs_l = [], []
        for h in range(h_):
            qf = q[b, h].to(torch.float32)
            kf, vf = kb[h // rep].to(torch.float32), vb[h // rep].to(torch.float32)
            st = identity(ev, ops, batch=(lq,))
            for sidx in range(n_splits):
                t0, t1 = min(lk, sidx * per), min(lk, (sidx + 1) * per)
                part = _split_state(qf, kf, vf, allowed=allowed, sc32=sc32, cap32=cap32, ops=ops,
                                    block_n=block_n, t0=t0, t1=t1, ev=ev)
                st = merge(st, part, ops)  # empty parts are the identity
            o, l = finalize(st, ops)
            hs_o.append(o)
            hs_l.append(l)
        outs_o.append(torch.stack(hs_o))
        outs_l.append(torch.stack(hs_l))
    o = torch.stack(outs_o).to(storage)
    lse = torch.stack(outs_l)
    return (o, lse) if return_lse else o

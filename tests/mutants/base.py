"""A correct tiled online-softmax attention (forward, backward, split-KV/paged decode) with hooks.

This is the zoo's correct peer and the body every planted-bug mutant (zoo.py) subclasses: each
mutant overrides ONE hook. It runs the recurrence of flashproof.spec (``block_state``, ``merge``,
``finalize``) over float32 numpy arrays, tile by tile like a FlashAttention kernel:

* query tiles of ``block_m`` rows; for each, the key tiles of ``block_n`` keys that the
  structural mask (causal / window) can reach, from the tile holding the first allowed key;
* K/V tiles are loaded zero-padded to ``block_n`` (as ``tl.load(..., other=0)``) and the padded
  and masked logits are set to -inf before the block state;
* fp32 scores and accumulators; P rounded to the storage dtype before P@V for fp16/bf16 inputs
  (as real kernels do, and as the error model allows); O rounded to the storage dtype on store;
* exp and log are evaluated in float64 and rounded to float32 (so c_exp = 1 ulp holds);
* decode: per batch element the keys ``[0, seqlens[b])`` (gathered through ``block_table``
  when paged) are split into ``num_splits`` ranges of whole tiles; each split writes a partial
  (O, LSE) and the partials are combined with spec.merge, as FlashDecoding does.

The backward recomputes P = exp(S - LSE) in fp32 over the whole row (FA2's D = rowsum(dO * O)
formulation), masked keys dropped (never multiplied by 0), dK/dV summed over each GQA group.

Inputs are torch CPU tensors; outputs are torch tensors in the input dtype (LSE float32).
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from flashproof import spec
from flashproof.spec import Float32Ops, State

__all__ = ["Launch", "TiledAttention", "to_f32", "DTYPES", "TILE_CONFIGS", "SPLIT_RANGE"]

F32 = np.float32
NEG_INF = F32(-np.inf)
#: storage dtypes the tiled implementation accepts (scores and accumulators are fp32 for all).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: tile shapes (block_m, block_n) the forward accepts; the property suite draws from them.
TILE_CONFIGS = (
    {"block_m": 16, "block_n": 16},
    {"block_m": 32, "block_n": 16},
    {"block_m": 16, "block_n": 32},
    {"block_m": 8, "block_n": 32},
)
#: num_splits accepted by decode (inclusive).
SPLIT_RANGE = (1, 16)


def to_f32(t: torch.Tensor) -> np.ndarray:
    """A torch tensor as a float32 numpy array (exact for fp16/bf16/fp32), honouring its strides."""
    return t.detach().to(device="cpu", dtype=torch.float32).numpy()


@dataclass
class Launch:
    """The validated options of one forward (or one decode batch element)."""

    mask: spec.Mask
    scale: float
    softcap: float | None
    #: bool (B|1, H|1, Lq, Lk) of keys the attn_mask allows (bool mask, or additive != -inf)
    keep: np.ndarray | None
    #: float32 additive bias (B|1, H|1, Lq, Lk)
    bias: np.ndarray | None
    block_m: int
    block_n: int
    dtype: torch.dtype
    dims: spec.Dims


class TiledAttention:
    """Correct tiled attention; every method a mutant may override is marked ``hook``."""

    name = "tiled_reference"
    block_m = 16
    block_n = 16
    #: whether P is rounded to the storage dtype before P@V (fp16/bf16 inputs only)
    round_p = True

    # ------------------------------------------------------------------ public entry points
    def forward(self, q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None,
                attn_mask=None, return_lse=False, block_m=None, block_n=None):
        call = self.prepare(q, k, v, causal=causal, alignment=alignment, window=window, scale=scale,
                            softcap=softcap, attn_mask=attn_mask, block_m=block_m, block_n=block_n)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            o, lse = _AttentionFn.apply(q, k, v, self, call)
        else:
            o, lse = self.forward_impl(q, k, v, call)
        return (o, lse) if return_lse else o

    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        """torch.nn.functional.scaled_dot_product_attention's signature (top-left causal)."""
        if dropout_p:
            raise ValueError(f"dropout_p must be 0 (no dropout in this implementation), got {dropout_p}")
        if query.dim() == 4 and key.dim() == 4 and query.shape[1] != key.shape[1] and not enable_gqa:
            raise ValueError(f"query has {query.shape[1]} heads and key {key.shape[1]}: pass enable_gqa=True")
        if is_causal and attn_mask is not None:
            raise ValueError("attn_mask and is_causal cannot both be set")
        return self.forward(query, key, value, causal=bool(is_causal), attn_mask=attn_mask, scale=scale)

    def decode(self, q, k_cache, v_cache, *, seqlens=None, block_table=None, page_size=None,
               num_splits=None, causal=True, window=None, scale=None, softcap=None, return_lse=False):
        """Split-KV decode over a contiguous (B, Hkv, Lmax, E) or paged (pages, Hkv, page, E) cache.

        Row b attends the keys ``[0, seqlens[b])`` as ``forward(q[b], k[b, :, :seqlens[b]], ...)``
        would, with causal and window bottom-right aligned to that length (Target.decode's contract).
        """
        b, lmax, seqlens, page_size = self.check_decode(q, k_cache, v_cache, seqlens, block_table, page_size)
        splits = 1 if num_splits is None else int(num_splits)
        if not SPLIT_RANGE[0] <= splits <= SPLIT_RANGE[1]:
            raise ValueError(f"num_splits must be in {SPLIT_RANGE}, got {num_splits}")
        dims = spec.check_dims(tuple(q.shape), (b, k_cache.shape[1], lmax, k_cache.shape[-1]),
                               (b, v_cache.shape[1], lmax, v_cache.shape[-1]))
        mask = self.make_mask(causal=spec.BOTTOM_RIGHT if causal else False, window=window,
                              alignment=spec.BOTTOM_RIGHT)
        scale_ = self.resolve_scale(scale, dims.e)
        cap = spec.normalize_softcap(softcap)
        ops = self.make_ops(q.dtype)
        qf = self.load(q)
        kvmap = self.kv_map(dims.heads, dims.kv_heads)
        bn = self.block_n
        # Every batch element gets the same split grid (tiles of the longest row), as a launch does.
        n_tiles = -(-int(max(seqlens, default=0)) // bn)
        per = -(-n_tiles // splits) if n_tiles else 0
        o_part = np.zeros((splits, dims.batch, dims.heads, dims.lq, dims.ev), F32)
        lse_part = np.full((splits, dims.batch, dims.heads, dims.lq), NEG_INF)
        for bi in range(dims.batch):
            lk = int(seqlens[bi])
            kb = self.gather(k_cache, bi, lk, block_table, page_size)[kvmap][None]
            vb = self.gather(v_cache, bi, lk, block_table, page_size)[kvmap][None]
            call = Launch(mask, scale_, cap, None, None, self.block_m, bn, q.dtype,
                        spec.Dims(1, dims.heads, dims.kv_heads, dims.lq, lk, dims.e, dims.ev))
            for s in range(splits):
                span = (s * per * bn, (s + 1) * per * bn)
                st = self.attend(qf[bi:bi + 1], kb, vb, call, ops, span=span)
                o_s, lse_s = self.finalize(st, ops)
                o_part[s, bi], lse_part[s, bi] = o_s[0], lse_s[0]
        o, lse = self.combine_splits(o_part, lse_part, ops)
        o_t = self.store(o, q.dtype)
        return (o_t, torch.from_numpy(np.ascontiguousarray(lse, F32))) if return_lse else o_t

    # ------------------------------------------------------------------ validation
    def prepare(self, q, k, v, *, causal, alignment, window, scale, softcap, attn_mask, block_m, block_n) -> Launch:
        for name, t in (("query", q), ("key", k), ("value", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in DTYPES:
                raise TypeError(f"{name} dtype must be one of {DTYPES}, got {t.dtype}")
        if not (q.dtype == k.dtype == v.dtype):
            raise TypeError(f"query, key, value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
        dims = spec.check_dims(tuple(q.shape), tuple(k.shape), tuple(v.shape))
        bm = self.block_m if block_m is None else block_m
        bn = self.block_n if block_n is None else block_n
        for name, x in (("block_m", bm), ("block_n", bn)):
            if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x <= 0:
                raise ValueError(f"{name} must be a positive int, got {x!r}")
        mask = self.make_mask(causal=causal, window=window, alignment=alignment)
        scale_ = self.resolve_scale(scale, dims.e)
        cap = spec.normalize_softcap(softcap)
        keep = bias = None
        if attn_mask is not None:
            if not isinstance(attn_mask, torch.Tensor):
                raise TypeError(f"attn_mask must be None or a torch.Tensor, got {type(attn_mask).__name__}")
            shape = (dims.batch, dims.heads, dims.lq, dims.lk)
            try:
                torch.broadcast_shapes(tuple(attn_mask.shape), shape)
            except RuntimeError:
                raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to {shape}") from None
            if attn_mask.dtype == torch.bool:
                keep = self.bool_keep(np.broadcast_to(attn_mask.detach().cpu().numpy(), shape))
            elif attn_mask.dtype.is_floating_point:
                bias = np.broadcast_to(to_f32(attn_mask), shape)
                keep = ~np.isneginf(bias)
            else:
                raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
        return Launch(mask, scale_, cap, keep, bias, int(bm), int(bn), q.dtype, dims)

    def check_decode(self, q, k_cache, v_cache, seqlens, block_table, page_size):
        for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"{name} must be a rank-4 torch.Tensor")
            if t.dtype not in DTYPES:
                raise TypeError(f"{name} dtype must be one of {DTYPES}, got {t.dtype}")
        b = q.shape[0]
        if block_table is None:
            if page_size is not None:
                raise ValueError("page_size needs a block_table")
            if k_cache.shape[0] != b:
                raise ValueError(f"k_cache batch {k_cache.shape[0]} != q batch {b}")
            lmax = k_cache.shape[2]
        else:
            if block_table.dim() != 2 or block_table.shape[0] != b:
                raise ValueError(f"block_table must be (B, pages per row) = ({b}, n), got {tuple(block_table.shape)}")
            if page_size is not None and page_size != k_cache.shape[2]:
                raise ValueError(f"page_size {page_size} != k_cache.shape[2] {k_cache.shape[2]}")
            page_size = k_cache.shape[2]
            lmax = block_table.shape[1] * page_size
        if seqlens is None:
            seqlens = np.full(b, lmax, np.int64)
        else:
            seqlens = np.asarray(torch.as_tensor(seqlens).cpu(), np.int64).reshape(-1)
            if seqlens.shape != (b,) or (seqlens < 0).any() or (seqlens > lmax).any():
                raise ValueError(f"seqlens must be (B,) = ({b},) ints in [0, {lmax}], got {seqlens.tolist()}")
        return b, lmax, seqlens, page_size

    # ------------------------------------------------------------------ hooks: semantics
    def make_mask(self, *, causal, window, alignment) -> spec.Mask:
        """hook: the structural mask."""
        return spec.make_mask(causal=causal, window=window, alignment=alignment)

    def resolve_scale(self, scale, e: int) -> float:
        """hook: the softmax scale."""
        return spec.resolve_scale(scale, e)

    def kv_map(self, heads: int, kv_heads: int) -> np.ndarray:
        """hook: the KV head each query head reads."""
        return np.array([spec.kv_head(h, heads, kv_heads) for h in range(heads)], dtype=np.int64)

    def bool_keep(self, mask: np.ndarray) -> np.ndarray:
        """hook: a boolean attn_mask (True = may attend) as the keys to keep."""
        return mask

    def make_ops(self, dtype: torch.dtype) -> Float32Ops:
        """hook: the arithmetic of the recurrence: spec's float32 ops, P rounded to the storage dtype."""
        return Float32Ops(spec.dtype_name(dtype) if (self.round_p and dtype != torch.float32) else None)

    # ------------------------------------------------------------------ hooks: data movement
    def load(self, t: torch.Tensor) -> np.ndarray:
        """hook: read a tensor (strides honoured)."""
        return to_f32(t)

    def load_qk(self, x: np.ndarray) -> np.ndarray:
        """hook: an operand of Q K^T as the matmul unit sees it (fp32: unchanged)."""
        return x

    def store(self, o: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        """hook: write O in the storage dtype."""
        return torch.from_numpy(np.ascontiguousarray(o, F32)).to(dtype)

    def gather(self, cache: torch.Tensor, b: int, lk: int, block_table, page_size) -> np.ndarray:
        """hook: the first ``lk`` keys of row ``b`` as (Hkv, lk, E), through the block table."""
        if block_table is None:
            return self.load(cache[b, :, :lk])
        j = np.arange(lk)
        pages = np.asarray(block_table[b].cpu(), np.int64)[j // page_size]
        return self.load(cache)[pages, :, j % page_size].transpose(1, 0, 2)

    # ------------------------------------------------------------------ hooks: the tile loop
    def query_tiles(self, lq: int, bm: int):
        """hook: start rows of the query tiles."""
        return range(0, lq, bm)

    def key_tiles(self, lo: int, hi: int, bn: int, lk: int):
        """hook: start keys of the tiles covering keys [lo, hi) (the first one may start before lo)."""
        return range(lo // bn * bn, hi, bn)

    def tile_order(self, starts):
        """hook: the order the key tiles of one query tile are visited in."""
        return list(starts)

    def init_state(self, shape, ev: int, ops) -> State:
        """hook: the running state before the first key tile: spec's identity."""
        return spec.identity(ev, ops, batch=shape)

    def scores(self, q: np.ndarray, k: np.ndarray, call: Launch) -> np.ndarray:
        """hook: scale * q k^T, then softcap (fp32). q (..., m, E), k (..., n, E)."""
        with np.errstate(over="ignore", invalid="ignore"):
            s = np.matmul(self.load_qk(q), self.load_qk(k).swapaxes(-1, -2)) * F32(call.scale)
            if call.softcap is not None:
                c = F32(call.softcap)
                s = c * np.tanh(s / c)
        return s.astype(F32, copy=False)

    def add_bias(self, s: np.ndarray, bias: np.ndarray, call: Launch) -> np.ndarray:
        """hook: add the additive attn_mask to the (scaled, softcapped) scores."""
        with np.errstate(invalid="ignore"):
            return s + bias

    def mask_scores(self, s, allowed, in_bounds, rows, cols, call: Launch) -> np.ndarray:
        """hook: masked and padded keys get logit -inf (dropped, never multiplied by 0)."""
        return np.where(allowed, s, NEG_INF)

    def block(self, s: np.ndarray, v: np.ndarray, ops) -> State:
        """hook: the state of one tile; s (B,H,m,n), v (B,H,n,Ev)."""
        with np.errstate(invalid="ignore", over="ignore"):
            return spec.block_state(s, v[:, :, None], v.shape[-1], ops)

    def merge(self, a: State, b: State, ops) -> State:
        """hook: the online-softmax merge."""
        with np.errstate(invalid="ignore", over="ignore"):
            return spec.merge(a, b, ops)

    def finalize(self, st: State, ops):
        """hook: (O, LSE) of a state."""
        return spec.finalize(st, ops)

    def combine_splits(self, o_part: np.ndarray, lse_part: np.ndarray, ops):
        """hook: combine the split-KV partials (S, B, H, Lq[, Ev]) into (O, LSE).

        A partial (o, lse) is the state (lse, 1, o) -- or the identity when lse = -inf.
        """
        st = spec.identity(o_part.shape[-1], ops)
        for o_s, lse_s in zip(o_part, lse_part):
            st = self.merge(st, spec.partial_state(o_s, lse_s, ops), ops)
        return self.finalize(st, ops)

    # ------------------------------------------------------------------ the kernel
    def forward_impl(self, q, k, v, call: Launch):
        d = call.dims
        kvmap = self.kv_map(d.heads, d.kv_heads)
        qf, kf, vf = self.load(q), self.load(k)[:, kvmap], self.load(v)[:, kvmap]
        ops = self.make_ops(call.dtype)
        st = self.attend(qf, kf, vf, call, ops)
        o, lse = self.finalize(st, ops)
        return self.store(o, call.dtype), torch.from_numpy(np.ascontiguousarray(lse, F32))

    def key_bounds(self, mask: spec.Mask, rows: np.ndarray, lq: int, lk: int):
        """[lo, hi) over the keys any of ``rows`` may attend (structural mask)."""
        lo, hi = mask.key_range(rows, lq, lk)
        live = lo < hi
        if not live.any():
            return 0, 0
        return int(lo[live].min()), int(hi[live].max())

    def tile_logits(self, qf, kf, call: Launch, m0: int, m1: int, n0: int) -> np.ndarray:
        """Logits (bias added, unmasked) of query rows m0:m1 against the zero-padded key tile at n0.

        The forward and the backward both build S from these calls on the same tile shapes, so
        the backward's recomputed S is bitwise the forward's (as one tl.dot shape gives on a GPU).
        """
        bn = call.block_n
        s = self.scores(qf[:, :, m0:m1], _load_tile(kf, n0, bn), call)
        if call.bias is not None:
            s = self.add_bias(s, _pad_cols(call.bias, m0, m1, n0, min(n0 + bn, kf.shape[2]), bn, 0.0), call)
        return s

    def attend(self, qf, kf, vf, call: Launch, ops, *, span=None) -> State:
        """The final state of every row over the keys in ``span`` (all keys when None).

        qf (B,H,Lq,E), kf (B,H,Lk,E), vf (B,H,Lk,Ev) float32, heads already mapped.
        """
        bsz, h, lq, _ = qf.shape
        lk, ev = kf.shape[2], vf.shape[3]
        bm, bn = call.block_m, call.block_n
        m_out = np.full((bsz, h, lq), NEG_INF)
        l_out = np.zeros((bsz, h, lq), F32)
        acc_out = np.zeros((bsz, h, lq, ev), F32)
        for m0 in self.query_tiles(lq, bm):
            m1 = min(m0 + bm, lq)
            rows = np.arange(m0, m1)
            st = self.init_state((bsz, h, m1 - m0), ev, ops)
            lo, hi = self.key_bounds(call.mask, rows, lq, lk)
            starts = [n0 for n0 in self.key_tiles(lo, hi, bn, lk)
                      if span is None or span[0] <= n0 < span[1]]
            for n0 in self.tile_order(starts):
                n1 = min(n0 + bn, lk)
                cols = np.arange(n0, n0 + bn)
                s = self.tile_logits(qf, kf, call, m0, m1, n0)
                allowed = call.mask.allowed(rows[:, None], cols[None, :], lq, lk)
                if call.keep is not None:
                    allowed = allowed & _pad_cols(call.keep, m0, m1, n0, n1, bn, False)
                s = self.mask_scores(s, allowed, cols < lk, rows, cols, call)
                st = self.merge(st, self.block(s, _load_tile(vf, n0, bn), ops), ops)
            m_out[:, :, m0:m1] = st.m
            l_out[:, :, m0:m1] = st.l
            acc_out[:, :, m0:m1] = st.acc
        return State(m_out, l_out, acc_out)

    # ------------------------------------------------------------------ backward
    def backward_mask(self, call: Launch) -> spec.Mask:
        """hook: the structural mask the backward recomputes P under."""
        return call.mask

    def backward_probs(self, s: np.ndarray, allowed: np.ndarray, lse: np.ndarray) -> np.ndarray:
        """hook: P = exp(S - LSE) on allowed keys, 0 elsewhere (empty rows: LSE = -inf -> P = 0)."""
        shift = np.where(np.isneginf(lse), F32(0), lse)[..., None]
        with np.errstate(invalid="ignore", over="ignore"):
            return np.where(allowed, Float32Ops().exp(s - shift), F32(0))

    def backward_delta(self, do: np.ndarray, o: np.ndarray) -> np.ndarray:
        """hook: FA2's D_i = sum_c dO_ic O_ic."""
        return np.sum(do * o, axis=-1, dtype=F32)

    def reduce_heads(self, g: np.ndarray, kv_heads: int, kvmap: np.ndarray) -> np.ndarray:
        """hook: dK/dV of each KV head, summed over the query heads that read it."""
        out = np.zeros((g.shape[0], kv_heads) + g.shape[2:], F32)
        np.add.at(out, (slice(None), kvmap), g)
        return out

    def backward_impl(self, q, k, v, o, lse, do, call: Launch):
        d = call.dims
        kvmap = self.kv_map(d.heads, d.kv_heads)
        qf, kf, vf = self.load(q), self.load(k)[:, kvmap], self.load(v)[:, kvmap]
        of, dof, lsef = self.load(o), self.load(do), lse.numpy()
        x = self.scores(qf, kf, dataclasses.replace(call, softcap=None))  # for the softcap derivative only
        s = np.empty(x.shape, F32)
        for m0 in range(0, d.lq, call.block_m):
            m1 = min(m0 + call.block_m, d.lq)
            for n0 in range(0, d.lk, call.block_n):
                n1 = min(n0 + call.block_n, d.lk)
                s[:, :, m0:m1, n0:n1] = self.tile_logits(qf, kf, call, m0, m1, n0)[..., : n1 - n0]
        allowed = self.backward_mask(call).matrix(d.lq, d.lk)[None, None]
        if call.keep is not None:
            allowed = allowed & call.keep
        allowed = np.broadcast_to(allowed, s.shape)
        p = self.backward_probs(s, allowed, lsef)
        ops = Float32Ops()
        drop = np.where(allowed, F32(0), NEG_INF)  # -inf marks a dropped (masked) term
        with np.errstate(invalid="ignore", over="ignore"):
            dv = np.matmul(p.swapaxes(-1, -2), dof)  # P is exactly 0 off the mask and dO is the caller's
            dp = np.matmul(dof, np.where(np.isfinite(vf), vf, F32(0)).swapaxes(-1, -2))
            ds = np.where(allowed, p * (dp - self.backward_delta(dof, of)[..., None]), F32(0))
            if call.softcap is not None:
                # d/dx c tanh(x/c) = 1 - tanh(x/c)^2
                t = np.tanh(x / F32(call.softcap))
                ds = np.where(allowed, ds * (F32(1) - t * t), F32(0))
        dq = ops.weighted_sum(drop, ds, kf[:, :, None], d.e) * F32(call.scale)
        dk = ops.weighted_sum(drop.swapaxes(-1, -2), ds.swapaxes(-1, -2), qf[:, :, None], d.e) * F32(call.scale)
        dk = self.reduce_heads(dk, d.kv_heads, kvmap)
        dv = self.reduce_heads(dv, d.kv_heads, kvmap)
        return tuple(torch.from_numpy(np.ascontiguousarray(g, F32)).to(call.dtype) for g in (dq, dk, dv))


def _pad_to(t, n, axis, fill):
    """``t`` padded with ``fill`` to length ``n`` along ``axis``."""
    if t.shape[axis] == n:
        return t
    shape = list(t.shape)
    shape[axis] = n
    out = np.full(shape, fill, dtype=t.dtype)
    out[(slice(None),) * axis + (slice(0, t.shape[axis]),)] = t
    return out


def _load_tile(x, n0, bn):
    """Keys n0:n0+bn of x (B, H, L, E), zero-filled past the end (as tl.load(..., other=0))."""
    return _pad_to(x[:, :, n0:n0 + bn], bn, 2, F32(0))


def _pad_cols(a, m0, m1, n0, n1, bn, fill):
    """Rows m0:m1, keys n0:n1 of a (B|1, H|1, Lq, Lk) array, padded with ``fill`` to bn keys."""
    return True if a is None else _pad_to(a[:, :, m0:m1, n0:n1], bn, 3, fill)


class _AttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, impl, call):
        o, lse = impl.forward_impl(q, k, v, call)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.impl, ctx.call = impl, call
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.impl.backward_impl(q, k, v, o, lse, do, ctx.call)
        return dq, dk, dv, None, None


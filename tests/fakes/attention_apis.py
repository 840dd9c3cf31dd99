"""In-repo fakes with the exact signatures of real FlashAttention-style APIs (for the adapters' tests).

Each correct fake computes with flashproof.properties.peers.tiled_attention (fp32 accumulators,
P rounded to the storage dtype, masked keys dropped, never multiplied by 0: spec's "strict" NaN
policy, which the suite judges today) or with the zoo's SDPA math peer, on (B, L, H, D) tensors,
and follows its API's conventions, including the awkward ones an adapter must translate:

- ``flash_attn_func``: flash-attn 2's signature; causal and every window aligned bottom-right;
  softcap 0 = none; ``return_attn_probs=True`` returns ``(out, softmax_lse, None)``, softmax_lse
  (B, H, Lq) fp32 natural log and +inf on a row with no key (as flash-attn 2 gives); fp16/bf16 only.
- ``flash_attn3_func``: flash-attn 3's signature (no dropout_p, more knobs); ``(out, softmax_lse)``
  with ``return_attn_probs=True``.
- ``flash_attn3_always_lse``: flash-attn 3 before 2025-07: no LSE flag, always ``(out, softmax_lse)``.
- ``parallel_attn``: flash-linear-attention's (fla-core 0.6) signature: causal only, one length T,
  int window (keys i - window_size + 1 .. i), O only.
- ``sdpa_blhd``: torch's SDPA signature on (B, L, H, D) tensors.

And planted deviations the adapters must not hide:
- ``flash_attn_func_top_left``: flash-attn 2's signature, causal aligned top-left (torch's);
- ``flash_attn_func_lse_log2``: softmax_lse in log2;
- ``flash_attn_func_lse_none``: ``(out, None, None)`` with return_attn_probs (as flash-attn-triton 0.1.1);
- ``flash_attn_func_dict``: returns a dict.
"""
from __future__ import annotations

import math

import torch

from flashproof.properties.peers import tiled_attention

__all__ = ["flash_attn_func", "flash_attn3_func", "flash_attn3_always_lse", "parallel_attn", "sdpa_blhd",
           "flash_attn_func_top_left", "flash_attn_func_lse_log2", "flash_attn_func_lse_none", "flash_attn_func_dict"]

_FA_DTYPES = (torch.float16, torch.bfloat16)


def _fa(q, k, v, *, softmax_scale, causal, window_size, softcap, alignment="bottom_right"):
    """(out (B, Lq, H, Dv), softmax_lse (B, H, Lq), +inf on empty rows) of flash-attn's semantics."""
    if q.dtype not in _FA_DTYPES:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if q.shape[-1] > 256:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    window = None if tuple(window_size) == (-1, -1) else tuple(int(w) for w in window_size)
    o, lse = tiled_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             causal=alignment if causal else False, alignment=alignment, window=window,
                             scale=softmax_scale, softcap=softcap or None, return_lse=True)
    return o.transpose(1, 2), torch.where(torch.isneginf(lse), torch.full_like(lse, math.inf), lse)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    if dropout_p or alibi_slopes is not None:
        raise NotImplementedError("the fake has no dropout and no ALiBi")
    out, lse = _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return (out, lse, None) if return_attn_probs else out


def flash_attn3_func(q, k, v, softmax_scale=None, causal=False, qv=None, q_descale=None, k_descale=None,
                     v_descale=None, window_size=(-1, -1), attention_chunk=0, softcap=0.0, num_splits=1, pack_gqa=None,
                     deterministic=False, sm_margin=0, return_attn_probs=False):
    if qv is not None or attention_chunk:
        raise NotImplementedError("the fake has no qv and no attention_chunk")
    out, lse = _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return (out, lse) if return_attn_probs else out


def flash_attn3_always_lse(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0):
    return _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)


def parallel_attn(q, k, v, g=None, scale=None, window_size=None, cu_seqlens=None, chunk_indices=None, *,
                  sink_bias=None):
    if g is not None or cu_seqlens is not None or sink_bias is not None:
        raise NotImplementedError("the fake has no g, cu_seqlens or sink_bias")
    if q.shape[1] != k.shape[1]:
        raise ValueError("q, k and v share one length T")
    window = None if window_size is None else (int(window_size) - 1, 0)
    o = tiled_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal="top_left", window=window,
                        scale=scale)
    return o.transpose(1, 2)


def sdpa_blhd(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    from mutants.peers import sdpa_math_fp32

    o = sdpa_math_fp32(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask,
                       dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return o.transpose(1, 2)


def flash_attn_func_top_left(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    out, lse = _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
                   alignment="top_left")
    return (out, lse, None) if return_attn_probs else out


def flash_attn_func_lse_log2(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    out, lse = _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return (out, lse / math.log(2.0), None) if return_attn_probs else out


def flash_attn_func_lse_none(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    out, _ = _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return (out, None, None) if return_attn_probs else out


def flash_attn_func_dict(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                         softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    out, lse = _fa(q, k, v, softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap)
    return {"out": out, "lse": lse}

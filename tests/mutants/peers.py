"""Correct peers built on torch's SDPA math path: the suite must pass them (zero false alarms).

``sdpa_math_fp32`` / ``sdpa_math_fp64`` upcast q, k, v (and an additive mask) to fp32 / fp64,
run torch.nn.functional.scaled_dot_product_attention with the MATH backend on CPU, and round O
back to the input dtype. The math path computes softmax(...) @ V, which multiplies masked
probabilities (exactly 0) by V: a NaN/inf at a masked position would leak (pytorch#101967), which
spec forbids. So when q, k or v holds a non-finite value the peer runs SDPA once per query row
on that row's allowed keys only (masked keys dropped, as spec says); otherwise one batched call.
Declared as plain SDPA callables (top-left causal, attn_mask, scale, GQA via enable_gqa), with
backward through torch autograd, and an fp32 accumulator (fp64 is at least as accurate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["sdpa_math_fp32", "sdpa_math_fp64", "sdpa_math"]


def sdpa_math(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False, *, compute: torch.dtype = torch.float64):
    """torch SDPA (math backend) evaluated in ``compute`` precision; O in the input dtype."""
    if dropout_p:
        raise ValueError(f"dropout_p must be 0 for a deterministic peer, got {dropout_p}")
    dt = query.dtype
    q, k, v = (t.to(compute) for t in (query, key, value))
    mask = attn_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute)
    finite = all(bool(torch.isfinite(t).all()) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        if finite:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                               enable_gqa=enable_gqa)
        else:
            o = _row_by_row(q, k, v, mask, is_causal, scale, enable_gqa)
    return o.to(dt)


def _row_by_row(q, k, v, mask, is_causal, scale, enable_gqa):
    """One SDPA call per query row over its allowed keys only (masked keys never read)."""
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if h != hkv and not enable_gqa:
        raise ValueError(f"query has {h} heads and key {hkv}: pass enable_gqa=True")
    if is_causal and mask is not None:
        raise ValueError("attn_mask and is_causal cannot both be set")
    allowed = torch.ones(b, h, lq, lk, dtype=torch.bool)
    bias = None
    if is_causal:
        allowed &= torch.ones(lq, lk, dtype=torch.bool).tril()
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed &= mask.expand(b, h, lq, lk)
        else:
            bias = mask.expand(b, h, lq, lk)
            allowed &= ~torch.isneginf(bias)
    rows = []
    for bi in range(b):
        heads = []
        for hi in range(h):
            kh = hi // (h // hkv)
            out = []
            for i in range(lq):
                keys = allowed[bi, hi, i].nonzero().flatten()
                if keys.numel() == 0:
                    out.append(v.new_zeros(v.shape[-1]))  # spec: an empty row is 0, whatever q holds
                    continue
                m = None if bias is None else bias[bi, hi, i, keys][None, None, None]
                o = F.scaled_dot_product_attention(q[bi, hi, i][None, None, None], k[bi, kh, keys][None, None],
                                                   v[bi, kh, keys][None, None], attn_mask=m, scale=scale)
                out.append(o[0, 0, 0])
            heads.append(torch.stack(out) if out else v.new_zeros(0, v.shape[-1]))
        rows.append(torch.stack(heads))
    return torch.stack(rows)


def sdpa_math_fp32(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """torch SDPA math path with q, k, v upcast to float32."""
    return sdpa_math(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, compute=torch.float32)


def sdpa_math_fp64(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """torch SDPA math path with q, k, v upcast to float64."""
    return sdpa_math(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, compute=torch.float64)

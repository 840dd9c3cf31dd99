"""Correct peers built on torch's SDPA math path: the suite must pass them (zero false alarms).

``sdpa_math_fp32`` / ``sdpa_math_fp64`` upcast q, k, v (and an additive mask) to fp32 / fp64,
run torch.nn.functional.scaled_dot_product_attention with the MATH backend on CPU, and round O
back to the input dtype. The math path computes softmax(...) @ V, which multiplies masked
probabilities (exactly 0) by V: a NaN/inf at a masked position would leak (pytorch#101967), which
spec forbids. So when q, k or v holds a non-finite value, the batched call runs on inputs with
those values zeroed (bitwise the same result for every row that does not read them: their
masked terms are exact zeros either way), and each row that does read one (its q, or a k/v
of an allowed key) is recomputed by one SDPA call over its allowed keys only (IEEE propagation
within the allowed set, masked keys dropped, as spec says).
Each batch element is one SDPA call: torch's batched math path is not bitwise batch invariant
(docs/findings.md F4). Declared as plain SDPA callables (top-left causal, attn_mask, scale, GQA
via enable_gqa), with backward through torch autograd, and an fp32 accumulator (fp64 is at least
as accurate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["sdpa_math_fp32", "sdpa_math_fp64", "sdpa_math", "per_batch_element"]


def sdpa_math(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False, *, compute: torch.dtype = torch.float64):
    """torch SDPA (math backend) evaluated in ``compute`` precision; O in the input dtype."""
    if dropout_p:
        raise ValueError(f"dropout_p must be 0 for a deterministic peer, got {dropout_p}")
    if query.shape[0] > 1:
        return per_batch_element(lambda q, k, v, m: sdpa_math(q, k, v, m, dropout_p, is_causal, scale, enable_gqa,
                                                              compute=compute), query, key, value, attn_mask)
    dt = query.dtype
    q, k, v = (t.to(compute) for t in (query, key, value))
    mask = attn_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask.to(compute)
    finite = all(bool(torch.isfinite(t).all()) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        if finite:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                                  enable_gqa=enable_gqa).to(dt)
        zq, zk, zv = (torch.where(torch.isfinite(t), t, torch.zeros((), dtype=compute)) for t in (q, k, v))
        o = F.scaled_dot_product_attention(zq, zk, zv, attn_mask=mask, is_causal=is_causal, scale=scale,
                                           enable_gqa=enable_gqa)
        o = _fix_nonfinite_rows(o, q, k, v, mask, is_causal, scale, enable_gqa)
    return o.to(dt)


def per_batch_element(sdpa, query, key, value, attn_mask):
    """sdpa(q, k, v, mask) called once per batch element (a per-element slice of a 4-D mask) and
    concatenated: torch's batched CPU SDPA is not bitwise batch invariant (docs/findings.md F4),
    a row's O depends on its batch-mates, which spec's batch invariance forbids."""
    parts = []
    for b in range(query.shape[0]):
        m = attn_mask[b:b + 1] if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[0] > 1 \
            else attn_mask
        parts.append(sdpa(query[b:b + 1], key[b:b + 1], value[b:b + 1], m))
    return torch.cat(parts)


def _fix_nonfinite_rows(o, q, k, v, mask, is_causal, scale, enable_gqa):
    """Recompute, one SDPA call each over its allowed keys only, every row reading a non-finite value."""
    b, h, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    if h != hkv and not enable_gqa:
        raise ValueError(f"query has {h} heads and key {hkv}: pass enable_gqa=True")
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
    rep = h // hkv
    bad_key = ~(torch.isfinite(k).all(-1) & torch.isfinite(v).all(-1))  # (B, Hkv, Lk)
    bad_key = bad_key.repeat_interleave(rep, dim=1)[:, :, None, :]
    touched = (~torch.isfinite(q).all(-1)) | (allowed & bad_key).any(-1)  # (B, H, Lq)
    o = o.clone()
    for bi, hi, i in touched.nonzero().tolist():
        keys = allowed[bi, hi, i].nonzero().flatten()
        if keys.numel() == 0:
            continue  # an empty row is 0, whatever its q holds (spec); the batched call gave 0
        kh = hi // rep
        m = None if bias is None else bias[bi, hi, i, keys][None, None, None]
        r = F.scaled_dot_product_attention(q[bi, hi, i][None, None, None], k[bi, kh, keys][None, None],
                                           v[bi, kh, keys][None, None], attn_mask=m, scale=scale)
        o[bi, hi, i] = r[0, 0, 0]
    return o


def sdpa_math_fp32(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """torch SDPA math path with q, k, v upcast to float32."""
    return sdpa_math(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, compute=torch.float32)


def sdpa_math_fp64(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False):
    """torch SDPA math path with q, k, v upcast to float64."""
    return sdpa_math(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, compute=torch.float64)

"""A user's own attention, as a kernel author writes it in their repo (``myattn.py``): the issue-15
"new user" fixture. The tests copy this file into a fresh folder and run ``flashproof check
myattn:attention`` and ``pytest --pyargs flashproof.properties --flashproof-target=myattn:attention``
from there.

- ``attention``: a correct naive fp32 attention written the obvious way, with torch's SDPA signature:
  the masked logits (``masked_fill(~allowed, -inf)``), their softmax, then ``P @ V``, so a masked
  P is an exact 0 that multiplies V (nan_policy "ieee", what a plain SDPA callable is judged by).
  A row with no allowed key is 0, as spec/README.md says (a bare softmax of an all -inf row is NaN:
  that would be a real violation, not a policy).
- ``no_max_subtraction``: the same with a planted bug, exp(s) / sum exp(s) without subtracting the
  row max: large logits overflow to inf / inf = NaN.
"""
import torch

__all__ = ["attention", "no_max_subtraction"]


def _logits(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    q, k, v = query.float(), key.float(), value.float()
    if enable_gqa and k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    allowed = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device)
    if is_causal:
        allowed = allowed.tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.float()
            allowed = allowed & ~torch.isneginf(attn_mask)
    allowed = allowed.expand(s.shape)
    return s.masked_fill(~allowed, float("-inf")), allowed, v


def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    s, allowed, v = _logits(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    p = s.softmax(dim=-1)
    p = torch.where(allowed.any(dim=-1, keepdim=True), p, torch.zeros_like(p))  # no key: 0, not NaN
    return (p @ v).to(query.dtype)


def no_max_subtraction(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                       enable_gqa=False):
    s, allowed, v = _logits(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    e = torch.exp(s)  # the planted bug: no max subtracted, exp overflows for logits above ~88
    p = e / e.sum(dim=-1, keepdim=True)
    p = torch.where(allowed.any(dim=-1, keepdim=True), p, torch.zeros_like(p))
    return (p @ v).to(query.dtype)

"""``sdpa``: a drop-in for torch.nn.functional.scaled_dot_product_attention on the Triton kernels.

The attn_mask becomes an additive bias that the forward and backward kernels add to the scaled
logits (a bool mask as 0 / -inf); semantics otherwise as flashproof.spec with causal=top_left.
"""
from __future__ import annotations

import numbers

import torch

from flashproof import spec

from .attention import _plan, _run
from .validate import check_qkv, check_tensor

__all__ = ["sdpa"]


def _bias_from_mask(attn_mask, b, h, lq, lk, device):
    """attn_mask (bool: True = may attend; float: additive) broadcast to (B, H, Lq, Lk), no copy
    beyond the bool -> float conversion of the mask's own (unbroadcast) shape."""
    check_tensor(attn_mask, "attn_mask", dtypes=(torch.bool, torch.float16, torch.bfloat16, torch.float32,
                                                 torch.float64))
    if attn_mask.device != device:
        raise ValueError(f"attn_mask is on {attn_mask.device}, query on {device}")
    if attn_mask.requires_grad:
        raise NotImplementedError("flashproof.kernels.sdpa: gradients with respect to attn_mask "
                                  "are not supported; pass attn_mask.detach()")
    if attn_mask.dim() > 4:
        raise ValueError(f"attn_mask must have rank <= 4, got shape {tuple(attn_mask.shape)}")
    if attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=torch.float32, device=device)
        bias.masked_fill_(~attn_mask, -float("inf"))
    else:
        bias = attn_mask
    try:
        return bias.expand(b, h, lq, lk)
    except RuntimeError:
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                         f"(B, H, Lq, Lk) = {(b, h, lq, lk)}") from None


def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
         enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention on the flashproof Triton kernels.

    Same signature and semantics as torch's: (B, H, L, E) or (N, L, E) inputs; ``attn_mask`` a
    bool mask (True = may attend) or a float mask added to the scaled logits, broadcastable to
    (B, H, Lq, Lk); ``is_causal`` is top-left aligned and excludes ``attn_mask``; ``scale``
    defaults to 1/sqrt(E); ``enable_gqa`` must be True when key/value have fewer heads than the
    query (each KV head serves H/Hkv consecutive query heads). ``dropout_p`` must be 0
    (NotImplementedError otherwise). Differentiable in query, key and value.

    Differences from torch: rows with no allowed key give 0 (flashproof.spec), not NaN; inputs
    must be float16/bfloat16/float32 on the kernels' device (CPU under TRITON_INTERPRET=1).
    """
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise NotImplementedError(f"flashproof.kernels.sdpa: dropout is not supported "
                                  f"(dropout_p={dropout_p}); pass dropout_p=0.0")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be a bool, got {type(enable_gqa).__name__}")
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ranks = {query.dim(), key.dim(), value.dim()}
    if ranks == {3}:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        squeeze = True
    elif ranks == {4}:
        squeeze = False
    else:
        raise ValueError(f"query, key, value must all have rank 4 (B, H, L, E) or 3 (N, L, E); got "
                         f"shapes {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    dims = check_qkv(query, key, value)
    if dims.heads != dims.kv_heads and not enable_gqa:
        raise ValueError(f"query has {dims.heads} heads and key/value {dims.kv_heads}: pass "
                         f"enable_gqa=True for grouped-query attention (as torch requires)")
    bias = None
    if attn_mask is not None:
        if is_causal:
            raise ValueError("attn_mask and is_causal=True cannot be combined (as in torch); "
                             "fold the causal mask into attn_mask")
        if squeeze and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)  # (N, Lq, Lk) -> (N, 1, Lq, Lk)
        bias = _bias_from_mask(attn_mask, dims.batch, dims.heads, dims.lq, dims.lk, query.device)
    mask = spec.make_mask(causal=is_causal)
    plan = _plan(query, key, value, mask=mask, scale=scale, softcap=None, block_m=None, block_n=None,
                 num_warps=None, num_stages=None, allow_tf32=False, has_bias=bias is not None)
    out = _run(query, key, value, bias, plan, False)
    return out.squeeze(1) if squeeze else out

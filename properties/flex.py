"""FlexAttention (``torch.nn.attention.flex_attention``) as a Target: the one definition that
``flashproof audit`` (its FlexAttention peer on a GPU) and the GPU peer ``benchmarks.peers.flex:target``
both use.

Causal (either alignment) and sliding windows are a block mask whose mask_mod is spec's allowed
range (lo(i) <= j <= hi(i) around the aligned diagonal), softcap is a score_mod (c * tanh(s / c) on
the scaled score, as spec), the LSE comes from ``return_aux=AuxRequest(lse=True)`` (``return_lse`` on
older torch; flex returns it in natural log), GQA through ``enable_gqa``. Offsets, window sides and
the cap are captured as tensors, so a new value is a new buffer, not a recompile; every new shape
still compiles (the recompile limits are raised so the suite never falls back to eager).

Declared domain (torch 2.11, inductor's flex templates): E and Ev >= 16 (tl.dot), up to 256;
Lq, Lk >= 1; H / Hkv a power of 2 (flex decoding's GQA packing); fp16, bf16, fp32; no attn_mask
(not wired here). ``flex_target(compiled=False, devices=("cpu",))`` is the eager (unfused) path, for
checking this wiring on a machine without a GPU. Nothing imports torch until a target is built.
"""
from __future__ import annotations

from flashproof import spec as _spec

from .accumulators import declared_accumulator
from .targets import Target

__all__ = ["flex_target"]


def _raise_recompile_limits(n=4096):
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), n))


def _mask_mod(mask, lq, lk, device):
    import torch

    d = torch.tensor(mask.diagonal(lq, lk), device=device)
    left = torch.tensor(mask.left, device=device)
    right = torch.tensor(mask.right, device=device)  # capped at 0 under causal
    has_left, has_right = mask.left != -1, mask.right != -1

    def mask_mod(b, h, q_idx, kv_idx):
        ok = kv_idx >= 0
        if has_left:
            ok = ok & (kv_idx >= q_idx + d - left)
        if has_right:
            ok = ok & (kv_idx <= q_idx + d + right)
        return ok
    return mask_mod


def _softcap_mod(cap, device):
    import torch

    c = torch.tensor(cap, device=device, dtype=torch.float32)

    def score_mod(score, b, h, q_idx, kv_idx):
        return c * torch.tanh(score / c)
    return score_mod


def _gqa_domain(call):
    r = call.heads // max(call.kv_heads, 1)
    if r & (r - 1):
        return f"H / Hkv = {r} is not a power of 2 (flex decoding packs GQA heads in powers of 2)"
    return None


def flex_target(*, compiled=True, devices=("cuda",), spec=None) -> Target:
    """FlexAttention as a Target: ``torch.compile(flex_attention)`` (``compiled=False``: the eager
    path) on ``devices``; ``spec``: the "module:attr" that rebuilds it, for reproducers (None: none)."""
    import torch
    from torch.nn.attention import flex_attention as fa

    if compiled:
        _raise_recompile_limits()
        run = torch.compile(fa.flex_attention, dynamic=False)
    else:
        run = fa.flex_attention
    aux = getattr(fa, "AuxRequest", None)

    def forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None, attn_mask=None,
                return_lse=False):
        if attn_mask is not None:
            raise ValueError("this FlexAttention peer declares no attn_mask")
        mask = _spec.make_mask(causal=causal, window=window, alignment=alignment)
        lq, lk = int(q.shape[2]), int(k.shape[2])
        block_mask = None if mask.is_full else fa.create_block_mask(
            _mask_mod(mask, lq, lk, q.device), B=None, H=None, Q_LEN=lq, KV_LEN=lk, device=q.device)
        cap = _spec.normalize_softcap(softcap)
        kw = dict(score_mod=None if cap is None else _softcap_mod(cap, q.device), block_mask=block_mask,
                  scale=scale, enable_gqa=q.shape[1] != k.shape[1])
        if not return_lse:
            return run(q, k, v, **kw)
        if aux is not None:
            o, out = run(q, k, v, **kw, return_aux=aux(lse=True))
            return o, out.lse
        return run(q, k, v, **kw, return_lse=True)

    dtypes = ("float16", "bfloat16", "float32")
    # its Triton tl.dot runs on the tensor cores on a GPU: the device's measured model (accumulators.py)
    acc = declared_accumulator(dtypes, cuda="cuda" in devices and torch.cuda.is_available(), who="FlexAttention")
    return Target(name="FlexAttention (torch.compile)" if compiled else "FlexAttention (eager)", forward=forward,
                  lse=True, alignments=("top_left", "bottom_right"), window=True, softcap=True, attn_mask=False,
                  gqa=True, backward=compiled, dtypes=dtypes, devices=tuple(devices), accumulator=acc,
                  head_dims=tuple(range(16, 257)), value_dim=True, min_lq=1, min_lk=1, accepts=_gqa_domain,
                  nan_policy="ieee", batch_invariant=False,  # a dense P @ V; splits chosen per problem size
                  spec=spec,
                  description=f"torch.nn.attention.flex_attention{' compiled' if compiled else ' eager'}: block "
                              f"mask for causal/window, score_mod for softcap")

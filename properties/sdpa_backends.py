"""torch SDPA's GPU backends as targets, each pinned to one backend with ``sdpa_kernel``.

    pytest --pyargs flashproof.properties --flashproof-target=flashproof.properties.sdpa_backends:flash

Each declares only what that backend runs (a backend that cannot run an input raises "No
available kernel", which the suite would report as a failure): flash and cuDNN take fp16/bf16
and no attn_mask, with Ev = E; the memory-efficient backend also takes fp32 and an attn_mask; math takes all.
"""
from __future__ import annotations

import dataclasses

from .targets import TORCH_CPU_DEVIATIONS, from_sdpa

__all__ = ["flash", "cudnn", "efficient", "math"]


def _backend(name, backend_name, *, dtypes, attn_mask, head_dims=None, devices=("cuda",), value_dim=True):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                enable_gqa=enable_gqa)

    spec = f"flashproof.properties.sdpa_backends:{name}"
    cpu = not torch.cuda.is_available()
    t = from_sdpa(fn, name=f"torch SDPA {name} backend", spec=spec, backward=True,
                  known_deviations=TORCH_CPU_DEVIATIONS if cpu else None)
    # GQA is left to the math path: not every backend/version takes enable_gqa
    return dataclasses.replace(t, dtypes=dtypes, attn_mask=attn_mask, gqa=False, head_dims=head_dims, value_dim=value_dim,
                               devices=devices, description=f"torch SDPA, {backend_name} backend only")


def flash():
    """torch SDPA's FlashAttention-2 backend (fp16/bf16, head dims up to 256)."""
    return _backend("flash", "FLASH_ATTENTION", dtypes=("float16", "bfloat16"), attn_mask=False,
                    head_dims=(16, 32, 40, 64, 72, 80, 96, 128, 256), value_dim=False)


def cudnn():
    """torch SDPA's cuDNN backend (fp16/bf16, head dims up to 128)."""
    return _backend("cudnn", "CUDNN_ATTENTION", dtypes=("float16", "bfloat16"), attn_mask=False,
                    head_dims=(16, 32, 64, 96, 128), value_dim=False)


def efficient():
    """torch SDPA's memory-efficient backend (fp16/bf16/fp32, attn_mask)."""
    return _backend("efficient", "EFFICIENT_ATTENTION", dtypes=("float16", "bfloat16", "float32"), attn_mask=True)


def math():
    """torch SDPA's math backend."""
    return _backend("math", "MATH", dtypes=("float16", "bfloat16", "float32"), attn_mask=True, devices=("cuda", "cpu"))

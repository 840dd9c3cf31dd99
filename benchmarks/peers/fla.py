"""flash-linear-attention's softmax attention, ``fla.ops.attn.parallel_attn`` (fla-core 0.6.0),
through flashproof.properties.adapters.fla_style.

Declared: causal only with one length T for q, k and v (its API), an int sliding window, GQA,
fp16/bf16 (its fp32 Q K^T goes through tl.dot's default TF32, not an fp32 claim), E <= 256 (it
asserts one K block of at most 256), backward probed on the GPU. No LSE in its public return.
"""
from __future__ import annotations

from ._need import need_cuda, need_module

__all__ = ["target"]


def target():
    attn = need_module("fla.ops.attn", "fla-core")
    need_cuda("fla-core's parallel_attn")
    from flashproof.properties.adapters import fla_style

    return fla_style(attn.parallel_attn, name="fla.ops.attn.parallel_attn (fla-core 0.6.0)",
                     spec="benchmarks.peers.fla:target", dtypes=("float16", "bfloat16"), devices=("cuda",),
                     description="flash-linear-attention parallel_attn (fla-core, Triton), causal only")

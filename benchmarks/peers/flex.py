"""FlexAttention, compiled (``torch.compile(flex_attention)``), as the GPU peer.

The Target itself (block mask for causal and windows, score_mod for softcap, the LSE, the declared
domain) is ``flashproof.properties.flex.flex_target``, which ``flashproof audit`` uses too; this
module only requires a CUDA GPU and names itself as the target's spec. ``flex_target(compiled=False,
devices=("cpu",))`` is the eager (unfused) path, for checking the wiring on a machine without a GPU.
"""
from __future__ import annotations

from flashproof.properties.flex import flex_target

from ._need import need_cuda

__all__ = ["target", "flex_target"]


def target():
    need_cuda("FlexAttention (compiled)")
    return flex_target(spec="benchmarks.peers.flex:target")

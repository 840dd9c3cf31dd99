"""flashproof.reference: arbitrary-precision, certified, tiled, fast fp64 and naive evaluation
of spec. All entry points take q (B,H,Lq,E), k (B,Hkv,Lk,E), v (B,Hkv,Lk,Ev) as torch tensors or
numpy arrays, converted exactly, and spec's keyword options (attn_mask, causal, alignment,
window, scale, softcap).
"""
from .backward import backward_fp64, backward_mp
from .certified import Certified, forward_certified
from .fast import forward_fp64, forward_naive
from .mp import forward_mp
from .tiled import forward_tiled, make_boundaries, make_tree

__all__ = [
    "backward_fp64", "backward_mp", "Certified", "forward_certified", "forward_fp64", "forward_mp", "forward_naive", "forward_tiled", "make_boundaries", "make_tree"]

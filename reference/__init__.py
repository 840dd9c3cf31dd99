"""flashproof.reference: arbitrary-precision, certified, tiled, fast fp64 and naive evaluation
of spec. All entry points take q (B,H,Lq,E), k (B,Hkv,Lk,E), v (B,Hkv,Lk,Ev) as torch tensors or
numpy arrays, converted exactly, and spec's keyword options (attn_mask, causal, alignment,
window, scale, softcap).
"""
from .backward import backward_fp64, backward_mp
from .fast import forward_fp64, forward_naive
from .mp import forward_mp
from .tiled import forward_tiled, make_boundaries, make_tree



def __getattr__(name):
    # python-flint is needed only by the certified path: GPU images without it can still use the rest.
    if name in ("Certified", "forward_certified"):
        from . import certified

        return getattr(certified, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "backward_fp64", "backward_mp", "Certified", "forward_certified", "forward_fp64", "forward_mp", "forward_naive", "forward_tiled", "make_boundaries", "make_tree"]

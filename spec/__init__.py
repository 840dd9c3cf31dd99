"""flashproof.spec: the contract. What attention means, and the one online-softmax merge.

See spec/README.md for the mathematics. Imports numpy only.
"""
from .online import NUMPY, SCALAR, Float32Ops, NumpyOps, ScalarOps, State, block_state, finalize, fold, identity, merge
from .rope import (DEFAULT_ROPE_BASE, HALF, INTERLEAVED, NUMPY_TRIG, ROPE_STYLES, TrigOps, apply_rope, reposition_keys,
                   rope_frequencies, rope_pairs)
from .semantics import (
    ALIGNMENTS,
    BOTTOM_RIGHT,
    TOP_LEFT,
    UNBOUNDED,
    Dims,
    Mask,
    allowed,
    apply_softcap,
    check_dims,
    default_scale,
    kv_head,
    make_mask,
    normalize_softcap,
    resolve_scale,
)

__all__ = [
    "ALIGNMENTS", "BOTTOM_RIGHT", "TOP_LEFT", "UNBOUNDED", "Dims", "Mask", "allowed",
    "apply_softcap", "check_dims", "default_scale", "kv_head", "make_mask", "normalize_softcap",
    "resolve_scale", "NUMPY", "SCALAR", "NumpyOps", "ScalarOps", "State", "block_state",
    "finalize", "fold", "identity", "merge", "Float32Ops",
    "DEFAULT_ROPE_BASE", "HALF", "INTERLEAVED", "NUMPY_TRIG", "ROPE_STYLES", "TrigOps", "apply_rope",
    "reposition_keys", "rope_frequencies", "rope_pairs",
]

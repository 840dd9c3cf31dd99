"""flashproof.spec: the contract. What attention means, and the one online-softmax merge.

- ``semantics.py``: masks, scale, softcap, GQA mapping, shape rules;
- ``online.py``: the online-softmax state, its merge, identity (batched too), the partial -> state
  step of split-KV, and the ops classes (scalar, numpy, float32, mpmath; ``MP`` made on first use);
- ``dtypes.py``: the storage dtypes' table (unit roundoff, max, tiny, ulp), the dtype-name
  normaliser and the numpy rounder;
- ``rope.py``: rotary position embeddings (both pairings) and the re-encoding of cached keys.

See spec/README.md for the mathematics. Imports numpy only (mpmath when ``MP`` is first used).
"""
from .dtypes import FORMATS, STORAGE_DTYPES, Format, dtype_name, format_of, round_to
from .online import (NUMPY, SCALAR, Float32Ops, MpmathOps, NumpyOps, ScalarOps, State, block_state, finalize, fold,
                     identity, merge, mpmath_ops, partial_state)
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
    "resolve_scale", "NUMPY", "SCALAR", "MP", "NumpyOps", "ScalarOps", "Float32Ops", "MpmathOps", "State",
    "block_state", "finalize", "fold", "identity", "merge", "mpmath_ops", "partial_state",
    "FORMATS", "STORAGE_DTYPES", "Format", "dtype_name", "format_of", "round_to",
    "DEFAULT_ROPE_BASE", "HALF", "INTERLEAVED", "NUMPY_TRIG", "ROPE_STYLES", "TrigOps", "apply_rope",
    "reposition_keys", "rope_frequencies", "rope_pairs",
]


def __getattr__(name):
    if name == "MP":  # the one mpmath ops, made (and mpmath imported) on first use
        return mpmath_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""flashproof: formally checked numerics and property tests for FlashAttention kernels.

Public API (kept small):

- ``flashproof.spec``        the contract: masks, scale, softcap, GQA, the online-softmax merge
- ``flashproof.reference``   mpmath, certified (arb), tiled, fp64 and naive references
- ``flashproof.proofs``      SymPy proofs and the error-bound functions
- ``flashproof.kernels``     the Triton FlashAttention kernel (``attention``, ``sdpa``, ``decode``)
- ``flashproof.properties``  Hypothesis strategies, targets and the property suite

Command line: ``flashproof prove | check TARGET | audit [TARGET...] | bench``.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]

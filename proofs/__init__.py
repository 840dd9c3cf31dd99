"""flashproof.proofs: SymPy proofs of the online-softmax algebra and of its floating-point error,
and the executable bounds derived from them (see proofs/README.md and `flashproof prove`)."""
from .bounds import (Precision, Unbounded, apriori_forward_bound, apriori_lse_bound, precision_for,
                     running_forward_bound)
from .bounds_backward import running_backward_bound

__all__ = ["Precision", "Unbounded", "precision_for", "apriori_forward_bound", "apriori_lse_bound",
           "running_forward_bound", "running_backward_bound"]

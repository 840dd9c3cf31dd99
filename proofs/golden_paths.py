"""Where the derived expressions live: the golden JSON files and the numpy modules generated from them."""
from pathlib import Path

__all__ = ["GOLDEN_PATH", "GENERATED_PATH", "BACKWARD_GOLDEN_PATH", "BACKWARD_GENERATED_PATH"]

_HERE = Path(__file__).parent
#: theorem 6 (forward): SymPy expressions, and the code bounds.py evaluates
GOLDEN_PATH = _HERE / "golden" / "fp_error.json"
GENERATED_PATH = _HERE / "bounds_gen.py"
#: theorem 4b (backward): SymPy expressions, and the code bounds_backward.py evaluates
BACKWARD_GOLDEN_PATH = _HERE / "golden" / "fp_backward.json"
BACKWARD_GENERATED_PATH = _HERE / "bounds_backward_gen.py"

"""flashproof.kernels (under construction)."""
__all__ = []

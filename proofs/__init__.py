"""flashproof.proofs (under construction)."""
__all__ = []

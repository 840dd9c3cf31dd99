"""flashproof.reference (under construction)."""
__all__ = []

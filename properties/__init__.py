"""flashproof.properties (under construction)."""
__all__ = []

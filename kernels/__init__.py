"""flashproof.kernels: the Triton FlashAttention kernels (the suite's default target).

Importing this package on a machine without a CUDA GPU sets TRITON_INTERPRET=1 before triton
is imported, so the same kernels run under Triton's CPU interpreter.
"""
from .runtime import set_interpret_mode_if_no_gpu

set_interpret_mode_if_no_gpu()

from .attention import attention  # noqa: E402  (triton must be imported after the line above)
from .decode import decode  # noqa: E402
from .sdpa import sdpa  # noqa: E402
from .tiles import (SPLIT_RANGE, TILE_CONFIGS, TileConfig, accepts_tile_config,  # noqa: E402
                    check_tile_config)

__all__ = [
    "attention",
    "decode",
    "sdpa",
    "SPLIT_RANGE",
    "TILE_CONFIGS",
    "TileConfig",
    "accepts_tile_config",
    "check_tile_config",
    "set_interpret_mode_if_no_gpu",
]

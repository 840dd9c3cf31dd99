"""What every peer factory checks first: its package, and a CUDA GPU."""
from __future__ import annotations

import importlib

from flashproof.properties.targets import TargetLoadError

__all__ = ["need_module", "need_cuda", "WHEELS"]

#: pure-Python wheels the GPU run installs (benchmarks/peers/README.md): distribution -> file
WHEELS = {"fla-core": "fla_core-0.6.0-py3-none-any.whl",
          "flash-attention-triton": "flash_attention_triton-0.1.1-py3-none-any.whl"}


def need_module(modname: str, dist: str | None = None):
    """The imported module, or TargetLoadError naming the wheel to install."""
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        how = (f"pip install --no-deps --no-index .whl/{WHEELS[dist]} (benchmarks/peers/README.md)" if dist in WHEELS
               else "install it")
        raise TargetLoadError(f"{modname} does not import ({type(exc).__name__}: {exc}); {how}") from None


def need_cuda(who: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise TargetLoadError(f"{who} runs on a CUDA GPU; none is available here (run it on the GPU machine: "
                              f"benchmarks/peers/README.md)")

"""torch SDPA's flash, cuDNN and memory-efficient backends, each pinned with sdpa_kernel.

The declarations (and the probes that correct them on the GPU) are flashproof.properties.sdpa_backends';
these factories only refuse to run without a GPU, where those backends do not exist.
"""
from __future__ import annotations

from ._need import need_cuda

__all__ = ["flash", "cudnn", "efficient"]


def _backend(name):
    from flashproof.properties import sdpa_backends

    need_cuda(f"torch SDPA's {name} backend")
    return getattr(sdpa_backends, name)()


def flash():
    return _backend("flash")


def cudnn():
    return _backend("cudnn")


def efficient():
    return _backend("efficient")

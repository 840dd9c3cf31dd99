"""The compiled kernels on a CUDA GPU: benchmarks/gpu_kernel_checks.py's groups at shapes / 8.

Skipped without a GPU (CI has none); the full-size run and compute-sanitizer are recorded in
docs/gpu-runs.md.
"""
import importlib.util
import pathlib

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled Triton kernels)"),
]

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_kernel_checks.py"


def _checks():
    spec = importlib.util.spec_from_file_location("gpu_kernel_checks", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("group", ["forward", "backward", "special", "tiles", "tiles256", "decode",
                                   "determinism", "small"])
def test_gpu_group(group):
    mod = _checks()
    assert mod.main([group, "--shrink", "8"]) == 0, [r for r in mod._RESULTS if not r["ok"]]

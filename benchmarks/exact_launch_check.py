"""The exact pass launched directly (attention._launch_passes' twin builds) against triton's own launch, on a GPU.

    python3 benchmarks/exact_launch_check.py

Forward and backward, bf16 with tensor descriptors (causal and not) and fp32 with pointers (causal), on
finite inputs and with a NaN in V and an inf in K (programs the exact pass recomputes): the tensors
must be bitwise those of the path that launches every exact pass through triton (the twin cache kept
empty). Also prints the host time of one tiny forward each way. Exit 1 on any difference.
"""
from __future__ import annotations

import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class _NoTwins(dict):
    """A twin cache that never holds anything: triton launches every exact pass."""

    def __setitem__(self, key, value):
        pass


def _through_triton(A, fn):
    saved, A._EXACT_BUILDS = A._EXACT_BUILDS, _NoTwins()
    try:
        return fn()
    finally:
        A._EXACT_BUILDS = saved


def main():
    import torch

    from flashproof import kernels
    from host_overhead import per_call_us

    A = importlib.import_module("flashproof.kernels.attention")
    bad = 0

    def run(q, k, v, causal):
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        o = kernels.attention(qq, kk, vv, causal=causal)
        return [t.detach() for t in (o, *torch.autograd.grad(o, (qq, kk, vv), torch.ones_like(o)))]

    for dtype, causals in ((torch.bfloat16, (False, True)), (torch.float32, (True,))):  # TMA, then pointers
        for causal in causals:
            for case in ("finite", "nan_v", "inf_k"):
                g = torch.Generator(device="cuda").manual_seed(3)
                q, k, v = (torch.randn(2, 4, 300, 64, device="cuda", dtype=dtype, generator=g) for _ in range(3))
                if case == "nan_v":
                    v[1, 2, 150, 3] = float("nan")
                if case == "inf_k":
                    k[0, 1, 77, 9] = float("inf")
                run(q, k, v, causal)  # fills the twin cache
                direct = run(q, k, v, causal)
                via_jit = _through_triton(A, lambda: run(q, k, v, causal))
                same = [torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(direct, via_jit)]
                ok = all(same) and len(A._EXACT_BUILDS) > 0
                bad += not ok
                print(f"{str(dtype)[6:]:8} causal={int(causal)} {case:6}: "
                      f"{'same' if ok else 'DIFFERENT ' + str(same) + f' twins={len(A._EXACT_BUILDS)}'}", flush=True)
    q, k, v = (torch.randn(1, 2, 128, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    direct_us = per_call_us(lambda: kernels.attention(q, k, v))
    jit_us = _through_triton(A, lambda: per_call_us(lambda: kernels.attention(q, k, v)))
    print(f"host us per forward: direct exact launch {direct_us:.0f}, through triton {jit_us:.0f}; "
          f"twins {len(A._EXACT_BUILDS)}")
    print("FAILED" if bad else "PASSED", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""A few launches of one flashproof kernel, for Nsight Compute (issue 17's evidence of what limits a kernel).

    ncu --kernel-name regex:_fwd_kernel --launch-skip 4 --launch-count 1 --section SpeedOfLight \\
        python3 benchmarks/ncu_target.py fwd128
    ncu --kernel-name regex:_bwd_dkdv_kernel --launch-skip 2 --launch-count 1 ... python3 benchmarks/ncu_target.py bwd256

fwd128: bf16 B8 H16 L4096 E128 non-causal forward (the bench's headline case), three calls; bwd256:
bf16 B4 H16 L4096 E256 forward + backward, two calls. Each call launches the fast pass, then the exact
pass (whose programs return at once on finite data), so the fast pass is every other launch.
"""
import sys

import torch

from flashproof import kernels

CASES = {"fwd128": (8, 16, 4096, 128, False), "bwd256": (4, 16, 4096, 256, True),
         "fwd128c": (8, 16, 4096, 128, False)}


def main(argv):
    if len(argv) != 1 or argv[0] not in CASES:
        print(f"usage: python3 benchmarks/ncu_target.py {{{','.join(CASES)}}}", file=sys.stderr)
        return 2
    b, h, L, e, bwd = CASES[argv[0]]
    causal = argv[0].endswith("c")
    q, k, v = (torch.randn(b, h, L, e, device="cuda", dtype=torch.bfloat16, requires_grad=bwd) for _ in range(3))
    for _ in range(2 if bwd else 3):
        o = kernels.attention(q, k, v, causal=causal)
        if bwd:
            torch.autograd.grad(o, (q, k, v), torch.ones_like(o))
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

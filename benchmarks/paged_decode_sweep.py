"""Paged decode's launch options on a GPU (session 7 call 5): tile size, warps and stages of the decode
kernel over a paged cache (page_size 256, shuffled block table), as a fraction of the copy bandwidth
(4240 GB/s on the H200), from CUDA-graph replays of decode(validate=False) with the default splits.

    python3 benchmarks/paged_decode_sweep.py

kernels/tiles.default_decode_block cites the result (docs/audits/h200/session7/call5/paged-sweep.txt).
"""
import torch
from speed_sweep import decode_launch  # benchmarks/ is sys.path[0] when run as a script
from triton.testing import do_bench_cudagraph

from flashproof import kernels

COPY_GBS = 4240
for B, lk in ((1, 32768), (1, 131072), (8, 4096), (8, 32768), (64, 4096)):
    ps = 256
    pages = B * lk // ps
    q = torch.randn(B, 64, 1, 128, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(pages, 8, ps, 128, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    t = torch.randperm(pages, device="cuda", dtype=torch.int32).reshape(B, -1)
    lens = torch.full((B,), lk, device="cuda", dtype=torch.int32)
    nb = 2 * kc.numel() * 2
    out = []
    for w, s, bn in ((4, 4, 64), (4, 2, 64), (4, 3, 64), (8, 3, 128), (4, 2, 128)):
        def f():
            return kernels.decode(q, kc, vc, block_table=t, seqlens=lens, validate=False, block_n=bn)
        with decode_launch(w, s):
            f()
            ms = do_bench_cudagraph(f, rep=30, return_mode="median")
        out.append(f"w{w}s{s}bn{bn}={nb / ms / 1e6 / COPY_GBS:.2f}")
    print(B, lk, " ".join(out), flush=True)

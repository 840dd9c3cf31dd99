"""Paged decode with pages that hold whole 128-key tiles (the 128-key default of
tiles.default_decode_block) is bitwise equal to the contiguous cache read with the same tiles and
splits (session 7 call 6; run it under compute-sanitizer memcheck too). Prints the error against an
fp64 SDPA for information only: the bound is judged by the gpu profile and gpu_kernel_checks.py.

    python3 benchmarks/paged_decode_check.py
"""
import sys

import torch

from flashproof import kernels

torch.manual_seed(0)
ok = True
for B, lk, ps, splits in ((3, 1000, 256, 4), (2, 4096, 128, 3), (1, 700, 384, 1)):
    q = torch.randn(B, 16, 1, 128, device="cuda", dtype=torch.bfloat16)
    cap = -(-lk // ps) * ps
    kc = torch.randn(B, 2, cap, 128, device="cuda", dtype=torch.bfloat16)
    vc = torch.randn_like(kc)
    kc[:, :, lk:] = float("nan")  # past every sequence: never read
    lens = torch.tensor([lk - 7 * i for i in range(B)], device="cuda", dtype=torch.int32)
    npg = cap // ps
    perm = torch.randperm(B * npg, device="cuda")
    kp = torch.empty(B * npg, 2, ps, 128, device="cuda", dtype=torch.bfloat16)
    vp = torch.empty_like(kp)
    kp[perm] = kc.reshape(B, 2, npg, ps, 128).permute(0, 2, 1, 3, 4).reshape(-1, 2, ps, 128)
    vp[perm] = vc.reshape(B, 2, npg, ps, 128).permute(0, 2, 1, 3, 4).reshape(-1, 2, ps, 128)
    table = perm.reshape(B, npg).to(torch.int32)
    o1 = kernels.decode(q, kp, vp, block_table=table, seqlens=lens, num_splits=splits)
    o2 = kernels.decode(q, kc, vc, seqlens=lens, num_splits=splits, block_n=128)
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[b:b + 1].double(), kc[b:b + 1, :, :int(lens[b])].double().repeat_interleave(8, 1),
        vc[b:b + 1, :, :int(lens[b])].double().repeat_interleave(8, 1)) for b in range(B)])
    eq = torch.equal(o1, o2)
    print(B, lk, ps, splits, "bitwise paged==contiguous:", eq, "max err vs fp64:",
          (o1.double() - ref).abs().max().item(), flush=True)
    ok &= eq
print("OK" if ok else "FAIL")
sys.exit(0 if ok else 1)

"""Host time of one call (Python + launches), where the GPU work is too small to hide it.

    python3 benchmarks/host_overhead.py --out DIR

At tiny shapes the GPU finishes each kernel before the next launch arrives, so wall time per call
over N unsynchronized calls is the host's cost. Measured for ``attention`` (forward, causal and not,
tensor-descriptor loads on and off), the forward + backward, ``decode`` (contiguous and paged), and a
bare Triton kernel with as many arguments as the forward kernel (the launcher's own floor). Then
cProfile of the forward and of decode, to name where the time goes. Writes DIR/host.json and
DIR/host-profile.txt.
"""
from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import json
import os
import pstats
import sys
import time


def per_call_us(fn, n=300):
    import torch

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return host


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import torch
    import triton
    import triton.language as tl

    from flashproof import kernels

    A = importlib.import_module("flashproof.kernels.attention")
    os.makedirs(a.out, exist_ok=True)
    dev, bf = "cuda", torch.bfloat16
    q, k, v = (torch.randn(1, 2, 128, 64, device=dev, dtype=bf) for _ in range(3))
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    qd = torch.randn(1, 8, 1, 64, device=dev, dtype=bf)
    kc = torch.randn(1, 1, 256, 64, device=dev, dtype=bf)
    kp = torch.randn(4, 1, 64, 64, device=dev, dtype=bf)
    table = torch.arange(4, device=dev, dtype=torch.int32).reshape(1, 4)
    lens = torch.full((1,), 256, device=dev, dtype=torch.int32)

    @triton.jit
    def bare(X, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9,
             c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9,
             E: tl.constexpr, F: tl.constexpr):
        tl.store(X + tl.program_id(0), a0 + d9)

    x = torch.zeros(4, device=dev, dtype=torch.int32)
    ints = list(range(3, 43))
    res = {}
    res["bare triton kernel, 41 args"] = per_call_us(lambda: bare[(1,)](x, *ints, E=1, F=2))
    res["bare, enable_fp_fusion=False num_warps=4"] = per_call_us(
        lambda: bare[(1,)](x, *ints, E=1, F=2, num_warps=4, num_stages=2, enable_fp_fusion=False))
    res["torch.empty x3"] = per_call_us(lambda: [torch.empty(128, device=dev) for _ in range(3)])
    res["sdpa flash fwd"] = per_call_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    for causal in (False, True):
        res[f"attention fwd causal={causal}"] = per_call_us(lambda: kernels.attention(q, k, v, causal=causal))
    A.TMA_FORWARD = False
    res["attention fwd, pointer loads"] = per_call_us(lambda: kernels.attention(q, k, v))
    A.TMA_FORWARD = True
    o = kernels.attention(qg, kg, vg)
    do = torch.randn_like(o)
    res["attention bwd (autograd.grad)"] = per_call_us(
        lambda: torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True), n=100)
    res["decode contiguous"] = per_call_us(lambda: kernels.decode(qd, kc, kc))
    res["decode paged validate=False"] = per_call_us(
        lambda: kernels.decode(qd, kp, kp, block_table=table, seqlens=lens, validate=False))
    res["decode paged (default validate)"] = per_call_us(
        lambda: kernels.decode(qd, kp, kp, block_table=table, seqlens=lens), n=100)
    for name, us in res.items():
        print(f"{us:8.1f} us  {name}", flush=True)
    buf = io.StringIO()
    for label, fn in (("attention fwd", lambda: kernels.attention(q, k, v)),
                      ("decode contiguous", lambda: kernels.decode(qd, kc, kc))):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            fn()
        prof.disable()
        torch.cuda.synchronize()
        buf.write(f"==== {label}: 300 calls\n")
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(35)
    with open(os.path.join(a.out, "host-profile.txt"), "w") as f:
        f.write(buf.getvalue())
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    with open(os.path.join(a.out, "host.json"), "w") as f:
        json.dump(dict(meta=meta, host_us=res), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the time goes: per-kernel GPU time (torch.profiler) of the default forward and backward,
and the compiler's register / spill / shared-memory report of each compiled kernel.

    python3 benchmarks/profile_kernels.py --out DIR [--E 128 64]

Shapes: bf16 B8 H16 L4096, E 64 and 128 (or --E), causal and not (the bench's shapes). One E
per run tells the kernels of the compiler report apart (triton 3.6 reports no constants). Writes
DIR/profile.json and prints one line per (case, kernel).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

B, H, L = 8, 16, 4096


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--E", type=int, nargs="+", default=[128, 64])
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from flashproof import kernels

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tune_tiles import kernel_resources

    cases = []
    for e in a.E:
        for causal in (False, True):
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v = (torch.randn(B, H, L, e, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
                       for _ in range(3))
            o = kernels.attention(q, k, v, causal=causal)
            do = torch.randn_like(o)
            torch.autograd.grad(o, (q, k, v), do, retain_graph=True)  # compile + warm
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    o = kernels.attention(q, k, v, causal=causal)
                    torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
                torch.cuda.synchronize()
            per = {}
            for ev in prof.key_averages():
                if ev.device_type.name == "CUDA" or getattr(ev, "device_time_total", 0):
                    t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
                    if t:
                        per[ev.key] = per.get(ev.key, 0.0) + t / 5.0
            for name, us in sorted(per.items(), key=lambda kv: -kv[1]):
                print(f"E={e} causal={int(causal)} {name[:60]:60s} {us / 1000:8.3f} ms", flush=True)
            cases.append(dict(E=e, causal=causal, per_kernel_us=per))
            del q, k, v, o, do
    res = kernel_resources()
    for r in res:
        print("resources", json.dumps(r), flush=True)
    json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   triton=__import__("triton").__version__, cases=cases, resources=res),
              open(os.path.join(a.out, "profile.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

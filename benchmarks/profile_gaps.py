"""Where the goals of issue #6 that the bench misses lose their time: per-launch GPU time
(torch.profiler, launches in order, so the fast and exact passes of one kernel are told apart)
for the shapes benchmarks/results/h100.md names.

    python3 benchmarks/profile_gaps.py --out DIR

Cases (bf16): forward E=128 L=1024 B32 H16 causal and not, at the default tiles and at
(64,64,4,2); backward E=256 L=4096 B8 H16 (dK/dV against dQ); decode GQA 64:8 E=128 B=1 Lk=4096
(split kernel against merge kernel) and B=8 Lk=32768 contiguous against paged (page 256,
shuffled), with two variants that isolate the paged cost: contiguous with seqlens, and paged
with the pages in order. Writes DIR/gaps.json and prints one line per case.

    python3 benchmarks/profile_gaps.py --out DIR [--only fwd,bwd,decode]
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def _launches(fn, reps=5):
    """GPU time (us) of each kernel launch of fn, averaged over reps, in launch order."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    evs = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    per = len(evs) // reps
    out = []
    for i in range(per):
        group = evs[i::per]
        out.append(dict(kernel=group[0].name[:60], us=sum(e.time_range.elapsed_us() for e in group) / len(group)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="fwd,bwd,decode", help="comma-separated case groups")
    a = ap.parse_args(argv)
    only = a.only.split(",")
    os.makedirs(a.out, exist_ok=True)
    import torch

    from flashproof import kernels

    dt = torch.bfloat16
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", dtype=dt, generator=g)

    cases = []

    def record(name, fn, **extra):
        rows = _launches(fn)
        total = sum(r["us"] for r in rows)
        cases.append(dict(case=name, launches=rows, total_us=total, **extra))
        print(f"{name}: total {total:.1f} us | " + ", ".join(f"{r['kernel'][:24]} {r['us']:.1f}" for r in rows),
              flush=True)

    q, k, v = rnd(32, 16, 1024, 128), rnd(32, 16, 1024, 128), rnd(32, 16, 1024, 128)
    for causal in ((False, True) if "fwd" in only else ()):
        record(f"fwd E=128 L=1024 causal={int(causal)} default tiles",
               lambda: kernels.attention(q, k, v, causal=causal))
        record(f"fwd E=128 L=1024 causal={int(causal)} tiles (64,64,4,2)",
               lambda: kernels.attention(q, k, v, causal=causal, block_m=64, block_n=64, num_warps=4, num_stages=2))
    del q, k, v
    if "bwd" in only:
        q, k, v = (rnd(8, 16, 4096, 256).requires_grad_() for _ in range(3))
        o = kernels.attention(q, k, v)
        do = torch.randn_like(o)
        record("bwd E=256 L=4096 (delta, dK/dV fast+exact, dQ fast+exact)",
               lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True))
        del q, k, v, o, do
        torch.cuda.empty_cache()
    for bsz, lk in (((1, 4096), (8, 32768)) if "decode" in only else ()):
        qd = rnd(bsz, 64, 1, 128)
        kc, vc = rnd(bsz, 8, lk, 128), rnd(bsz, 8, lk, 128)
        record(f"decode B={bsz} Lk={lk} contiguous", lambda: kernels.decode(qd, kc, vc))
        pages = bsz * (lk // 256)
        kp = kc.reshape(bsz, 8, lk // 256, 256, 128).permute(0, 2, 1, 3, 4).reshape(pages, 8, 256, 128)
        vp = vc.reshape(bsz, 8, lk // 256, 256, 128).permute(0, 2, 1, 3, 4).reshape(pages, 8, 256, 128)
        perm = torch.randperm(pages, device="cuda")
        kp, vp = kp[perm].contiguous(), vp[perm].contiguous()
        table = torch.argsort(perm).to(torch.int32).reshape(bsz, lk // 256)
        lens = torch.full((bsz,), lk, device="cuda", dtype=torch.int32)
        ref = kernels.decode(qd, kc, vc)
        got = kernels.decode(qd, kp, vp, block_table=table, seqlens=lens, validate=False)
        record(f"decode B={bsz} Lk={lk} paged", lambda: kernels.decode(qd, kp, vp, block_table=table, seqlens=lens,
                                                                      validate=False),
               bitwise_equal_to_contiguous=bool(torch.equal(ref, got)))
        # variants: seqlens alone (no table), and the table alone (pages in order, no shuffle)
        record(f"decode B={bsz} Lk={lk} contiguous with seqlens",
               lambda: kernels.decode(qd, kc, vc, seqlens=lens, validate=False))
        kp, vp = kp[table.flatten().long()].contiguous(), vp[table.flatten().long()].contiguous()
        table_in_order = torch.arange(pages, device="cuda", dtype=torch.int32).reshape(bsz, lk // 256)
        got = kernels.decode(qd, kp, vp, block_table=table_in_order, seqlens=lens, validate=False)
        record(f"decode B={bsz} Lk={lk} paged, pages in order",
               lambda: kernels.decode(qd, kp, vp, block_table=table_in_order, seqlens=lens, validate=False),
               bitwise_equal_to_contiguous=bool(torch.equal(ref, got)))
        del kc, vc, kp, vp
    json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   triton=__import__("triton").__version__, cases=cases),
              open(os.path.join(a.out, "gaps.json"), "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

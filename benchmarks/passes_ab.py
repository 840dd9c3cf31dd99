"""The exact pass in the fast pass' launch (attention.FUSED_PASSES) against two launches, on the GPU.

    python3 benchmarks/passes_ab.py --out DIR [--quick]

Same run, same tensors (bf16): forward and backward times of both modes (triton.testing.do_bench,
the way flashproof.bench times, and do_bench_cudagraph, GPU time only) beside torch SDPA's flash
backend; the host time of one tiny call in each mode; whether both modes give bitwise the same
O, dQ, dK, dV on finite inputs and with a NaN and an inf in K and V; and the registers and spills
of every build the run compiled (the compiler's report). Writes DIR/passes.json and DIR/passes.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: (L, B, H, E, causal): the bench's small-grid causal rows, then its E=128 and E=256 rows
CASES = [(1024, 1, 16, 128, True), (1024, 4, 16, 128, True), (1024, 16, 16, 128, True),
         (2048, 1, 16, 128, True), (2048, 4, 16, 128, True), (4096, 1, 16, 128, True),
         (4096, 8, 16, 128, False), (4096, 8, 16, 128, True), (4096, 8, 16, 256, False)]


def _mode(A, fused):
    A.FUSED_PASSES = fused
    A._PLANS.clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="the small-grid rows and E=128 L4096 only")
    a = ap.parse_args(argv)
    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench, do_bench_cudagraph

    from flashproof import kernels
    from host_overhead import per_call_us
    from tune_tiles import kernel_resources

    A = sys.modules["flashproof.kernels.attention"]
    os.makedirs(a.out, exist_ok=True)
    dev, bf = "cuda", torch.bfloat16
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
    rows, same = [], []

    def flash(q, k, v, c):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=c)

    cases = CASES[:8] if a.quick else CASES
    for lq, b, h, e, causal in cases:
        g = torch.Generator(device=dev).manual_seed(lq + b + e)
        q, k, v = (torch.randn(b, h, lq, e, device=dev, dtype=bf, generator=g) for _ in range(3))
        flops = 4 * b * h * lq * lq * e / (2 if causal else 1)
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        do = torch.randn_like(q)
        row = dict(L=lq, B=b, H=h, E=e, causal=causal)
        for name, fn in (("flash", flash), ("fused", kernels.attention), ("two", kernels.attention)):
            if name != "flash":
                _mode(A, name == "fused")
            f = (lambda fn=fn: fn(q, k, v, causal)) if name == "flash" else (lambda: kernels.attention(q, k, v, causal=causal))
            row[f"fwd_ms_{name}"] = do_bench(f, warmup=25, rep=100, return_mode="median")
            row[f"fwd_graph_ms_{name}"] = do_bench_cudagraph(f, rep=100, return_mode="median")
            o = flash(qq, kk, vv, causal) if name == "flash" else kernels.attention(qq, kk, vv, causal=causal)
            row[f"bwd_ms_{name}"] = do_bench(lambda: torch.autograd.grad(o, (qq, kk, vv), do, retain_graph=True),
                                             warmup=25, rep=100, return_mode="median")
        for p in ("fwd", "bwd"):
            mult = 2.5 if p == "bwd" else 1.0
            for name in ("flash", "fused", "two"):
                row[f"{p}_tflops_{name}"] = flops * mult / row[f"{p}_ms_{name}"] / 1e9
        rows.append(row)
        print(json.dumps(row), flush=True)

    # bitwise: both modes, finite and non-finite inputs (NaN in V, inf in K at keys some tiles mask)
    for lq, e, causal in ((1000, 128, True), (777, 64, False), (512, 256, True)):
        g = torch.Generator(device=dev).manual_seed(lq)
        base = [torch.randn(2, 4, lq, e, device=dev, dtype=bf, generator=g) for _ in range(3)]
        for case in ("finite", "nan_v", "inf_k"):
            q, k, v = (x.clone() for x in base)
            if case == "nan_v":
                v[0, 1, lq // 3, 5] = float("nan")
            if case == "inf_k":
                k[1, 2, lq // 2, 7] = float("inf")
            res = {}
            for fused in (True, False):
                _mode(A, fused)
                qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
                o = kernels.attention(qq, kk, vv, causal=causal)
                grads = torch.autograd.grad(o, (qq, kk, vv), torch.ones_like(o))
                res[fused] = [t.detach().view(torch.int16) for t in (o, *grads)]
            eq = {n: bool(torch.equal(x, y)) for n, x, y in zip(("o", "dq", "dk", "dv"), res[True], res[False])}
            same.append(dict(L=lq, E=e, causal=causal, case=case, equal=eq))
            print(json.dumps(same[-1]), flush=True)

    host = {}
    q, k, v = (torch.randn(1, 2, 128, 64, device=dev, dtype=bf) for _ in range(3))
    for fused in (True, False):
        _mode(A, fused)
        host[f"fwd fused={fused}"] = per_call_us(lambda: kernels.attention(q, k, v))
        host[f"fwd causal fused={fused}"] = per_call_us(lambda: kernels.attention(q, k, v, causal=True))
    _mode(A, True)
    host["sdpa flash fwd"] = per_call_us(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    print(json.dumps(host), flush=True)

    res = dict(meta=meta, rows=rows, bitwise=same, host_us=host, builds=kernel_resources())
    with open(os.path.join(a.out, "passes.json"), "w") as f:
        json.dump(res, f, indent=1)
    lines = [f"# FUSED_PASSES A/B ({meta['device']}, torch {meta['torch']}, triton {meta['triton']})", "",
             "TFLOP/s from do_bench medians (graph: do_bench_cudagraph ms). fused/two = this mode / two launches.", "",
             "| L | B | E | causal | fwd flash | fwd two | fwd fused | fused/two | fused/flash | graph ms two | graph ms fused "
             "| bwd flash | bwd two | bwd fused | fused/two | fused/flash |", "|" + "---|" * 16]
    for r in rows:
        lines.append(f"| {r['L']} | {r['B']} | {r['E']} | {int(r['causal'])} | {r['fwd_tflops_flash']:.0f} | "
                     f"{r['fwd_tflops_two']:.0f} | {r['fwd_tflops_fused']:.0f} | "
                     f"{r['fwd_ms_two'] / r['fwd_ms_fused']:.2f}x | {r['fwd_ms_flash'] / r['fwd_ms_fused']:.2f}x | "
                     f"{r['fwd_graph_ms_two']:.4f} | {r['fwd_graph_ms_fused']:.4f} | {r['bwd_tflops_flash']:.0f} | "
                     f"{r['bwd_tflops_two']:.0f} | {r['bwd_tflops_fused']:.0f} | "
                     f"{r['bwd_ms_two'] / r['bwd_ms_fused']:.2f}x | {r['bwd_ms_flash'] / r['bwd_ms_fused']:.2f}x |")
    bad = [s for s in same if not all(s["equal"].values())]
    lines += ["", f"bitwise, fused == two launches: {len(same) - len(bad)} of {len(same)} cases"
              + ("" if not bad else f"; differ: {bad}"), "", f"host us per call: {host}"]
    with open(os.path.join(a.out, "passes.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

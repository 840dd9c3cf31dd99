"""TMA against pointer loads in the attention kernels, on a GPU: the same kernels with K/V (and
Q/dO in dK/dV) read through tensor descriptors or through masked pointer loads.

    python3 benchmarks/tma_ab.py --out DIR [--parts bitwise,timing,ws]

1. Bitwise: forward output, LSE and the three gradients agree bitwise between the two load
   paths (GQA, causal both alignments, a window, E=80 padded to 128, Lk off the block grid,
   NaN in memory past Lk and past E that only pointer masking or the copy engine's zero fill
   keep out).
2. Timing (bf16, B*L = 32k tokens, H=16, default tiles): median ms of each path
   (triton.testing.do_bench), forward and forward+backward, E in 64/128/256, causal and not.
3. Warp specialization probe: whether this Triton turns ``tl.range(..., warp_specialize=True)``
   into warp-specialized code on this GPU (TTGIR ops), for a plain TMA GEMM loop.

Writes DIR/tma_ab.json and prints one line per case.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


def _run(A, q, k, v, do, *, causal, window=None, tma):
    plan = A._plan(q, k, v, mask=A.spec.make_mask(causal=causal, window=window, alignment=None), scale=None,
                   softcap=None, block_m=None, block_n=None, num_warps=None, num_stages=None, allow_tf32=False)
    plan = dataclasses.replace(plan, tma_fwd=tma, tma_bwd=tma)
    o, lse2 = A._forward(q, k, v, None, plan)
    if do is None:
        return plan, (o, lse2)
    return plan, (o, lse2) + tuple(A._backward(q, k, v, None, o, lse2, do, None, plan))


def _same(a, b):
    import torch

    return bool(torch.equal(torch.nan_to_num(a, 7.0, 8.0, 9.0), torch.nan_to_num(b, 7.0, 8.0, 9.0))
                and torch.equal(a.isnan(), b.isnan()))


def bitwise(A, log):
    import torch

    out = []
    g = torch.Generator(device="cuda").manual_seed(1)
    cases = [  # (B, H, Hkv, Lq, Lk, E, causal, window)
        (2, 8, 2, 300, 517, 128, True, None), (2, 8, 8, 517, 300, 128, "bottom_right", None),
        (1, 4, 1, 1000, 1000, 64, False, (100, 5)), (2, 4, 4, 333, 777, 80, False, None),
        (2, 4, 2, 1024, 1024, 256, True, None), (3, 2, 1, 77, 4095, 128, False, None),
    ]
    for dt in (torch.bfloat16, torch.float16):
        for (b, h, hk, lq, lk, e, causal, window) in cases:
            def buf(heads, n, d):  # NaN past n rows and past d columns: never read by either path
                x = torch.full((b, heads, n + 64, 128 if d == 80 else d), float("nan"), device="cuda", dtype=dt)
                x[:, :, :n, :d] = torch.randn(b, heads, n, d, device="cuda", dtype=dt, generator=g)
                return x[:, :, :n, :d]
            q, k, v, do = buf(h, lq, e), buf(hk, lk, e), buf(hk, lk, e), buf(h, lq, e)
            res = {}
            for tma in (True, False):
                plan, res[tma] = _run(A, q, k, v, do, causal=causal, window=window, tma=tma)
            used = A._tma_descriptor(k, plan.fwd.block_n) is not None
            ok = all(_same(x, y) for x, y in zip(res[True], res[False]))
            finite = all(bool(t.isfinite().all()) for t in res[True][:1] + res[True][2:])
            out.append(dict(dtype=str(dt), shape=[b, h, hk, lq, lk, e], causal=str(causal), window=window,
                            tma_used=used, bitwise=ok, finite=finite))
            log(f"bitwise {out[-1]}")
    return out


def timing(A, log):
    import torch
    from triton.testing import do_bench

    rows = []
    for e, lengths in ((128, (1024, 4096, 16384)), (64, (4096,)), (256, (4096,))):
        for L in lengths:
            b = 32768 // L
            g = torch.Generator(device="cuda").manual_seed(0)
            q, k, v, do = (torch.randn(b, 16, L, e, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
            for causal in (False, True):
                r = dict(E=e, L=L, B=b, causal=causal)
                for tma in (True, False):
                    tag = "tma" if tma else "ptr"
                    r[f"fwd_{tag}_ms"] = do_bench(lambda: _run(A, q, k, v, None, causal=causal, tma=tma),
                                                  warmup=25, rep=100, return_mode="median")
                    r[f"fwdbwd_{tag}_ms"] = do_bench(lambda: _run(A, q, k, v, do, causal=causal, tma=tma),
                                                     warmup=25, rep=100, return_mode="median")
                r["fwd_speedup"] = r["fwd_ptr_ms"] / r["fwd_tma_ms"]
                r["bwd_speedup"] = (r["fwdbwd_ptr_ms"] - r["fwd_ptr_ms"]) / (r["fwdbwd_tma_ms"] - r["fwd_tma_ms"])
                rows.append(r)
                log(f"timing {r}")
            del q, k, v, do
    return rows


def ws_probe(log):
    """TTGIR op counts of a TMA GEMM loop compiled with warp_specialize True and False."""
    import torch
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor

    @triton.jit
    def gemm(a_desc, b_desc, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WS: tl.constexpr):
        acc = tl.zeros([BM, BN], tl.float32)
        for kk in tl.range(0, K, BK, warp_specialize=WS):
            acc = tl.dot(a_desc.load([0, kk]), b_desc.load([0, kk]).T, acc)
        offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        tl.store(c_ptr + offs, acc)

    a = torch.randn(128, 4096, device="cuda", dtype=torch.bfloat16)
    bmat = torch.randn(128, 4096, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(128, 128, device="cuda", dtype=torch.float32)
    out = {}
    for ws in (False, True):
        try:
            k = gemm[(1,)](TensorDescriptor.from_tensor(a, [128, 64]), TensorDescriptor.from_tensor(bmat, [128, 64]),
                           c, 4096, 128, 128, 64, ws, num_warps=4, num_stages=3)
            ir = k.asm["ttgir"]
            ops = {op: ir.count(op) for op in ("ttg.warp_specialize", "ttg.warp_return", "ttng.async_tma_copy_global_to_local",
                                               "ttng.warp_group_dot", "ttg.partition")}
            err = float((c - a.float() @ bmat.float().T).abs().max())
            out[str(ws)] = dict(ops=ops, max_err=err)
        except Exception as exc:  # noqa: BLE001 - the probe's answer may be a compile error
            out[str(ws)] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
        log(f"warp_specialize={ws}: {out[str(ws)]}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="bitwise,timing,ws",
                    help="comma-separated; ws runs last (its crash would poison the CUDA context)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    import torch
    import triton

    import flashproof.kernels  # noqa: F401 - registers the module
    A = sys.modules["flashproof.kernels.attention"]
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)

    def log(s):
        print(s, flush=True)
    parts = a.parts.split(",")

    def save():
        with open(os.path.join(a.out, "tma_ab.json"), "w") as f:
            json.dump(res, f, indent=1)
    for name, fn in (("bitwise", bitwise), ("timing", timing), ("ws", lambda _A, lg: ws_probe(lg))):
        if name in parts:
            res[name] = fn(A, log)
            save()
    return 0 if all(r["bitwise"] for r in res.get("bitwise", [])) else 1


if __name__ == "__main__":
    sys.exit(main())

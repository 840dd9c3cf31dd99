"""The compiled kernel against theorems 6 and 4b on a GPU: forward and backward errors vs the derived
bounds, for a declared accumulation model.

    python3 benchmarks/bound_check_gpu.py --out benchmarks/results/bound-check.json \
        [--accumulator declared | fp32 | fp32_blockfma_k8_x0_rz ...] [--dtypes float16 bfloat16 float32]

For each dtype and case (shapes up to L = 1024, E in 64/128, causal or not, GQA, a window, softcap,
logit scales 1 and 8), flashproof's kernel runs on CUDA (forward with LSE, then dQ, dK, dV through
autograd); the exact values are the float64 reference on CPU; the bounds are
proofs.running_forward_bound (lse_combine=False) and proofs.running_backward_bound with
precision_for(dtype, accumulator=...): by default the model flashproof's kernel target declares for
this device (builtin_targets.kernel_accumulator: on SM90 the measured fp32_blockfma_k16_x2_rz for
fp16/bf16, "fp32" for fp32's IEEE dots); ``--accumulator NAME`` replaces the fp16/bf16 model. Prints
and writes max error / bound per dtype and output; exit 1 if any element exceeds its bound.
"""
from __future__ import annotations

import argparse
import json
import sys


def _cases(small=False):
    # b, h, hkv, lq, lk, e, causal, window, softcap, logit scale
    if small:  # a CPU smoke run of this script (interpreter)
        return [(1, 2, 1, 19, 23, 16, True, None, None, 1.0), (1, 2, 2, 17, 33, 32, False, (4, 2), 5.0, 4.0)]
    return [(2, 8, 8, 512, 512, 64, False, None, None, 1.0), (1, 8, 2, 1024, 1024, 128, "bottom_right", None, None, 1.0),
            (2, 4, 4, 333, 777, 128, False, (128, 0), None, 1.0), (1, 8, 8, 512, 512, 64, True, None, 30.0, 8.0),
            (1, 4, 4, 256, 1024, 128, False, None, None, 8.0)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--accumulator", default="declared",
                    help="accumulation model of the fp16/bf16 tensor-core dots (default: the kernel target's declaration)")
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16", "float32"])
    ap.add_argument("--device", default="cuda", help="cuda; cpu runs two small cases (TRITON_INTERPRET=1)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        import os
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import numpy as np
    import torch

    from flashproof.kernels import attention
    from flashproof.proofs import precision_for, running_backward_bound, running_forward_bound
    from flashproof.properties.builtin_targets import kernel_accumulator
    from flashproof.reference import backward_fp64, forward_fp64

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bound_check_gpu: no CUDA device", file=sys.stderr)
        return 2
    dev = args.device
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)"
    declared = kernel_accumulator(interpreting=dev == "cpu", dtypes=tuple(args.dtypes))
    report = {"device": name, "accumulator": args.accumulator, "declared": declared, "dtypes": {}}
    bad = 0
    for dtype in args.dtypes:
        dt = getattr(torch, dtype)
        acc = declared[dtype] if dtype == "float32" or args.accumulator == "declared" else args.accumulator
        prec = precision_for(dt, accumulator=acc)
        worst = {"o": 0.0, "lse": 0.0, "dq": 0.0, "dk": 0.0, "dv": 0.0}
        for i, (b, h, hkv, lq, lk, e, causal, window, softcap, sc) in enumerate(_cases(small=dev == "cpu")):
            g = torch.Generator().manual_seed(100 + i)
            q = (torch.randn(b, h, lq, e, generator=g) * sc).to(dt)
            k = torch.randn(b, hkv, lk, e, generator=g).to(dt)
            v = torch.randn(b, hkv, lk, e, generator=g).to(dt)
            do = torch.randn(b, h, lq, e, generator=g).to(dt)
            opts = dict(causal=causal, window=window, softcap=softcap)
            qq, kk, vv = (x.to(dev).requires_grad_() for x in (q, k, v))
            o, lse = attention(qq, kk, vv, return_lse=True, **opts)
            o.backward(do.to(dev))
            got = {"o": o, "lse": lse, "dq": qq.grad, "dk": kk.grad, "dv": vv.grad}
            ro, rl = forward_fp64(q, k, v, **opts)
            rq, rk, rv = backward_fp64(q, k, v, do, **opts)
            ob, lb = running_forward_bound(q, k, v, precision=prec, lse_combine=False, **opts)
            bq, bk, bv = running_backward_bound(q, k, v, do, precision=prec, **opts)
            for name, ref, bnd in (("o", ro, ob), ("lse", rl, lb), ("dq", rq, bq), ("dk", rk, bk), ("dv", rv, bv)):
                x = got[name].detach().double().cpu().numpy()
                fin = np.isfinite(ref)
                err = np.where(fin, np.abs(x - np.where(fin, ref, 0)), 0.0)
                with np.errstate(divide="ignore", invalid="ignore"):
                    r = np.where(bnd > 0, err / bnd, np.where(err > 0, np.inf, 0.0))
                worst[name] = max(worst[name], float(np.nanmax(r)))
                bad += int((r > 1).sum())
        report["dtypes"][dtype] = dict(accumulator=acc, max_ratio=worst)
        print(f"{dtype} ({acc}): " + ", ".join(f"{k_} {v_:.3g}" for k_, v_ in worst.items()))
    report["violations"] = bad
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"violations: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

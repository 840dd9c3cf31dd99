"""Which accumulation model does the GPU's ``tl.dot`` follow? A probe of crafted dot products.

    python3 benchmarks/probe_mma.py --out benchmarks/results/mma-probe.json [--dtypes float16 bfloat16 float32]

For each input dtype, a Triton kernel computes D = tl.dot(A, B, C) (as the attention kernels call
it: fp32 accumulator passed in, ``input_precision="ieee"`` for fp32 inputs) on the batteries of
``flashproof.proofs.accumulation.probe_battery`` (B a column of ones, so each row is c + sum_e a_e),
for dot lengths K = 16, 32 and 64. The results are compared bit for bit with every candidate
block-FMA model (k products per block, x extra alignment bits, final rn/rz; k = 1 with exact
alignment is an IEEE FMA chain). Printed and written per dtype: the consistent models and the name
to declare (``precision_for(dtype, accumulator=NAME)``, the most conservative consistent model), and
the largest error of the device relative to the IEEE-fp32 any-order bound E u sum|t| (if no block
model matches, a value <= 1 on every row supports declaring "fp32").
"""
from __future__ import annotations

import argparse
import json
import math
import sys


def _device_results(battery, dtype, length):
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def probe(A, B, C, D, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, PRECISION: tl.constexpr):
        rm = tl.arange(0, M)
        rn = tl.arange(0, N)
        rk = tl.arange(0, K)
        a = tl.load(A + rm[:, None] * K + rk[None, :])
        b = tl.load(B + rk[:, None] * N + rn[None, :])
        c = tl.load(C + rm[:, None] * N + rn[None, :])
        d = tl.dot(a, b, c, input_precision=PRECISION)
        tl.store(D + rm[:, None] * N + rn[None, :], d)

    dt = getattr(torch, dtype)
    out = []
    n = 16
    for c, a in battery:
        m = a.shape[0]
        A = torch.from_numpy(a).to(dt).cuda().contiguous()
        B = torch.ones(length, n, dtype=dt, device="cuda")
        C = torch.from_numpy(c).float().cuda()[:, None].repeat(1, n).contiguous()
        D = torch.empty(m, n, dtype=torch.float32, device="cuda")
        probe[(1,)](A, B, C, D, M=m, N=n, K=length, PRECISION="ieee" if dtype == "float32" else "tf32")
        d = D.cpu().numpy()
        assert (d == d[:, :1]).all(), "columns of one row differ: the unit is not deterministic across columns"
        out.append(d[:, 0].copy())
    return out


def _ieee_ratio(battery, observed):
    """max over rows of |device - exact| / (K u sum|t|) (exact: math.fsum, correctly rounded)."""
    worst = 0.0
    for (c, a), d in zip(battery, observed):
        for r in range(a.shape[0]):
            terms = [float(c[r])] + [float(x) for x in a[r]]
            exact = math.fsum(terms)
            lim = len(terms) * 2.0 ** -24 * math.fsum(abs(t) for t in terms)
            if lim > 0:
                worst = max(worst, abs(float(d[r]) - exact) / lim)
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16", "float32"])
    args = ap.parse_args(argv)
    import torch

    from flashproof.proofs import accumulation as acc

    if not torch.cuda.is_available():
        print("probe_mma: no CUDA device", file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton
        report["triton"] = triton.__version__
    except ImportError:
        pass
    for dtype in args.dtypes:
        rows = {}
        for length in (16, 32, 64):
            bat = acc.probe_battery(dtype, seed=length, rows=64, length=length, calls=8)
            obs = _device_results(bat, dtype, length)
            ok, name = acc.consistent_models(bat, obs)
            rows[length] = dict(consistent=[list(m) for m in ok], declare=name, ieee_ratio=_ieee_ratio(bat, obs))
        common = set.intersection(*(set(map(tuple, r["consistent"])) for r in rows.values()))
        decl = None
        if common:
            worst = max(common, key=lambda m: (127 / m[0] + 1) * acc.block_fma_unit(*m))
            decl = acc.block_fma_name(*worst)
        report[dtype] = dict(per_length=rows, consistent_all=sorted(map(list, common)), declare=decl)
        print(f"{dtype}: declare {decl!r}; consistent at every K: {sorted(common)}; "
              f"IEEE any-order ratio {max(r['ieee_ratio'] for r in rows.values()):.3g}")
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

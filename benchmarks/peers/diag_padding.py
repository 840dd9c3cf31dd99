"""Whether a peer's non-finite output on a strided view comes from the padding or from the inputs.

garbage_in_padding_isolated judges O on views into padded buffers whose padding holds NaN. When
it fails, this runs the shrunk problem twice through the Target: on contiguous copies (no padding
to read) and on the views with NaN padding, and counts the non-finite outputs of each. Non-finite
only on the views: the kernel reads past the view (a bug of its strides or its tail masking).
Non-finite on both: the inputs alone do it (another property's finding). Run it as a module from
the repository root: as a script, benchmarks/peers/ comes first on sys.path and its fla.py hides
the fla package (the H200 run of 2026-12-03 lost this diagnosis that way).

    python3 -m benchmarks.peers.diag_padding benchmarks.peers.fla:target --lq 148 --lk 148 --e 8 \
        --dtype bfloat16 --regime large --spread 1e15 --causal top_left --pad 1
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _padded(t, pad):
    import torch

    buf = torch.full((*t.shape[:-1], t.shape[-1] + pad), float("nan"), dtype=t.dtype, device=t.device)
    buf[..., : t.shape[-1]] = t
    return buf[..., : t.shape[-1]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("target")
    for name, default in (("batch", 1), ("heads", 1), ("lq", 148), ("lk", 148), ("e", 8), ("pad", 1), ("seed", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--regime", default="standard")
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--causal", default="top_left")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args(argv)
    import torch

    from flashproof.properties.cases import MaskSpec, Problem, Regime, Shape
    from flashproof.properties.inputs import build
    from flashproof.properties.loading import load_target

    t = load_target(a.target)
    shape = Shape(batch=a.batch, heads=a.heads, kv_heads=a.heads, lq=a.lq, lk=a.lk, e=a.e, ev=a.e)
    problem = Problem(shape=shape, dtype=a.dtype, regime=Regime(a.regime, 0.0, a.spread),
                      mask=MaskSpec(causal=a.causal if a.causal != "none" else False), seed=a.seed)
    inp = build(problem, device=a.device)
    opts = inp.opts()
    q, k, v = opts.pop("q", inp.q), opts.pop("k", inp.k), opts.pop("v", inp.v)
    rows = {}
    for how, (qq, kk, vv) in (("contiguous", (q.contiguous(), k.contiguous(), v.contiguous())),
                              (f"views with {a.pad} NaN of padding", tuple(_padded(x, a.pad) for x in (q, k, v)))):
        o, _ = t(qq, kk, vv, return_lse=False, **opts)
        bad = ~torch.isfinite(o.float())
        rows[how] = int(bad.sum())
        where = sorted({int(i) for i in bad.nonzero()[:, 2].tolist()})[:8] if bad.any() else []
        print(f"{how}: {rows[how]} non-finite of {o.numel()} (rows {where}{'...' if bad.any() else ''})")
    dev = torch.cuda.get_device_name() if a.device == "cuda" else a.device
    print(f"{t.name}: torch {torch.__version__}, {dev}")
    return 1 if any(rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

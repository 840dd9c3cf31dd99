"""Timings of the reference paths at one head (B=1, H=1), default L=1024, E=128, in ONE run:
certified (arb) forward, mpmath forward at the same precision, their ratio, the fp64 path,
and the radii of the certified balls.

    .venv/bin/python benchmarks/reference_bench.py [--L 1024] [--E 128] [--prec 96] [--mp-rows N]

With ``--mp-rows N`` the mpmath path runs on the first N query rows only and its time is scaled
by L/N: its cost is exactly linear in query rows (each row does Lk dot products, Lk exps and Ev
dot products, independently of the others); the output then says so.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import mpmath
import numpy as np

__all__ = ["main"]


def main(argv=None) -> int:
    import flint

    from flashproof import reference as ref
    from flashproof.reference.certified import DEFAULT_PREC

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--L", type=int, default=1024)
    p.add_argument("--E", type=int, default=128)
    p.add_argument("--prec", type=int, default=DEFAULT_PREC)
    p.add_argument("--mp-rows", type=int, default=None, help="time mpmath on this many query rows and scale")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    L, E = args.L, args.E
    rng = np.random.default_rng(args.seed)
    # fp32 inputs, standard normal: the typical regime of a kernel test.
    q, k, v = (rng.standard_normal((1, 1, L, E)).astype(np.float32) for _ in range(3))

    print(f"# reference_bench: B=1 H=1 Lq=Lk={L} E=Ev={E}, fp32 N(0,1) inputs, seed {args.seed}, prec {args.prec} bits")
    print(f"# machine: {platform.machine()} nproc={os.cpu_count()} python {platform.python_version()} "
          f"python-flint {flint.__version__} mpmath {mpmath.__version__} numpy {np.__version__}")

    print(f"# load average before: {_load()}  (wall = elapsed; cpu = this process's CPU time, which is what")
    print("#  the wall time would be on an idle machine for the arb and mpmath paths, which run on one thread)")

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w, time.process_time() - c

    (o64, lse64), w64, c64 = timed(lambda: ref.forward_fp64(q, k, v))
    print(f"forward_fp64:      wall {w64:8.3f} s  cpu {c64:8.3f} s")
    c, warb, carb = timed(lambda: ref.forward_certified(q, k, v, prec=args.prec))
    print(f"forward_certified: wall {warb:8.3f} s  cpu {carb:8.3f} s   (arb, prec {args.prec})")

    rows = L if args.mp_rows is None else min(L, args.mp_rows)
    (om, lm), wmp, cmp_ = timed(lambda: ref.forward_mp(q[:, :, :rows], k, v, prec=args.prec))
    f = L / rows
    if rows == L:
        print(f"forward_mp:        wall {wmp:8.3f} s  cpu {cmp_:8.3f} s   (mpmath, prec {args.prec}, all {L} rows)")
    else:
        print(f"forward_mp:        wall {wmp * f:8.3f} s  cpu {cmp_ * f:8.3f} s   (mpmath, prec {args.prec}: measured "
              f"wall {wmp:.3f} s / cpu {cmp_:.3f} s on {rows} of {L} query rows, scaled x{f:g}; cost is exactly "
              f"linear in query rows)")
    print(f"speedup mp/arb:    wall {wmp * f / warb:8.1f} x  cpu {cmp_ * f / carb:8.1f} x")
    print(f"# load average after: {_load()}")

    ulp_o = np.spacing(np.abs(c.o_mid))
    ulp_l = np.spacing(np.abs(c.lse_mid))
    print(f"o   ball radius / fp64 ulp:  median {np.median(c.o_ball_rad / ulp_o):.2e}  max {np.max(c.o_ball_rad / ulp_o):.2e}"
          f"   (absolute: median {np.median(c.o_ball_rad):.2e}, max {np.max(c.o_ball_rad):.2e})")
    print(f"lse ball radius / fp64 ulp:  median {np.median(c.lse_ball_rad / ulp_l):.2e}  max {np.max(c.lse_ball_rad / ulp_l):.2e}")
    print(f"o   total radius (incl. rounding mid to fp64) / ulp: max {np.max(c.o_rad / ulp_o):.4f}")
    f32 = np.spacing(np.abs(c.o_mid).astype(np.float32)).astype(np.float64)
    print(f"o   ball radius / fp32 ulp:  max {np.max(c.o_ball_rad / f32):.2e}")
    err64 = np.abs(o64 - c.o_mid)
    vmax = float(np.max(np.abs(v)))
    print(f"forward_fp64 vs certified mid: max |err| {err64.max():.2e} = {err64.max() / (2.0 ** -52 * vmax):.2f} "
          f"ulp(max|v|) (o); {np.max(np.abs(lse64 - c.lse_mid) / ulp_l):.2f} ulp (lse)")
    errmp = np.abs(om - c.o_mid[:, :, :rows])
    print(f"forward_mp (rounded) vs certified mid: max |diff| {errmp.max():.2e}, "
          f"within ball rad: {bool(np.all(errmp <= c.o_rad[:, :, :rows]))}")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())

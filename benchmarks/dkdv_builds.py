"""Registers, stack (spills) and shared memory of the backward kernels as compiled for sm_90, on a
CPU: the fused dK/dV kernel against its split builds (issue 17, goal 2; tiles.backward_split).

Compiles ``_bwd_dkdv_kernel`` with COMPUTE_DK/COMPUTE_DV = (1, 1) fused, (0, 1) dV, (1, 0) dK (and
``_bwd_dq_kernel`` with --dq), fast and exact pass, bf16 with tensor-descriptor loads (what the GPU
runs for contiguous 16-bit inputs), for every backward config of benchmarks/tune_tiles.py's list
at E that kernels.tiles' estimate accepts, with Triton's bundled ptxas; cuobjdump reports REG and
STACK (the per-thread frame, where sm_90 code spills). Reports each build against the estimate and
exits 1 when an accepted build needs more shared memory than the GPU has or does not compile.
Timing needs the GPU: ``tune_tiles.py --split-dkdv 0|1``.

    python benchmarks/dkdv_builds.py [--E 256] [--jobs 2] [--dq] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

__all__ = ["build", "main"]

#: (name, kernel, COMPUTE_DK, COMPUTE_DV)
VARIANTS = (("dkdv", "_bwd_dkdv_kernel", True, True), ("dv", "_bwd_dkdv_kernel", False, True),
            ("dk", "_bwd_dkdv_kernel", True, False))
DQ = ("dq", "_bwd_dq_kernel", None, None)


def build(variant, cfg, e, exact):
    """{'regs', 'stack', 'smem'} of one sm_90 build (bf16, TMA loads, non-causal)."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp())
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import flashproof.kernels  # noqa: F401
    from flashproof.kernels.tiles import head_block
    A = sys.modules["flashproof.kernels.attention"]
    name, kernel, compute_dk, compute_dv = variant
    fn = getattr(A, kernel)
    bm, bn, nw, ns = cfg
    d = head_block(e)
    ptr = {n: "*bf16" for n in "Q K V BIAS DO DQ DK DV".split()}
    ptr.update(LSE2="*fp32", DELTA="*fp32", RERUN="*i32")
    consts = dict(E=e, EV=e, BLOCK_DK=d, BLOCK_DV=d, HAS_LEFT=False, HAS_RIGHT=False, SOFTCAP=False,
                  HAS_BIAS=False, PRECISION="tf32", UPCAST=False, KAHAN=False, EXACT=exact, TMA=True)
    if kernel == "_bwd_dkdv_kernel":  # block_n keys resident, block_m queries streamed (attention._backward_with)
        consts.update(BLOCK_M=bm, BLOCK_N=bn, COMPUTE_DK=compute_dk, COMPUTE_DV=compute_dv)
        desc = {"Q": f"tensordesc<bf16[1, 1, {bm}, {d}]>", "DO": f"tensordesc<bf16[1, 1, {bm}, {d}]>"}
    else:  # dQ: block_n queries resident, block_m keys streamed
        consts.update(BLOCK_M=bn, BLOCK_N=bm)
        desc = {"K": f"tensordesc<bf16[1, 1, {bm}, {d}]>", "V": f"tensordesc<bf16[1, 1, {bm}, {d}]>"}
    sig = {n: "constexpr" if n in consts else desc.get(n) or ptr.get(n)
           or ("fp32" if n in ("QK_SCALE", "OUT_SCALE", "DS_SCALE") else "i64" if n.startswith("s") else "i32")
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=nw, num_stages=ns, enable_fp_fusion=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    return dict(regs=regs, stack=stack, smem=int(k.metadata.shared))


def _one(job):
    variant, cfg, e, exact = job
    try:
        return job, build(variant, cfg, e, exact), None
    except Exception as exc:  # a compile error is a finding too: reported, never hidden
        return job, None, f"{type(exc).__name__}: {str(exc)[:300]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--E", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--dq", action="store_true", help="the dQ kernel too")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"  # compile-only (kernels.runtime), before flashproof.kernels imports triton
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tune_tiles import BWD

    from flashproof.kernels.tiles import SMEM_LIMIT_BYTES, _smem_backward, check_tile_config, head_block
    cfgs = []
    for cfg in BWD[a.E]:
        try:
            check_tile_config(*cfg, head_dim=a.E, head_dim_v=a.E, dtype=torch.bfloat16, backward=True)
            cfgs.append(cfg)
        except ValueError:
            continue  # refused before launch: the compiler is never asked
    variants = VARIANTS + ((DQ,) if a.dq else ())
    jobs = [(v, cfg, a.E, exact) for cfg in cfgs for v in variants for exact in (False, True)]
    d = head_block(a.E)
    rows, bad = [], []
    with ProcessPoolExecutor(a.jobs) as pool:
        for (v, cfg, e, exact), res, err in pool.map(_one, jobs):
            row = dict(variant=v[0], config=cfg, E=e, exact=exact, error=err,
                       estimate=_smem_backward(cfg[0], cfg[1], cfg[3], d, d, 2), **(res or {}))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if err is not None or row["smem"] > SMEM_LIMIT_BYTES:
                bad.append(row)
    import triton
    print(f"\ntriton {triton.__version__}, sm_90, bf16 E={a.E}, TMA loads: regs / stack bytes / shared bytes "
          f"(estimate) per build\n")
    print("| config | pass | " + " | ".join(v[0] for v in variants) + " | estimate |")
    print("|---|---|" + "---|" * len(variants) + "---|")
    for cfg in cfgs:
        for exact in (False, True):
            cells = []
            for v in variants:
                r = next(r for r in rows if r["variant"] == v[0] and r["config"] == cfg and r["exact"] == exact)
                cells.append(f"{r['regs']} / {r['stack']} / {r['smem']}" if r["error"] is None else "error")
            est = _smem_backward(cfg[0], cfg[1], cfg[3], d, d, 2)
            print(f"| {list(cfg)} | {'exact' if exact else 'fast'} | " + " | ".join(cells) + f" | {est} |")
    for r in bad:
        print(f"ACCEPTED BUT DOES NOT BUILD OR FIT: {r}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(triton=triton.__version__, limit=SMEM_LIMIT_BYTES, rows=rows), f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

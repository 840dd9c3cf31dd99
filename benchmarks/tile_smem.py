"""Shared memory of the forward kernel, as compiled for sm_90, against kernels.tiles' estimate.

kernels.tiles accepts a tile config when its shared-memory estimate fits the GPU's 227 KiB; a
config it accepts that the compiler then needs more for is refused at launch (a ValueError on a
valid call). This compiles ``_fwd_kernel`` (both passes, pointer and tensor-descriptor loads) for
every declared TILE_CONFIG at each head-dim pair and dtype, with Triton's bundled ptxas (no GPU
needed), and reports every config the estimate accepts that does not fit, and the estimate's
margin. Exit 1 when one is found.

    python benchmarks/tile_smem.py [--dims 64x64,128x128,128x256,256x256] [--jobs N] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

__all__ = ["compiled_smem", "main"]

_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def compiled_smem(cfg, e, ev, dtype, tma, exact):
    """Bytes of shared memory ``_fwd_kernel`` compiles to for sm_90 (metadata.shared)."""
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp())
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import flashproof.kernels  # noqa: F401
    from flashproof.kernels.tiles import head_block
    A = sys.modules["flashproof.kernels.attention"]
    ty = _TYPES[dtype]
    ptr = {n: f"*{ty}" for n in "Q K V BIAS O".split()}
    ptr.update(LSE2="*fp32", RERUN="*i32")
    dk, dv = head_block(e), head_block(ev)
    desc = {"K": f"tensordesc<{ty}[1, 1, {cfg[1]}, {dk}]>", "V": f"tensordesc<{ty}[1, 1, {cfg[1]}, {dv}]>"} if tma else {}
    consts = dict(E=e, EV=ev, BLOCK_M=cfg[0], BLOCK_N=cfg[1], BLOCK_DK=dk, BLOCK_DV=dv, HAS_LEFT=False,
                  HAS_RIGHT=True, SOFTCAP=False, HAS_BIAS=False,
                  PRECISION="ieee" if dtype == "float32" else "tf32", UPCAST=False, EXACT=exact, TMA=tma)
    fn = A._fwd_kernel
    sig = {n: "constexpr" if n in consts else desc.get(n) or ptr.get(n)
           or ("fp32" if n in ("QK_SCALE", "OUT_SCALE") else "i64" if n.startswith("s") else "i32")
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=cfg[2], num_stages=cfg[3], enable_fp_fusion=False))
    return int(k.metadata.shared)


def _one(job):
    cfg, e, ev, dtype, tma, exact = job
    try:
        return job, compiled_smem(cfg, e, ev, dtype, tma, exact), None
    except Exception as exc:  # a compile error is a finding too: reported, never hidden
        return job, None, f"{type(exc).__name__}: {str(exc)[:300]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", default="64x64,128x128,128x256,256x256")
    ap.add_argument("--dtypes", default="float16,float32")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch

    from flashproof.kernels.tiles import SMEM_LIMIT_BYTES, TILE_CONFIGS, accepts_tile_config
    dims = [tuple(int(x) for x in d.split("x")) for d in a.dims.split(",")]
    jobs = []
    for dtype in a.dtypes.split(","):
        for e, ev in dims:
            for cfg in TILE_CONFIGS:
                if not accepts_tile_config(cfg, head_dim=e, head_dim_v=ev, dtype=getattr(torch, dtype)):
                    continue  # refused before launch: the compiler is never asked
                for tma in ((False, True) if dtype != "float32" else (False,)):
                    for exact in (False, True):
                        jobs.append((tuple(cfg), e, ev, dtype, tma, exact))
    rows, bad = [], []
    with ProcessPoolExecutor(a.jobs) as pool:
        for (cfg, e, ev, dtype, tma, exact), smem, err in pool.map(_one, jobs):
            row = dict(config=cfg, e=e, ev=ev, dtype=dtype, tma=tma, exact=exact, smem=smem, error=err)
            rows.append(row)
            if err is not None or smem > SMEM_LIMIT_BYTES:
                bad.append(row)
    import triton
    print(f"triton {triton.__version__}: {len(rows)} accepted (config, dims, dtype, loads, pass) builds, "
          f"limit {SMEM_LIMIT_BYTES} B; largest {max(r['smem'] or 0 for r in rows)} B")
    for r in bad:
        print(f"ACCEPTED BUT DOES NOT FIT: {r}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(triton=triton.__version__, limit=SMEM_LIMIT_BYTES, rows=rows), f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

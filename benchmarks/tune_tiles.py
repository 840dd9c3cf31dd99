"""Tile sweep on a GPU: every candidate (block_m, block_n, num_warps, num_stages) of the forward
and backward kernels, timed at one shape per (E, causal), next to torch SDPA's flash and cuDNN.

    python3 benchmarks/tune_tiles.py --out DIR [--jobs 12] [--only fwd|bwd] [--batch 4 8]
        [--split-dkdv 0|1] [--tma-backward 0|1]

Phase 1 compiles every candidate in parallel worker processes (one shared TRITON_CACHE_DIR, a
small input with the same specialization as the timed one); phase 2 times them one by one in
this process (cache hits). A config the GPU refuses is listed as refused. Each timed output is
compared with torch SDPA's (max |diff|) as a sanity check; the correctness record of a config is
the property suite and benchmarks/gpu_kernel_checks.py, not this. Writes DIR/tune.json and
DIR/tune.md; kernels/tiles.py's defaults cite the run that chose them.

A backward task runs its config exactly (the forward keeps its default tiles; only the backward
is timed): a config the backward's shared-memory estimate refuses is listed as refused, never
replaced by attention's fallbacks (fewer stages, the default tiles, the safe tiles after a GPU
refusal), so every row times the config it names.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time

B, H, L = 8, 16, 4096  # B: the default of --batch
FWD = {
    128: [(bm, bn, w, s) for bm in (64, 128) for bn in (64, 128) for w in (4, 8) for s in (2, 3, 4)],
    64: [(bm, bn, w, s) for bm in (64, 128) for bn in (64, 128) for w in (4, 8) for s in (2, 3, 4)],
    256: [(bm, bn, w, s) for bm in (64, 128) for bn in (32, 64) for w in (4, 8) for s in (1, 2)],
}
# --quick: the leaders of the full sweeps (benchmarks/results/tune-h100-run1.md, tune-h100-run3.md) to re-check a change
FWD_QUICK = {
    128: [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2),
          (64, 64, 4, 3)],
    64: [(128, 128, 4, 2), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3)],
    256: [(128, 64, 8, 1), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 1), (64, 32, 4, 2)],
}
# block_n rows resident, block_m rows streamed, in both backward kernels
BWD = {
    128: [(bm, bn, w, s) for bm in (16, 32, 64) for bn in (64, 128) for w in (4, 8) for s in (1, 2, 3)],
    64: [(bm, bn, w, s) for bm in (16, 32, 64, 128) for bn in (64, 128) for w in (4, 8) for s in (1, 2, 3)],
    # bn = 128 (dK/dV's resident keys): the split dK/dV kernels hold one accumulator (issue 17, goal 2)
    256: [(bm, bn, w, s) for bm in (16, 32, 64) for bn in (32, 64, 128) for w in (4, 8) for s in (1, 2)],
}
BWD_CAUSAL = (128,)


def tasks(only, quick=False):
    out = []
    for e, cfgs in (FWD_QUICK if quick else FWD).items():
        if only in (None, "fwd"):
            out += [("fwd", e, c, cfg) for c in (False, True) for cfg in cfgs]
    for e, cfgs in BWD.items():
        if only in (None, "bwd"):
            out += [("bwd", e, c, cfg) for c in ((False, True) if e in BWD_CAUSAL else (False,)) for cfg in cfgs]
    return out


def _inputs(e, b, h, n, *, grad):
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    return [torch.randn(b, h, n, e, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_(grad)
            for _ in range(3)]


def _attention_module():
    """flashproof.kernels.attention the module (the package's ``attention`` is the function)."""
    return importlib.import_module("flashproof.kernels.attention")


def _call(task, q, k, v):
    import torch

    A = _configure()
    kind, e, causal, cfg = task
    if kind == "fwd":
        return A.attention(q, k, v, causal=causal, block_m=cfg[0], block_n=cfg[1], num_warps=cfg[2],
                           num_stages=cfg[3]), None
    A.check_tile_config(*cfg, head_dim=e, head_dim_v=e, dtype=q.dtype, backward=True)
    plan = A._plan(q, k, v, mask=A.spec.make_mask(causal=causal), scale=None, softcap=None, block_m=None,
                   block_n=None, num_warps=None, num_stages=None, allow_tf32=False)
    o = A._run(q, k, v, None, dataclasses.replace(plan, bwd=A.TileConfig(*cfg)), False)
    return o, lambda do: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)


def _configure():
    """--tma-backward and --split-dkdv, in this process and in the compile workers (which inherit
    the environment); the backward runs its tiles or raises (no fallback to the safe tiles)."""
    A = _attention_module()
    if os.environ.get("FP_TUNE_TMA_BACKWARD"):
        A.TMA_BACKWARD = os.environ["FP_TUNE_TMA_BACKWARD"] == "1"
    if os.environ.get("FP_TUNE_SPLIT_DKDV"):
        A.SPLIT_DKDV = os.environ["FP_TUNE_SPLIT_DKDV"] == "1"
    if not getattr(A._backward, "_tune_exact", False):
        def exact(q, k, v, bias, o, lse2, do, dlse, plan):
            return A._backward_with(q, k, v, bias, o, lse2, do, dlse, plan, plan.bwd)
        exact._tune_exact = True
        A._backward = exact
    return A


def compile_one(task):
    """Worker: build the kernels of one task on a small input (same specialization)."""
    import torch

    try:
        q, k, v = _inputs(task[1], 1, H, 256, grad=task[0] == "bwd")
        o, bwd = _call(task, q, k, v)
        if bwd is not None:
            bwd(torch.randn_like(o))
        return task, None
    except Exception as exc:  # noqa: BLE001 - a refused config is a result
        return task, f"{type(exc).__name__}: {str(exc)[:160]}"


#: the constexprs that tell the compiled variants of one kernel apart in the resource report
_CONSTS = ("E", "EV", "BLOCK_M", "BLOCK_N", "BLOCK_DK", "BLOCK_DV", "HAS_RIGHT", "EXACT", "TMA", "COMPUTE_DK",
           "COMPUTE_DV")


def _variant(name, consts):
    """dK/dV's builds by their COMPUTE_DK / COMPUTE_DV constants: dkdv (fused), dk, dv (split)."""
    if name != "_bwd_dkdv_kernel":
        return name
    return name + ":" + ("dk" if consts.get("COMPUTE_DK") else "") + ("dv" if consts.get("COMPUTE_DV") else "")


def kernel_resources():
    """Registers, spills and shared memory of every compiled attention kernel in this process
    (the compiler's own report: what a config costs before it is timed), one row per build."""
    A = _attention_module()
    out = []
    for fn in (A._fwd_kernel, A._bwd_dkdv_kernel, A._bwd_dq_kernel):
        try:
            for cache in fn.device_caches.values():
                for k in cache[0].values():
                    k._init_handles()
                    consts = {}
                    for key, v in (getattr(k.src, "constants", None) or {}).items():
                        # ASTSource keys constants by argument index paths ((i,),); older triton by name
                        name = key if isinstance(key, str) else fn.arg_names[key[0]] if len(key) == 1 else str(key)
                        if name in _CONSTS:
                            consts[name] = v if isinstance(v, (bool, int, float, str)) else str(v)
                    out.append(dict(kernel=_variant(fn.__name__, consts), num_warps=k.metadata.num_warps,
                                    num_stages=k.metadata.num_stages, shared=k.metadata.shared,
                                    n_regs=k.n_regs, n_spills=k.n_spills, consts=consts))
        except Exception as exc:  # noqa: BLE001 - triton internals differ between versions
            out.append(dict(kernel=getattr(fn, "__name__", "?"), error=f"{type(exc).__name__}: {str(exc)[:200]}"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--only", choices=("fwd", "bwd"))
    ap.add_argument("--quick", action="store_true", help="forward: only the leaders of the full sweep")
    ap.add_argument("--E", type=int, nargs="*", help="only these head dims")
    ap.add_argument("--causal", type=int, choices=(0, 1), help="only causal (1) or non-causal (0)")
    ap.add_argument("--tma-backward", type=int, choices=(0, 1),
                    help="backward kernels read through tensor descriptors (1) or pointers (0); default: the kernel's")
    ap.add_argument("--split-dkdv", type=int, choices=(0, 1),
                    help="dK and dV from two kernels (1) or one (0); default: tiles.backward_split's rule")
    ap.add_argument("--batch", type=int, nargs="+", default=[B], help=f"batch sizes timed (default {B}); H={H}, L={L}")
    a = ap.parse_args(argv)
    if a.tma_backward is not None:
        os.environ["FP_TUNE_TMA_BACKWARD"] = str(a.tma_backward)
    if a.split_dkdv is not None:
        os.environ["FP_TUNE_SPLIT_DKDV"] = str(a.split_dkdv)
    os.makedirs(a.out, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="fp-tune-"))
    import multiprocessing as mp

    todo = [t for t in tasks(a.only, a.quick) if (not a.E or t[1] in a.E) and (a.causal is None or t[2] == bool(a.causal))]
    t0 = time.time()
    refused = {}
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for task, err in pool.imap_unordered(compile_one, todo):
            if err:
                refused[task] = err
    print(f"compiled {len(todo)} tasks in {time.time() - t0:.0f} s ({len(refused)} refused)", flush=True)

    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from flashproof.bench import attention_flops

    A = _configure()
    loads = dict(tma_backward=A.TMA_BACKWARD, split_dkdv=A.SPLIT_DKDV)  # None: tiles.backward_split's rule

    def write():
        resources = kernel_resources()
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                    triton=__import__("triton").__version__, shape=dict(B=a.batch, H=H, L=L, dtype="bfloat16"),
                    date=time.strftime("%Y-%m-%d"), **loads,
                    command="python3 benchmarks/tune_tiles.py " + " ".join(argv or sys.argv[1:]))
        json.dump(dict(meta=meta, rows=rows, resources=resources), open(os.path.join(a.out, "tune.json"), "w"), indent=1)
        with open(os.path.join(a.out, "tune.md"), "w") as f:
            f.write(f"# Tile sweep: {meta['device']}\n\n{meta['date']} · torch {meta['torch']} · triton {meta['triton']} · "
                    f"bf16 B{'/'.join(map(str, a.batch))} H{H} L{L} · tma_backward={loads['tma_backward']} · "
                    f"split_dkdv={loads['split_dkdv']} · `{meta['command']}`\n\n"
                    "| pass | E | causal | B | impl | config | TFLOP/s | note |\n|---|---|---|---|---|---|---|---|\n")
            for r in sorted(rows, key=lambda r: (r["kind"], r["E"], r["causal"], r["B"], -(r.get("tflops") or 0))):
                head = f"| {r['kind']} | {r['E']} | {int(r['causal'])} | {r['B']} | {r['impl']} | {r['cfg'] or ''} | "
                f.write(head + (f"{r['tflops']:.0f} | |\n" if r.get("tflops") else f"- | {r.get('error', '')[:80]} |\n"))
            f.write("\n## Compiled kernels (registers, spills, shared memory)\n\n| kernel | consts | warps | stages | regs "
                    "| spills | shared |\n|---|---|---|---|---|---|---|\n")
            for r in resources:
                f.write(f"| {r['kernel']} | {r.get('consts', r.get('error', ''))} | {r.get('num_warps', '')} | "
                        f"{r.get('num_stages', '')} | {r.get('n_regs', '')} | {r.get('n_spills', '')} | {r.get('shared', '')} |\n")

    rows = []
    shapes = sorted({(t[0], t[1], t[2], b) for t in todo for b in a.batch})
    for kind, e, causal, nb in shapes:
        q, k, v = _inputs(e, nb, H, L, grad=kind == "bwd")
        fl = attention_flops(nb, H, L, L, e, causal=causal, backward=kind == "bwd")
        with torch.no_grad():
            ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        for name, be in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
            try:
                def f(_be=be):
                    with sdpa_kernel([_be]):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                if kind == "bwd":
                    o = f()
                    do = torch.randn_like(o)
                    ms = do_bench(lambda: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), return_mode="median")
                else:
                    ms = do_bench(f, return_mode="median")
                rows.append(dict(kind=kind, E=e, causal=causal, B=nb, impl=name, cfg=None, ms=ms, tflops=fl / ms / 1e9))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(kind=kind, E=e, causal=causal, B=nb, impl=name, cfg=None, error=str(exc)[:120]))
        for task in [t for t in todo if (t[0], t[1], t[2]) == (kind, e, causal)]:
            cfg = list(task[3])
            if task in refused:
                rows.append(dict(kind=kind, E=e, causal=causal, B=nb, impl="flashproof", cfg=cfg, error=refused[task]))
                continue
            try:
                o, bwd = _call(task, q, k, v)
                diff = float((o.float() - ref.float()).abs().max())
                if bwd is None:
                    ms = do_bench(lambda: _call(task, q, k, v), return_mode="median")
                else:
                    do = torch.randn_like(o)
                    ms = do_bench(lambda: bwd(do), return_mode="median")
                rows.append(dict(kind=kind, E=e, causal=causal, B=nb, impl="flashproof", cfg=cfg, ms=ms,
                                 tflops=fl / ms / 1e9, max_diff_vs_sdpa=diff))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(kind=kind, E=e, causal=causal, B=nb, impl="flashproof", cfg=cfg,
                                 error=f"{type(exc).__name__}: {str(exc)[:160]}"))
        del q, k, v
        torch.cuda.empty_cache()
        ours = sorted((r for r in rows if r["impl"] == "flashproof" and (r["kind"], r["E"], r["causal"], r["B"]) ==
                       (kind, e, causal, nb) and r.get("tflops")), key=lambda r: -r["tflops"])
        peers = {r["impl"]: r.get("tflops") for r in rows if r["impl"] != "flashproof" and
                 (r["kind"], r["E"], r["causal"], r["B"]) == (kind, e, causal, nb)}
        print(f"{kind} E={e} causal={int(causal)} B={nb} peers " + " ".join(f"{k}={v:.0f}" if v else f"{k}=-"
              for k, v in peers.items()) + " | best " + ", ".join(f"{r['cfg']}={r['tflops']:.0f}" for r in ours[:3]),
              flush=True)
        write()  # after every shape: a run cut short keeps what it timed
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tile sweep on a GPU: every candidate (block_m, block_n, num_warps, num_stages) of the forward
and backward kernels, timed at one shape per (E, causal), next to torch SDPA's flash and cuDNN.

    python3 benchmarks/tune_tiles.py --out DIR [--jobs 12] [--only fwd|bwd]

Phase 1 compiles every candidate in parallel worker processes (one shared TRITON_CACHE_DIR, a
small input with the same specialization as the timed one); phase 2 times them one by one in
this process (cache hits). A config the GPU refuses is listed as refused. Each timed output is
compared with torch SDPA's (max |diff|) as a sanity check; the correctness record of a config is
the property suite and benchmarks/gpu_kernel_checks.py, not this. Writes DIR/tune.json and
DIR/tune.md; kernels/tiles.py's defaults cite the run that chose them.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

B, H, L = 8, 16, 4096
FWD = {
    128: [(bm, bn, w, s) for bm in (64, 128) for bn in (64, 128) for w in (4, 8) for s in (2, 3, 4)],
    64: [(bm, bn, w, s) for bm in (64, 128) for bn in (64, 128) for w in (4, 8) for s in (2, 3, 4)],
    256: [(bm, bn, w, s) for bm in (64, 128) for bn in (32, 64) for w in (4, 8) for s in (1, 2)],
}
# --quick: the leaders of the full sweeps (benchmarks/results/tune-h100-run1.md, tune-h100-run3.md) to re-check a change
FWD_QUICK = {
    128: [(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 4, 2)],
    64: [(128, 128, 4, 2), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3)],
    256: [(128, 64, 8, 1), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 1), (64, 32, 4, 2)],
}
# block_n rows resident, block_m rows streamed, in both backward kernels
BWD = {
    128: [(bm, bn, w, s) for bm in (16, 32, 64) for bn in (64, 128) for w in (4, 8) for s in (1, 2, 3)],
    64: [(bm, bn, w, s) for bm in (16, 32, 64, 128) for bn in (64, 128) for w in (4, 8) for s in (1, 2, 3)],
    256: [(bm, bn, w, s) for bm in (16, 32, 64) for bn in (32, 64) for w in (4, 8) for s in (1, 2)],
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


def _call(task, q, k, v):
    import torch

    from flashproof import kernels

    kind, e, causal, (bm, bn, w, s) = task
    _set_loads()
    o = kernels.attention(q, k, v, causal=causal, block_m=bm, block_n=bn, num_warps=w, num_stages=s)
    if kind == "bwd":
        return o, lambda do: torch.autograd.grad(o, (q, k, v), do, retain_graph=True)
    return o, None


def _set_loads():
    """--tma-backward, in this process and in the compile workers (which inherit the environment)."""
    A = sys.modules["flashproof.kernels.attention"]
    if os.environ.get("FP_TUNE_TMA_BACKWARD"):
        A.TMA_BACKWARD = os.environ["FP_TUNE_TMA_BACKWARD"] == "1"


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


def kernel_resources():
    """Registers, spills and shared memory of every compiled attention kernel in this process
    (the compiler's own report: what a config costs before it is timed)."""
    A = sys.modules["flashproof.kernels.attention"]  # the package re-exports the function under this name

    out = []
    for fn in (A._fwd_kernel, A._bwd_dkdv_kernel, A._bwd_dq_kernel):
        try:
            for cache in fn.device_caches.values():
                for k in cache[0].values():
                    k._init_handles()
                    c = {str(key): v for key, v in (getattr(k.src, "constants", None) or {}).items()}
                    out.append(dict(kernel=fn.fn.__name__, num_warps=k.metadata.num_warps,
                                    num_stages=k.metadata.num_stages, shared=k.metadata.shared,
                                    n_regs=k.n_regs, n_spills=k.n_spills,
                                    consts={n: c[n] for n in c if any(t in n for t in ("BLOCK", "E", "HAS_RIGHT"))}))
        except Exception as exc:  # noqa: BLE001 - triton internals differ between versions
            out.append(dict(kernel=getattr(fn, "__name__", "?"), error=str(exc)[:200]))
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
    a = ap.parse_args(argv)
    if a.tma_backward is not None:
        os.environ["FP_TUNE_TMA_BACKWARD"] = str(a.tma_backward)
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

    def write():
        resources = kernel_resources()
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                    triton=__import__("triton").__version__, shape=dict(B=B, H=H, L=L, dtype="bfloat16"),
                    date=time.strftime("%Y-%m-%d"), command="python3 benchmarks/tune_tiles.py " + " ".join(argv or sys.argv[1:]))
        json.dump(dict(meta=meta, rows=rows, resources=resources), open(os.path.join(a.out, "tune.json"), "w"), indent=1)
        with open(os.path.join(a.out, "tune.md"), "w") as f:
            f.write(f"# Tile sweep: {meta['device']}\n\n{meta['date']} · torch {meta['torch']} · triton {meta['triton']} · "
                    f"bf16 B{B} H{H} L{L} · `{meta['command']}`\n\n| pass | E | causal | impl | config | TFLOP/s | note |\n"
                    "|---|---|---|---|---|---|---|\n")
            for r in sorted(rows, key=lambda r: (r["kind"], r["E"], r["causal"], -(r.get("tflops") or 0))):
                f.write(f"| {r['kind']} | {r['E']} | {int(r['causal'])} | {r['impl']} | {r['cfg'] or ''} | "
                        f"{r['tflops']:.0f} | |\n" if r.get("tflops") else
                        f"| {r['kind']} | {r['E']} | {int(r['causal'])} | {r['impl']} | {r['cfg'] or ''} | - | "
                        f"{r.get('error', '')[:80]} |\n")

    rows = []
    shapes = sorted({(t[0], t[1], t[2]) for t in todo})
    for kind, e, causal in shapes:
        q, k, v = _inputs(e, B, H, L, grad=kind == "bwd")
        fl = attention_flops(B, H, L, L, e, causal=causal, backward=kind == "bwd")
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
                rows.append(dict(kind=kind, E=e, causal=causal, impl=name, cfg=None, ms=ms, tflops=fl / ms / 1e9))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(kind=kind, E=e, causal=causal, impl=name, cfg=None, error=str(exc)[:120]))
        for task in [t for t in todo if (t[0], t[1], t[2]) == (kind, e, causal)]:
            cfg = list(task[3])
            if task in refused:
                rows.append(dict(kind=kind, E=e, causal=causal, impl="flashproof", cfg=cfg, error=refused[task]))
                continue
            try:
                o, bwd = _call(task, q, k, v)
                diff = float((o.float() - ref.float()).abs().max())
                if bwd is None:
                    ms = do_bench(lambda: _call(task, q, k, v), return_mode="median")
                else:
                    do = torch.randn_like(o)
                    ms = do_bench(lambda: bwd(do), return_mode="median")
                rows.append(dict(kind=kind, E=e, causal=causal, impl="flashproof", cfg=cfg, ms=ms,
                                 tflops=fl / ms / 1e9, max_diff_vs_sdpa=diff))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(kind=kind, E=e, causal=causal, impl="flashproof", cfg=cfg,
                                 error=f"{type(exc).__name__}: {str(exc)[:160]}"))
        del q, k, v
        torch.cuda.empty_cache()
        ours = sorted((r for r in rows if r["impl"] == "flashproof" and (r["kind"], r["E"], r["causal"]) ==
                       (kind, e, causal) and r.get("tflops")), key=lambda r: -r["tflops"])
        peers = {r["impl"]: r.get("tflops") for r in rows if r["impl"] != "flashproof" and
                 (r["kind"], r["E"], r["causal"]) == (kind, e, causal)}
        print(f"{kind} E={e} causal={int(causal)} peers " + " ".join(f"{k}={v:.0f}" if v else f"{k}=-"
              for k, v in peers.items()) + " | best " + ", ".join(f"{r['cfg']}={r['tflops']:.0f}" for r in ours[:3]),
              flush=True)
        write()  # after every shape: a run cut short keeps what it timed
    return 0


if __name__ == "__main__":
    sys.exit(main())

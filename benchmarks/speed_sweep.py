"""Issue 17's measurements on one GPU: what each speed lever buys, next to the peers, same run.

    python3 benchmarks/speed_sweep.py decode causal e256 --out DIR

- ``decode``: Lq = 1, GQA 64:8, E = 128, bf16, at the (B, Lk) points of ``flashproof bench``: every
  num_splits x block_n x (num_warps, num_stages) of the decode kernel, timed from CUDA-graph replays,
  and torch SDPA flash (enable_gqa) eager and replayed; our default call eager and replayed.
- ``decode-defaults``: the same points, only the default calls and SDPA flash.
- ``causal``: causal forward on small grids (B x L with B·H·L/128 programs near a few waves of SMs)
  for a list of tile configs and the default, next to SDPA flash and cuDNN. (Session 7's first run also
  timed a heads-first grid order, since removed: it was not faster at the best config.)
- ``e256``: the E = 256 backward (B4 H16 L4096) at the default config and SDPA flash / cuDNN.

Every row is one timing (median of triton.testing.do_bench or do_bench_cudagraph). Nothing here
judges correctness: that is the gpu profile and benchmarks/gpu_kernel_checks.py. Writes DIR/sweep.json
and prints one line per row.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import sys
import time


DECODE_POINTS = [(1, 4096), (1, 32768), (1, 131072), (8, 4096), (8, 32768), (8, 131072), (64, 4096), (64, 32768)]
DECODE_LAUNCH = [(4, 2), (4, 4), (8, 3)]
CAUSAL_SHAPES = [(b, L) for L in (512, 1024, 2048, 4096) for b in (1, 2, 4, 8, 16, 32) if b * L <= 65536]
CAUSAL_CONFIGS = [(128, 64, 4, 2), (64, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 2),
                  (128, 64, 8, 2), (64, 32, 4, 2), (128, 32, 4, 2)]


@contextlib.contextmanager
def decode_launch(num_warps, num_stages):
    """The decode kernel launched with these options instead of its defaults, inside the block
    (a patch of kernels.decode's _launch; the merge kernel keeps its own)."""
    D = importlib.import_module("flashproof.kernels.decode")
    orig = D._launch

    def patched(kernel, grid, *args, **meta):
        if kernel is D._decode_kernel:
            meta.update(num_warps=num_warps, num_stages=num_stages)
        return orig(kernel, grid, *args, **meta)
    D._launch = patched
    try:
        yield
    finally:
        D._launch = orig


def _sdpa(backend):
    import torch
    from torch.nn.attention import sdpa_kernel

    def fn(q, k, v, causal=False, gqa=False):
        with sdpa_kernel([backend]):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    return fn


def sweep_decode(rows, log, sweep=True):
    import torch
    from torch.nn.attention import SDPBackend
    from triton.testing import do_bench, do_bench_cudagraph

    from flashproof import kernels
    from flashproof.bench import copy_bandwidth

    flash = _sdpa(SDPBackend.FLASH_ATTENTION)
    bw = copy_bandwidth()
    rows.append(dict(kind="copy", gbs=bw))
    log(f"copy bandwidth {bw:.0f} GB/s")
    dty, hq, hkv, e, ps = torch.bfloat16, 64, 8, 128, 256
    for bsz, lk in DECODE_POINTS:
        q = torch.randn(bsz, hq, 1, e, device="cuda", dtype=dty)
        kc = torch.randn(bsz, hkv, lk, e, device="cuda", dtype=dty)
        vc = torch.randn_like(kc)
        pages = bsz * (lk // ps)
        kp = torch.randn(pages, hkv, ps, e, device="cuda", dtype=dty)
        vp = torch.randn_like(kp)
        table = torch.randperm(pages, device="cuda", dtype=torch.int32).reshape(bsz, lk // ps)
        lens = torch.full((bsz,), lk, device="cuda", dtype=torch.int32)
        nbytes = 2 * kc.numel() * 2 + 2 * q.numel() * 2
        base = dict(kind="decode", B=bsz, Lk=lk)

        def rec(impl, ms, **kw):
            r = dict(base, impl=impl, ms=ms, gbs=nbytes / ms / 1e6 if ms else None, frac=nbytes / ms / 1e6 / bw if ms else None, **kw)
            rows.append(r)
            log(f"decode B={bsz} Lk={lk} {impl} {kw} {ms if ms is None else round(ms, 4)} ms "
                f"{r['frac'] if r['frac'] is None else round(r['frac'], 3)}")

        for gqa in (True,):
            try:
                f = lambda: flash(q, kc, vc, gqa=gqa)
                rec("sdpa-flash eager", do_bench(f, warmup=10, rep=50, return_mode="median"))
                rec("sdpa-flash graph", do_bench_cudagraph(f, rep=50, return_mode="median"))
            except Exception as exc:  # noqa: BLE001
                rec("sdpa-flash", None, error=f"{type(exc).__name__}: {str(exc)[:100]}")
        rec("ours default eager", do_bench(lambda: kernels.decode(q, kc, vc), warmup=10, rep=50, return_mode="median"))
        rec("ours default graph", do_bench_cudagraph(lambda: kernels.decode(q, kc, vc, validate=False), rep=50,
                                                     return_mode="median"))
        rec("ours paged eager", do_bench(lambda: kernels.decode(q, kp, vp, block_table=table, seqlens=lens),
                                         warmup=10, rep=50, return_mode="median"))
        rec("ours paged eager validate=False", do_bench(
            lambda: kernels.decode(q, kp, vp, block_table=table, seqlens=lens, validate=False), warmup=10, rep=50,
            return_mode="median"))
        rec("ours paged graph", do_bench_cudagraph(
            lambda: kernels.decode(q, kp, vp, block_table=table, seqlens=lens, validate=False), rep=50,
            return_mode="median"))
        for bn, opts in itertools.product((64, 128), DECODE_LAUNCH) if sweep else ():
            with decode_launch(*opts):
                for s in (1, 2, 4, 8, 16, 24, 32, 48, 64):
                    if lk < s * bn:
                        continue
                    try:
                        fn = lambda: kernels.decode(q, kc, vc, num_splits=s, block_n=bn, validate=False)
                        fn()  # compiled outside the timing
                        rec("ours", do_bench_cudagraph(fn, rep=30, return_mode="median"), splits=s, block_n=bn,
                            warps=opts[0], stages=opts[1])
                    except Exception as exc:  # noqa: BLE001
                        rec("ours", None, splits=s, block_n=bn, warps=opts[0], stages=opts[1],
                            error=f"{type(exc).__name__}: {str(exc)[:100]}")
        torch.cuda.empty_cache()


def sweep_causal(rows, log):
    import torch
    from torch.nn.attention import SDPBackend
    from triton.testing import do_bench

    from flashproof import kernels
    from flashproof.bench import attention_flops

    peers = {"sdpa-flash": _sdpa(SDPBackend.FLASH_ATTENTION), "sdpa-cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION)}
    h, e = 16, 128
    for bsz, L in CAUSAL_SHAPES:
        q, k, v = (torch.randn(bsz, h, L, e, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fl = attention_flops(bsz, h, L, L, e, causal=True)

        def rec(impl, ms, **kw):
            rows.append(dict(kind="causal-fwd", B=bsz, L=L, impl=impl, ms=ms, tflops=fl / ms / 1e9 if ms else None, **kw))
            log(f"causal B={bsz} L={L} {impl} {kw} {fl / ms / 1e9 if ms else None}")

        for name, fn in peers.items():
            try:
                rec(name, do_bench(lambda: fn(q, k, v, causal=True), warmup=10, rep=40, return_mode="median"))
            except Exception as exc:  # noqa: BLE001
                rec(name, None, error=str(exc)[:100])
        rec("ours default", do_bench(lambda: kernels.attention(q, k, v, causal=True), warmup=10, rep=40,
                                     return_mode="median"))
        for cfg in CAUSAL_CONFIGS:
            bm, bn, w, s = cfg
            try:
                rec("ours", do_bench(lambda: kernels.attention(q, k, v, causal=True, block_m=bm, block_n=bn,
                                                               num_warps=w, num_stages=s),
                                     warmup=10, rep=40, return_mode="median"), cfg=list(cfg))
            except Exception as exc:  # noqa: BLE001
                rec("ours", None, cfg=list(cfg), error=str(exc)[:100])
    torch.cuda.empty_cache()


def sweep_e256(rows, log):
    import torch
    from torch.nn.attention import SDPBackend
    from triton.testing import do_bench

    from flashproof import kernels
    from flashproof.bench import attention_flops

    impls = {"ours": lambda q, k, v: kernels.attention(q, k, v),
             "sdpa-flash": _sdpa(SDPBackend.FLASH_ATTENTION), "sdpa-cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION)}
    b, h, L, e = 4, 16, 4096, 256
    qq, kk, vv = (torch.randn(b, h, L, e, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for bwd in (False, True):
        fl = attention_flops(b, h, L, L, e, causal=False, backward=bwd)
        for name, fn in impls.items():
            try:
                if bwd:
                    o = fn(qq, kk, vv)
                    do = torch.randn_like(o)
                    ms = do_bench(lambda: torch.autograd.grad(o, (qq, kk, vv), do, retain_graph=True), warmup=10,
                                  rep=60, return_mode="median")
                else:
                    with torch.no_grad():
                        ms = do_bench(lambda: fn(qq, kk, vv), warmup=10, rep=60, return_mode="median")
                rows.append(dict(kind="e256", pass_="bwd" if bwd else "fwd", impl=name, ms=ms, tflops=fl / ms / 1e9))
            except Exception as exc:  # noqa: BLE001
                rows.append(dict(kind="e256", pass_="bwd" if bwd else "fwd", impl=name, ms=None, error=str(exc)[:100]))
            log(f"e256 {rows[-1]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=("decode", "decode-defaults", "causal", "e256"))
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    import torch
    import triton

    os.makedirs(a.out, exist_ok=True)
    rows = []
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                date=time.strftime("%Y-%m-%d"), command="python3 benchmarks/speed_sweep.py " + " ".join(argv or sys.argv[1:]))

    def log(s):
        print(s, flush=True)

    for part in a.parts:
        t0 = time.time()
        try:
            {"decode": sweep_decode, "decode-defaults": lambda r, lg: sweep_decode(r, lg, sweep=False),
             "causal": sweep_causal, "e256": sweep_e256}[part](rows, log)
        except Exception as exc:  # noqa: BLE001 - keep what the other parts measured
            rows.append(dict(kind=part, error=f"{type(exc).__name__}: {exc}"))
            log(f"{part} failed: {exc}")
        log(f"{part}: {time.time() - t0:.0f} s")
        with open(os.path.join(a.out, f"sweep-{'-'.join(a.parts)}.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

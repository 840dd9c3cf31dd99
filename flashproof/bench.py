"""``flashproof bench``: our kernel against every torch SDPA backend, same inputs, same GPU, one run.

Times are medians of ``triton.testing.do_bench`` (CUDA events). FLOPs: forward 4·B·H·Lq·Lk·E,
halved for causal; backward 2.5x forward. Decode is reported in GB/s of K/V (and Q/O) bytes
moved, and as a fraction of the device-to-device copy bandwidth measured in the same run.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys

__all__ = ["add_arguments", "run", "attention_flops", "device_slug", "table_path", "DEFAULT_OUT"]

#: where ``flashproof bench`` writes by default: a folder of its own, never the committed results
DEFAULT_OUT = "bench-out"
_VENDOR = {"nvidia", "amd", "geforce", "tesla", "quadro", "radeon", "instinct"}
_PACKAGING = re.compile(r"^(\d+gb|\d+g|hbm\d*e?|sxm\d*|pcie|nvl|nvlink)$")


def device_slug(name: str) -> str:
    """A file-name slug of a GPU's name: vendor, memory and packaging words dropped
    ("NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA GeForce RTX 4090" -> "rtx-4090"); "gpu" if nothing is left."""
    words = [w for w in re.split(r"[^a-z0-9]+", str(name).lower()) if w]
    return "-".join(w for w in words if w not in _VENDOR and not _PACKAGING.match(w)) or "gpu"


def table_path(out_dir, device_name: str) -> str:
    """The Markdown table ``bench`` writes: <out_dir>/<device slug>.md."""
    return os.path.join(out_dir, device_slug(device_name) + ".md")


def _num(x, fmt):
    return "-" if x is None else format(x, fmt)


def _ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"


def attention_flops(b, h, lq, lk, e, *, causal, backward=False):
    f = 4.0 * b * h * lq * lk * e
    if causal:
        f /= 2
    return f * 2.5 if backward else f


def _impls():
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from flashproof import kernels

    out = {"flashproof": lambda q, k, v, c: kernels.attention(q, k, v, causal=c)}
    for name, be in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        def fn(q, k, v, c, _be=be):
            with sdpa_kernel([_be]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=c)
        out[name] = fn
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        masks = {}

        def flex_fn(q, k, v, c):
            bm = None
            if c:
                key = (q.shape[2], k.shape[2])
                if key not in masks:
                    masks[key] = create_block_mask(lambda b, h, i, j: j <= i, None, None, *key, device=q.device)
                bm = masks[key]
            return flex(q, k, v, block_mask=bm)

        out["flex"] = flex_fn
    except Exception:
        pass
    return out


def _time(fn, *, backward, q, k, v, c):
    import torch
    from triton.testing import do_bench

    if not backward:
        return do_bench(lambda: fn(q, k, v, c), warmup=25, rep=100, return_mode="median")
    qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
    o = fn(qq, kk, vv, c)
    do = torch.randn_like(o)
    return do_bench(lambda: torch.autograd.grad(o, (qq, kk, vv), do, retain_graph=True), warmup=25, rep=100,
                    return_mode="median")


def _decode_row(kernels, bsz, lk, paged, bw_copy, *, hkv=8, hq=64, e=128, page_size=256):
    """One decode case, timed each way it is called: eager (the default call, validation included,
    Python and launch costs included) and replayed from a CUDA graph (GPU time). Paged: the graph
    replays decode(validate=False), which the default call equals bitwise. Contiguous cases also
    time torch SDPA's flash backend (enable_gqa) both ways, on the same tensors."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench, do_bench_cudagraph

    dty = torch.bfloat16
    q = torch.randn(bsz, hq, 1, e, device="cuda", dtype=dty)
    if paged:
        pages = bsz * (lk // page_size)
        kc = torch.randn(pages, hkv, page_size, e, device="cuda", dtype=dty)
        table = torch.randperm(pages, device="cuda", dtype=torch.int32).reshape(bsz, lk // page_size)
        lens = torch.full((bsz,), lk, device="cuda", dtype=torch.int32)

        def fn(validate=True):
            return kernels.decode(q, kc, vc, block_table=table, seqlens=lens, validate=validate)
    else:
        kc = torch.randn(bsz, hkv, lk, e, device="cuda", dtype=dty)

        def fn(validate=True):
            return kernels.decode(q, kc, vc, validate=validate)
    vc = torch.randn_like(kc)
    nbytes = 2 * kc.numel() * kc.element_size() + 2 * q.numel() * q.element_size()
    row = dict(B=bsz, Lk=lk, Hq=hq, Hkv=hkv, E=e, paged=paged, bytes=nbytes)
    try:
        ref = fn()
        if not torch.equal(fn(validate=False), ref):
            raise AssertionError("decode(validate=False) differs from the validated call")
        torch.cuda.synchronize()
        row["ms_eager"] = do_bench(fn, warmup=25, rep=100, return_mode="median")
        row["ms"] = do_bench_cudagraph(lambda: fn(validate=False), rep=100, return_mode="median")
        row["timing"] = "cuda graph, validate=False" if paged else "cuda graph"
        row["gbs"] = nbytes / row["ms"] / 1e6
        row["gbs_eager"] = nbytes / row["ms_eager"] / 1e6
        row["frac_copy"] = row["gbs"] / bw_copy
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row.update(ms=None, error=f"{type(exc).__name__}: {exc}")
    if not paged:
        def flash():
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                return torch.nn.functional.scaled_dot_product_attention(q, kc, vc, enable_gqa=True)
        try:
            flash()
            row["flash_ms_eager"] = do_bench(flash, warmup=25, rep=100, return_mode="median")
            row["flash_ms"] = do_bench_cudagraph(flash, rep=100, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            row["flash_error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return row


def copy_bandwidth():
    """Device-to-device copy bandwidth in GB/s (bytes read + written), measured now."""
    import torch
    from triton.testing import do_bench

    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median")
    return 2 * x.numel() / ms / 1e6


def bench(*, dtypes=("bfloat16", "float16"), lengths=(1024, 2048, 4096, 8192, 16384), heads_dims=(128, 64, 256),
          tokens=32768, h=16, causal_modes=(False, True), backward=True, decode=True,
          small_grid=tuple((L, b) for L in (1024, 2048, 4096) for b in (1, 4, 16)), log=print):
    import torch

    impls = _impls()
    rows = []
    for dt in dtypes:
        dty = getattr(torch, dt)
        for e in heads_dims:
            for L in (lengths if e == 128 else (4096,)):
                b = max(1, tokens // L)
                g = torch.Generator(device="cuda").manual_seed(0)
                q, k, v = (torch.randn(b, h, L, e, device="cuda", dtype=dty, generator=g) for _ in range(3))
                for c in causal_modes:
                    for bw in ((False, True) if backward else (False,)):
                        fl = attention_flops(b, h, L, L, e, causal=c, backward=bw)
                        for name, fn in impls.items():
                            if name == "flex" and (L != 4096 or dt != "bfloat16" or e != 128):
                                continue  # each shape is a fresh torch.compile: FlexAttention at one shape only
                            try:
                                ms = _time(fn, backward=bw, q=q, k=k, v=v, c=c)
                                r = dict(impl=name, dtype=dt, B=b, H=h, L=L, E=e, causal=c,
                                         pass_="bwd" if bw else "fwd", ms=ms, tflops=fl / ms / 1e9)
                            except Exception as exc:
                                r = dict(impl=name, dtype=dt, B=b, H=h, L=L, E=e, causal=c, pass_="bwd" if bw else "fwd",
                                         ms=None, tflops=None, error=f"{type(exc).__name__}: {str(exc)[:120]}")
                            rows.append(r)
                            log(f"{dt} E={e} L={L} causal={c} {r['pass_']} {name}: {_num(r['tflops'], '.0f')} TFLOP/s")
                del q, k, v
    for L, b in small_grid:  # causal forward where B·H·L / BLOCK_M is a few waves of SMs or fewer
        q, k, v = (torch.randn(b, h, L, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fl = attention_flops(b, h, L, L, 128, causal=True)
        for name, fn in impls.items():
            if name == "flex":
                continue
            try:
                ms = _time(fn, backward=False, q=q, k=k, v=v, c=True)
                r = dict(impl=name, dtype="bfloat16", B=b, H=h, L=L, E=128, causal=True, pass_="fwd", ms=ms,
                         tflops=fl / ms / 1e9, grid="small")
                if name in ("flashproof", "sdpa-flash"):  # replayed too: GPU time apart from the host's
                    from triton.testing import do_bench_cudagraph

                    r["ms_graph"] = do_bench_cudagraph(lambda: fn(q, k, v, True), rep=100, return_mode="median")
                    r["tflops_graph"] = fl / r["ms_graph"] / 1e9
            except Exception as exc:  # noqa: BLE001
                r = dict(impl=name, dtype="bfloat16", B=b, H=h, L=L, E=128, causal=True, pass_="fwd", ms=None,
                         tflops=None, grid="small", error=f"{type(exc).__name__}: {str(exc)[:120]}")
            rows.append(r)
            log(f"small grid L={L} B={b} causal fwd {name}: {_num(r['tflops'], '.0f')} TFLOP/s")
        del q, k, v
    drows = []
    if decode:
        from flashproof import kernels

        bw_copy = copy_bandwidth()
        for bsz in (1, 8, 64):
            for lk in (4096, 32768, 131072):
                if bsz * lk > 64 * 32768:
                    continue
                for paged in (False, True):
                    try:
                        drows.append(_decode_row(kernels, bsz, lk, paged, bw_copy))
                    except Exception as exc:  # noqa: BLE001 - the tables above are still written
                        drows.append(dict(B=bsz, Lk=lk, paged=paged, ms=None, error=f"{type(exc).__name__}: {exc}"))
                    log(f"decode B={bsz} Lk={lk} paged={paged}: {drows[-1]}")
        drows.append(dict(copy_gbs=bw_copy))
    return rows, drows


def write_tables(rows, drows, out_dir, *, command) -> str:
    """bench.json, the plot and the table named after the device (table_path) in ``out_dir``; returns the table's path."""
    import torch
    import triton

    os.makedirs(out_dir, exist_ok=True)
    meta = dict(date=_dt.date.today().isoformat(), device=torch.cuda.get_device_name(0), torch=torch.__version__,
                triton=triton.__version__, command=command)
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows, decode=drows), f, indent=1)
    lines = [f"# flashproof bench: {meta['device']}", "",
             f"{meta['date']} · torch {meta['torch']} · triton {meta['triton']} · command: `{command}`", "",
             "TFLOP/s = FLOPs / median time (triton.testing.do_bench); forward 4·B·H·L²·E, halved for causal; "
             "backward 2.5x forward. Ratio columns: flashproof / peer, same inputs, same run.", "",
             "| dtype | E | L | B×H | causal | pass | flashproof | sdpa-flash | sdpa-cudnn | sdpa-efficient | flex | "
             "vs flash | vs cuDNN |", "|" + "---|" * 13]
    keyed = {}
    for r in rows:
        keyed.setdefault((r["dtype"], r["E"], r["L"], r["B"], r["H"], r["causal"], r["pass_"]), {})[r["impl"]] = r["tflops"]
    for (dt, e, L, b, h, c, p), d in keyed.items():
        f = lambda n: _num(d.get(n), ".0f")
        ratio = lambda n: "-" if not d.get(n) or d.get("flashproof") is None else f"{d['flashproof'] / d[n]:.2f}x"
        lines.append(f"| {dt} | {e} | {L} | {b}×{h} | {int(c)} | {p} | {f('flashproof')} | {f('sdpa-flash')} | "
                     f"{f('sdpa-cudnn')} | {f('sdpa-efficient')} | {f('flex')} | {ratio('sdpa-flash')} | {ratio('sdpa-cudnn')} |")
    small = {}
    for r in rows:
        if r.get("grid") == "small" and r["impl"] in ("flashproof", "sdpa-flash"):
            small.setdefault((r["L"], r["B"], r["H"]), {})[r["impl"]] = r
    if small:
        lines += ["", "## Small-grid causal forward, eager and replayed (bf16, E = 128)", "",
                  "Eager: the rows above (do_bench: host time shows wherever it exceeds the GPU's). Replayed: "
                  "do_bench_cudagraph of the same call, GPU time only. Ratio: flashproof / SDPA flash.", "",
                  "| L | B×H | ours eager | ours replayed | flash eager | flash replayed | ratio eager | ratio replayed |",
                  "|---|---|---|---|---|---|---|---|"]
        for (L, b, h), d in small.items():
            o, f = d.get("flashproof", {}), d.get("sdpa-flash", {})
            lines.append(f"| {L} | {b}×{h} | {_num(o.get('tflops'), '.0f')} | {_num(o.get('tflops_graph'), '.0f')} | "
                         f"{_num(f.get('tflops'), '.0f')} | {_num(f.get('tflops_graph'), '.0f')} | "
                         f"{_ratio(o.get('tflops'), f.get('tflops'))} | {_ratio(o.get('tflops_graph'), f.get('tflops_graph'))} |")
    if drows:
        cp = next((d["copy_gbs"] for d in drows if "copy_gbs" in d), None)
        lines += ["", f"## Decode (Lq = 1, bf16, GQA 64:8, E = 128, split-KV automatic); copy bandwidth {cp:.0f} GB/s", "",
                  "Each implementation timed the two ways it is called: eager (the default call from Python, "
                  "validation, allocation and launches included; triton.testing.do_bench) and replayed from a "
                  "CUDA graph (GPU time; do_bench_cudagraph). GB/s = bytes of K, V, Q and O over the time. "
                  "Paged: page_size 256, shuffled block table; its graph replays decode(validate=False), which "
                  "the eager default call equals bitwise; SDPA has no paged cache, so its columns repeat the "
                  "contiguous row's. Ratio = our GB/s over SDPA flash's, same way of calling.", "",
                  "| B | Lk | paged | ours eager GB/s | ours replayed GB/s | replayed / copy | flash eager GB/s | "
                  "flash replayed GB/s | ratio eager | ratio replayed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        flash = {(d["B"], d["Lk"]): d for d in drows if "copy_gbs" not in d and not d.get("paged")}
        for d in drows:
            if "copy_gbs" in d:
                continue
            f = flash.get((d["B"], d["Lk"]), {})
            gb = lambda ms: None if not ms else d["bytes"] / ms / 1e6
            fe, fr = gb(f.get("flash_ms_eager")), gb(f.get("flash_ms"))
            oe, orr = d.get("gbs_eager"), d.get("gbs")
            lines.append(f"| {d['B']} | {d['Lk']} | {int(bool(d.get('paged')))} | {_num(oe, '.0f')} | {_num(orr, '.0f')} | "
                         f"{_num(d.get('frac_copy'), '.0%')} | {_num(fe, '.0f')} | {_num(fr, '.0f')} | "
                         f"{_ratio(oe, fe)} | {_ratio(orr, fr)} |" + (f" {d['error'][:60]}" if d.get("error") else ""))
    _plot(rows, out_dir)
    lines += ["", "![TFLOP/s vs L](tflops_vs_L.png)"]
    path = table_path(out_dir, meta["device"])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _plot(rows, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = [("bfloat16", False, "fwd"), ("bfloat16", True, "fwd"), ("bfloat16", False, "bwd"), ("bfloat16", True, "bwd")]
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4), squeeze=False)
    for ax, (dt, c, p) in zip(axes[0], combos):
        sel = [r for r in rows if r["dtype"] == dt and r["causal"] == c and r["pass_"] == p and r["E"] == 128 and r["tflops"]
               and r.get("grid") != "small"]
        for name in sorted({r["impl"] for r in sel}):
            pts = sorted((r["L"], r["tflops"]) for r in sel if r["impl"] == name)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{dt} E=128 {'causal' if c else 'non-causal'} {p}")
        ax.set_xlabel("L")
        ax.set_ylabel("TFLOP/s")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "tflops_vs_L.png"), dpi=90)
    plt.close(fig)


def add_arguments(p):
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="folder for the table (<device>.md, named after the GPU), bench.json and the plot "
                        f"(default ./{DEFAULT_OUT}; the committed tables are in benchmarks/results)")
    p.add_argument("--quick", action="store_true",
                   help="bf16 only: E=128 at L in {1024, 4096}, E=256 at L=4096, the small-grid causal rows, decode")
    p.add_argument("--no-backward", action="store_true")
    p.add_argument("--no-decode", action="store_true")


def run(args) -> int:
    import torch

    from flashproof.cli import EXIT_ERROR, EXIT_OK
    from flashproof.proofs.runner import writable_folder

    why = writable_folder(args.out, "--out")
    if why:  # checked before the GPU runs
        print(f"flashproof bench: {why}", file=sys.stderr)
        return EXIT_ERROR
    if not torch.cuda.is_available():
        print("flashproof bench: needs a CUDA GPU; none is available here", file=sys.stderr)
        return EXIT_ERROR
    kw = dict(backward=not args.no_backward, decode=not args.no_decode)
    if args.quick:
        kw.update(dtypes=("bfloat16",), lengths=(1024, 4096), heads_dims=(128, 256))
    rows, drows = bench(**kw)
    path = write_tables(rows, drows, args.out, command="flashproof bench " + " ".join(sys.argv[2:]))
    print(f"wrote {path}")
    return EXIT_OK

"""``flashproof audit``: the numerical-stability audit report.

For each implementation (our kernel, the naive same-precision baseline, every torch SDPA backend
available, any TARGET named) and each cell of a sweep over L, E, logit scale (temperature),
dtype, causality, tiling and extreme regimes, measure the error against an fp64 reference on the
same rounded inputs: max/mean absolute and row-relative error, ULPs of the output dtype, RMSE,
signed bias, the ratio to the naive baseline, the ratio to the bound derived in proofs/
(tightness), NaN/inf counts and the LSE error. Writes report.md, report.json and PNG plots.
Exit code 1 when a target violates the spec or its declared bound (so it can gate CI).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

__all__ = ["add_arguments", "run", "SCHEMA", "Impl", "audit"]

SCHEMA = "flashproof.audit/1"
_ULP_BINS = [0, 0.5, 1, 2, 4, 8, 16, 32, 64, 256, math.inf]


# ----------------------------------------------------------------------------- implementations
@dataclass
class Impl:
    """One implementation under audit. ``fn(q, k, v, *, causal, **tile) -> (o, lse or None)``."""

    name: str
    fn: Callable
    role: str  # "kernel" | "peer" | "baseline" | "target"
    accumulator: str | None = "fp32"  # precision declaration for the bound; None: not judged
    tile_configs: list = field(default_factory=list)
    dtypes: tuple = ("bfloat16", "float16", "float32")
    available: bool = True
    reason: str = ""
    sweeps: tuple | None = None  # None: every sweep; else only these (FlexAttention recompiles per shape)
    lengths: tuple | None = None  # None: every L; else only these
    # (tile, head_dim, dtype) -> whether the implementation accepts that tile config there; None: all
    accepts_tile: Callable | None = None


def _kernel_impl():
    from flashproof import kernels

    def fn(q, k, v, *, causal, **tile):
        o, lse = kernels.attention(q, k, v, causal=causal, return_lse=True, **tile)
        return o, lse

    cfgs = [dict(c) if isinstance(c, dict) else dict(zip(("block_m", "block_n", "num_warps", "num_stages"), c))
            for c in getattr(kernels, "TILE_CONFIGS", [])]

    def accepts(tile, head_dim, dtype):
        # a config the kernel refuses for these dims (shared memory) is a clear error, not a cell to judge
        return kernels.accepts_tile_config(tuple(tile[n] for n in ("block_m", "block_n", "num_warps", "num_stages")),
                                           head_dim=head_dim, dtype=dtype)

    return Impl("flashproof", fn, "kernel", "fp32", cfgs, accepts_tile=accepts)


def _naive_impl():
    from flashproof import reference

    def fn(q, k, v, *, causal, **tile):
        o, lse = reference.forward_naive(q, k, v, causal=causal)
        return o, lse

    return Impl("naive", fn, "baseline", None)


def _sdpa_impls(device: str):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [("sdpa-math", SDPBackend.MATH, "same")]
    if device == "cuda":
        backends += [("sdpa-flash", SDPBackend.FLASH_ATTENTION, "fp32"),
                     ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION, "fp32"),
                     ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION, "fp32")]
    out = []
    for name, backend, acc in backends:
        def fn(q, k, v, *, causal, _b=backend, **tile):
            with sdpa_kernel([_b]):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal), None
        # Math on CPU makes no fp32-accumulator claim: judged against the "same precision" bound.
        out.append(Impl(name, fn, "peer", acc))
    if device == "cuda":
        out.append(_flex_impl())
    return out


def _flex_impl():
    try:
        import torch
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        compiled = torch.compile(flex_attention, dynamic=False)

        def fn(q, k, v, *, causal, **tile):
            bm = None
            if causal:
                bm = create_block_mask(lambda b, h, i, j: j <= i, None, None, q.shape[2], k.shape[2],
                                       device=q.device)
            return compiled(q, k, v, block_mask=bm), None

        # each new shape is a torch.compile; past dynamo's recompile limit it falls back to an unfused path
        return Impl("flex", fn, "peer", "fp32", dtypes=("bfloat16", "float16"), sweeps=("L",), lengths=(512, 2048))
    except Exception as exc:  # FlexAttention is optional: say why it is absent
        return Impl("flex", None, "peer", available=False, reason=f"{type(exc).__name__}: {exc}")


def _target_impl(spec: str):
    from flashproof.properties.loading import load_target

    t = load_target(spec)

    def fn(q, k, v, *, causal, **tile):
        if t.forward is not None:
            r = t.forward(q, k, v, causal=causal, alignment=None, window=None, scale=None, softcap=None,
                          attn_mask=None, return_lse=bool(t.lse), **tile)
            return (r[0], r[1]) if isinstance(r, tuple) else (r, None)
        return t.sdpa(q, k, v, is_causal=causal), None

    dts = tuple(str(d).replace("torch.", "") for d in getattr(t, "dtypes", ())) or Impl.dtypes
    return Impl(t.name or spec, fn, "target", getattr(t, "accumulator", "fp32"),
                [dict(c) for c in (t.tile_configs or [])], dts)


# ----------------------------------------------------------------------------- inputs
_REGIMES = ("standard", "shifted", "spread", "ties", "rising")


def make_inputs(*, seed, b, h, lq, lk, e, dtype, temperature=1.0, regime="standard", device="cpu"):
    """q, k, v in ``dtype`` (the stored values the reference also sees), shaped (B, H, L, E).

    ``temperature`` multiplies q, so the scaled logits have standard deviation ~temperature.
    Regimes: shifted (every logit of a row moved by -65536/sqrt(E), exactly), spread (keys with
    log-uniform magnitudes over 4 decades), ties (blocks of identical keys), rising (the max logit
    grows along the keys, so the running max changes at every tile).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, e, generator=g) * temperature
    k = torch.randn(b, h, lk, e, generator=g)
    v = torch.randn(b, h, lk, e, generator=g)
    if regime == "shifted":
        q[..., -1] = 256.0  # 256 * -256 is exact in every dtype: a per-row constant shift
        k[..., -1] = -256.0
    elif regime == "spread":
        k *= 10.0 ** torch.empty(b, h, lk, 1).uniform_(-2, 2, generator=g)
    elif regime == "ties":
        k = k[:, :, : max(1, lk // 8)].repeat_interleave(8, dim=2)[:, :, :lk].contiguous()
    elif regime == "rising":
        q[..., 0] = abs(temperature) * 4
        k[..., 0] = torch.linspace(-4, 4, lk)
    elif regime != "standard":
        raise ValueError(f"regime must be one of {_REGIMES}, got {regime!r}")
    dt = getattr(torch, dtype)
    return tuple(x.to(dt).to(device) for x in (q, k, v))


# ----------------------------------------------------------------------------- metrics
def _spacing(ref: np.ndarray, dtype: str) -> np.ndarray:
    """One ULP of ``dtype`` at each value of ``ref`` (bf16: 8 significant bits)."""
    mant = {"bfloat16": 8, "float16": 11, "float32": 24, "float64": 53}[dtype]
    emin = {"bfloat16": -126, "float16": -14, "float32": -126, "float64": -1022}[dtype]
    a = np.abs(ref)
    ex = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    ex = np.maximum(np.where(a > 0, ex, emin), emin)
    return np.exp2(ex - (mant - 1))


def measure(o, ref_o, *, dtype, bound=None, lse=None, ref_lse=None, naive_max=None):
    """Metrics of one output ``o`` against the fp64 reference ``ref_o`` (both (B,H,L,E))."""
    o = np.asarray(o, dtype=np.float64)
    fin_ref = np.isfinite(ref_o)
    nan = int(np.count_nonzero(np.isnan(o) & fin_ref))
    inf = int(np.count_nonzero(np.isinf(o) & fin_ref))
    err = np.abs(o - ref_o)
    err = np.where(fin_ref, err, 0.0)
    bad = ~np.isfinite(err)
    err_f = np.where(bad, 0.0, err)
    row_ref = np.max(np.abs(ref_o), axis=-1)
    row_err = np.max(err_f, axis=-1)
    row_rel = row_err / np.where(row_ref > 0, row_ref, 1.0)
    ulps = err_f / _spacing(ref_o, dtype)
    hist, _ = np.histogram(ulps, bins=_ULP_BINS)
    worst = np.unravel_index(int(np.argmax(row_err)), row_err.shape) if row_err.size else ()
    m = {
        "max_abs": float(err_f.max(initial=0.0)),
        "mean_abs": float(err_f.mean()) if err_f.size else 0.0,
        "rmse": float(np.sqrt(np.mean(err_f ** 2))) if err_f.size else 0.0,
        "bias": float(np.mean(np.where(bad, 0.0, o - ref_o))) if err_f.size else 0.0,
        "max_row_rel": float(row_rel.max(initial=0.0)),
        "mean_row_rel": float(row_rel.mean()) if row_rel.size else 0.0,
        "max_ulp": float(ulps.max(initial=0.0)),
        "median_ulp": float(np.median(ulps)) if ulps.size else 0.0,
        "ulp_hist": [int(x) for x in hist],
        "nan": nan,
        "inf": inf,
        "worst_row": [int(x) for x in worst],
    }
    if naive_max is not None:
        m["ratio_to_naive"] = m["max_abs"] / naive_max if naive_max > 0 else (0.0 if m["max_abs"] == 0 else math.inf)
    if bound is not None:
        bnd = np.asarray(bound, dtype=np.float64)
        evaluated = ~np.isnan(bnd)  # NaN: a row outside the bound's sample (see bound_rows)
        m["bound_elements"] = int(np.count_nonzero(evaluated))
        # an infinite bound says nothing: count it apart so it never reads as "tight" or "0"
        m["bound_vacuous"] = int(np.count_nonzero(np.isposinf(bnd)))
        finite = evaluated & np.isfinite(bnd)
        if finite.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(bnd > 0, err_f / bnd, np.where(err_f > 0, np.inf, 0.0))
            m["tightness"] = float(np.max(np.where(finite, t, 0.0), initial=0.0))
        m["violations"] = int(np.count_nonzero(evaluated & (err_f > np.where(evaluated, bnd, np.inf))))
    if lse is not None and ref_lse is not None:
        lse = np.asarray(lse, dtype=np.float64)
        fin = np.isfinite(ref_lse)
        m["lse_max_abs"] = float(np.max(np.abs(np.where(fin, lse - ref_lse, 0.0)), initial=0.0))
        m["lse_nonfinite"] = int(np.count_nonzero(~np.isfinite(lse) & fin))
        m["lse_wrong_empty"] = int(np.count_nonzero(~fin & (lse != -np.inf)))
    return m


# ----------------------------------------------------------------------------- sweeps
def _cells(quick: bool, device: str):
    """The audit grid: (sweep, L, E, causal, temperature, regime, use_tiles)."""
    gpu = device == "cuda"
    if gpu:  # sized so the full sweep of 5 backends x 3 dtypes fits one 10-minute sitting on an H100
        ls = [512, 1000, 2048, 4096, 8192] if not quick else [512, 1024, 2048]
        base_l, es = 2048, [40, 64, 128, 256]
    else:
        ls = [16, 64, 100, 128, 256] if quick else [16, 64, 100, 128, 256, 333, 512]
        base_l, es = 128, [16, 40, 64, 128]
    cells = []
    for L in ls:
        for causal in (False, True):
            cells.append(("L", L, 64 if not gpu else 128, causal, 1.0, "standard", False))
    for e in es:
        cells.append(("E", base_l, e, False, 1.0, "standard", False))
    for t in (0.25, 1.0, 4.0, 16.0, 64.0):
        cells.append(("temperature", base_l, 64, False, t, "standard", False))
    for r in _REGIMES[1:]:
        cells.append(("regime", base_l, 64, True, 1.0, r, False))
    cells.append(("tiling", base_l + (37 if not gpu else 333), 64, True, 1.0, "standard", True))
    return cells


def _reference(q, k, v, causal):
    """fp64 reference on the same rounded inputs: numpy on CPU, torch float64 on a GPU."""
    from flashproof import reference

    if q.is_cuda:  # the naive baseline evaluated in float64 is an fp64 reference on the device
        o, lse = reference.forward_naive(q.double(), k.double(), v.double(), causal=causal)
        return o.cpu().numpy(), lse.cpu().numpy()
    return reference.forward_fp64(q, k, v, causal=causal)


#: above this many query rows per head, the bound is evaluated on a fixed sample of rows only
BOUND_ROWS = 256


def bound_rows(lq):
    """The query rows whose bound is evaluated: all of them, or an even sample incl. the first/last."""
    if lq <= BOUND_ROWS:
        return np.arange(lq)
    return np.unique(np.linspace(0, lq - 1, BOUND_ROWS).round().astype(np.int64))


def _bound(q, k, v, causal, dtype, accumulator, n_tiles):
    """Per-element derived bound (proofs/) on the rows of :func:`bound_rows`, NaN elsewhere.

    Each row's bound depends only on that row, so a sample is exact for the rows it covers; the
    sample's causal structure is passed as a boolean mask of those rows.
    """
    try:
        from flashproof.proofs import bounds
    except ImportError:
        return None
    import torch

    from flashproof import spec

    prec = bounds.precision_for(getattr(torch, dtype), accumulator=accumulator)
    lq, lk = q.shape[2], k.shape[2]
    rows = bound_rows(lq)
    qs, ks, vs = (x.cpu() for x in (q, k, v))
    if len(rows) == lq:
        o_b, _ = bounds.running_forward_bound(qs, ks, vs, precision=prec, n_tiles=n_tiles, causal=causal)
        return o_b
    mask = torch.from_numpy(spec.make_mask(causal=causal).matrix(lq, lk)[rows])
    o_s, _ = bounds.running_forward_bound(qs[:, :, rows], ks, vs, precision=prec, n_tiles=n_tiles, attn_mask=mask)
    out = np.full((*q.shape[:3], v.shape[-1]), np.nan)
    out[:, :, rows] = o_s
    return out


class _Progress:
    def __init__(self, total, stream=sys.stderr):
        self.total, self.n, self.stream, self.t0 = total, 0, stream, time.time()

    def step(self, label):
        self.n += 1
        tty = self.stream.isatty()
        if not tty and self.n % max(1, self.total // 10) and self.n != self.total:
            return  # logs get a line per 10%, terminals a live bar
        w = 30
        done = int(w * self.n / max(self.total, 1))
        el = time.time() - self.t0
        lead, end = ("\r", "\n" if self.n == self.total else "") if tty else ("", "\n")
        self.stream.write(f"{lead}[{'#' * done}{'.' * (w - done)}] {self.n}/{self.total} {el:5.0f}s {label[:50]:<50}{end}")
        self.stream.flush()


def audit(impls, *, device="cpu", dtypes=("bfloat16", "float16", "float32"), quick=True, seed=0,
          batch=None, heads=None, progress=True):
    """Run the sweep and return the report dict (schema :data:`SCHEMA`)."""
    import torch

    b = batch or 1
    h = heads or (8 if device == "cuda" else 2)
    cells = _cells(quick, device)
    work = []
    for dt in dtypes:
        for c in cells:
            work.append((dt, c))
    live = [i for i in impls if i.available]
    prog = _Progress(len(work)) if progress else None
    results = []
    for n, (dt, (sweep, L, E, causal, temp, regime, use_tiles)) in enumerate(work):
        q, k, v = make_inputs(seed=seed + n, b=b, h=h, lq=L, lk=L, e=E, dtype=dt, temperature=temp,
                              regime=regime, device=device)
        ref_o, ref_lse = _reference(q, k, v, causal)
        outs = {}
        for imp in live:
            if dt not in imp.dtypes or (imp.sweeps is not None and sweep not in imp.sweeps) or \
                    (imp.lengths is not None and L not in imp.lengths):
                continue
            cand = [t for t in imp.tile_configs if imp.accepts_tile is None or imp.accepts_tile(t, E, q.dtype)]
            tiles = (cand[:: max(1, len(cand) // 3)][:3] if use_tiles else []) or [{}]
            for tile in tiles:
                key = imp.name + ("" if not tile else " " + ",".join(f"{a}={x}" for a, x in tile.items()))
                try:
                    o, lse = imp.fn(q, k, v, causal=causal, **tile)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    _check_output(o, q, v)
                    outs[key] = (imp, tile, o.double().cpu().numpy(),
                                 None if lse is None else lse.double().cpu().numpy(), None)
                except Exception as exc:  # an implementation that cannot run this cell is reported, not fatal
                    outs[key] = (imp, tile, None, None, f"{type(exc).__name__}: {str(exc)[:200]}")
        naive = next((x for kk, x in outs.items() if x[0].role == "baseline" and x[2] is not None), None)
        naive_max = None
        if naive is not None:
            naive_max = float(np.max(np.where(np.isfinite(ref_o), np.abs(naive[2] - ref_o), 0.0), initial=0.0))
        for key, (imp, tile, o, lse, errmsg) in outs.items():
            row = dict(impl=key, base=imp.name, role=imp.role, dtype=dt, sweep=sweep, L=L, E=E, causal=causal,
                       temperature=temp, regime=regime, tile=tile, seed=seed + n, batch=b, heads=h)
            if errmsg is not None:
                row["error"] = errmsg
                results.append(row)
                continue
            bnd = None
            if imp.accumulator is not None:
                bs = tile.get("block_n") or 64
                bnd = _bound(q, k, v, causal, dt, imp.accumulator, n_tiles=max(1, math.ceil(L / bs)))
            row["metrics"] = measure(o, ref_o, dtype=dt, bound=bnd, lse=lse, ref_lse=ref_lse,
                                     naive_max=naive_max if imp.role != "baseline" else None)
            results.append(row)
        if prog:
            prog.step(f"{dt} {sweep} L={L} E={E} causal={causal} T={temp} {regime}")
    return _assemble(impls, results, device=device, dtypes=dtypes, quick=quick, seed=seed)


class ContractError(ValueError):
    """The implementation returned something that is not the spec's output."""


def _check_output(o, q, v):
    import torch

    if not isinstance(o, torch.Tensor):
        raise ContractError(f"O must be a torch.Tensor, got {type(o).__name__}")
    want = (*q.shape[:3], v.shape[-1])
    if tuple(o.shape) != want:
        raise ContractError(f"O has shape {tuple(o.shape)}, expected {want}")
    if o.dtype != q.dtype:
        raise ContractError(f"O has dtype {o.dtype}, expected the input dtype {q.dtype}")


def _violations(row):
    m = row.get("metrics")
    if m is None:
        # our kernel and named targets must run every valid cell; a peer backend may lack a dtype
        return [f"could not run: {row['error']}"] if row["role"] in ("kernel", "target") and "error" in row else []
    out = []
    if row["role"] in ("kernel", "target", "peer"):
        if m["nan"] or m["inf"]:
            out.append(f"{m['nan']} NaN / {m['inf']} inf where the reference is finite")
        if m.get("violations"):
            out.append(f"{m['violations']} elements above the derived bound (max err/bound {m['tightness']:.3g})")
        if m.get("lse_nonfinite") or m.get("lse_wrong_empty"):
            out.append("LSE non-finite on a non-empty row, or not -inf on an empty one")
    return out


def _assemble(impls, results, **config):
    import torch

    machine = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
               "cpu_count": os.cpu_count()}
    try:
        import triton

        machine["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    summary = {}
    for r in results:
        if "metrics" not in r:
            continue
        s = summary.setdefault(f"{r['base']}|{r['dtype']}", {"impl": r["base"], "dtype": r["dtype"], "cells": 0,
                                                             "max_abs": 0.0, "max_ulp": 0.0, "ratios": [],
                                                             "tightness": None, "violations": 0, "nonfinite": 0,
                                                             "bound_vacuous": 0})
        m = r["metrics"]
        s["cells"] += 1
        s["max_abs"] = max(s["max_abs"], m["max_abs"])
        s["max_ulp"] = max(s["max_ulp"], m["max_ulp"])
        if "ratio_to_naive" in m and math.isfinite(m["ratio_to_naive"]):
            s["ratios"].append(m["ratio_to_naive"])
        s["bound_vacuous"] += m.get("bound_vacuous", 0)
        if "tightness" in m:  # None when no cell of this impl has a declared bound
            s["tightness"] = max(s["tightness"] or 0.0, m["tightness"])
        s["violations"] += len(_violations(r))
        s["nonfinite"] += m["nan"] + m["inf"]
    for s in summary.values():
        rs = s.pop("ratios")
        s["ratio_to_naive_median"] = float(np.median(rs)) if rs else None
        s["ratio_to_naive_max"] = float(np.max(rs)) if rs else None
    violations = [dict(impl=r["impl"], dtype=r["dtype"], sweep=r["sweep"], L=r["L"], E=r["E"], causal=r["causal"],
                       regime=r["regime"], temperature=r["temperature"], what=v)
                  for r in results for v in _violations(r)]
    for v in violations:  # rows that could not run have no metrics: count them in their summary line
        s = summary.get(f"{v['impl'].split(' ')[0]}|{v['dtype']}")
        if s is not None and v["what"].startswith("could not run"):
            s["violations"] += 1
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "impls": [dict(name=i.name, role=i.role, accumulator=i.accumulator, available=i.available, reason=i.reason,
                       tile_configs=len(i.tile_configs)) for i in impls],
        "cells": results,
        "summary": list(summary.values()),
        "violations": violations,
        "errors": [dict(impl=r["impl"], dtype=r["dtype"], L=r["L"], E=r["E"], error=r["error"])
                   for r in results if "error" in r],
    }


# ----------------------------------------------------------------------------- output
def _fmt(x, p=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{p}g}"
    return str(x)


def write_report(rep, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(rep, f, indent=1, default=str)
    plots = _plots(rep, out_dir)
    lines = ["# flashproof audit", "",
             f"{rep['created']} · {rep['machine'].get('gpu', 'CPU')} · torch {rep['machine']['torch']} · "
             f"triton {rep['machine'].get('triton', '-')} · {'quick' if rep['config']['quick'] else 'full'} sweep · "
             f"schema `{rep['schema']}`", ""]
    lines += ["## Executive summary", ""]
    lines += _executive(rep)
    lines += ["", "## Per implementation and dtype", "",
              "Errors are against an fp64 reference on the same rounded inputs. *ratio to naive*: max error "
              "divided by the max error of the naive same-precision baseline in the same cell (median and max over "
              "cells). *tightness*: max over elements of error / derived bound (proofs/; > 1 is a violation; "
              "elements whose bound is infinite, i.e. says nothing, are counted apart). Above "
              f"{BOUND_ROWS} query rows per head the bound is evaluated on {BOUND_ROWS} evenly spaced rows "
              "(exact for those rows; every row's error is still measured).", "",
              "| impl | dtype | cells | max abs err | max ULP | ratio to naive (median / max) | tightness | violations |",
              "|---|---|---|---|---|---|---|---|"]
    for s in sorted(rep["summary"], key=lambda s: (s["dtype"], s["impl"])):
        lines.append(f"| {s['impl']} | {s['dtype']} | {s['cells']} | {_fmt(s['max_abs'])} | {_fmt(s['max_ulp'])} | "
                     f"{_fmt(s['ratio_to_naive_median'])} / {_fmt(s['ratio_to_naive_max'])} | {_tight(s)} | "
                     f"{s['violations']} |")
    for sweep, col in (("L", "L"), ("E", "E"), ("temperature", "temperature"), ("regime", "regime"), ("tiling", "impl")):
        rows = [r for r in rep["cells"] if r["sweep"] == sweep and "metrics" in r]
        if not rows:
            continue
        lines += ["", f"## Sweep: {sweep}", "",
                  "| dtype | impl | L | E | causal | T | regime | max abs | mean abs | RMSE | bias | max row rel | max ULP | "
                  "vs naive | tightness | NaN/inf | LSE err |", "|" + "---|" * 17]
        for r in rows:
            m = r["metrics"]
            lines.append(f"| {r['dtype']} | {r['impl']} | {r['L']} | {r['E']} | {int(r['causal'])} | {r['temperature']} | "
                         f"{r['regime']} | {_fmt(m['max_abs'])} | {_fmt(m['mean_abs'])} | {_fmt(m['rmse'])} | "
                         f"{_fmt(m['bias'])} | {_fmt(m['max_row_rel'])} | {_fmt(m['max_ulp'])} | "
                         f"{_fmt(m.get('ratio_to_naive'))} | {_fmt(m.get('tightness'))} | {m['nan']}/{m['inf']} | "
                         f"{_fmt(m.get('lse_max_abs'))} |")
    if rep.get("exp_ulp"):
        lines += ["", "## Exhaustive ULP audit of the kernel's exp primitives (GPU)", "",
                  "| primitive | inputs tested | range | max ULP | mean ULP | flushed to 0 | c_exp used by the bound |",
                  "|---|---|---|---|---|---|---|"]
        for e in rep["exp_ulp"]:
            lines.append(f"| {e['primitive']} | {e['count']} | {e['range']} | {_fmt(e['max_ulp'], 4)} | "
                         f"{_fmt(e['mean_ulp'], 4)} | {e['flushed']} | {_fmt(e.get('c_exp_model'))} |")
    if rep["violations"]:
        lines += ["", "## Violations", ""]
        for v in rep["violations"][:50]:
            lines.append(f"- **{v['impl']}** {v['dtype']} {v['sweep']} L={v['L']} E={v['E']} causal={v['causal']} "
                         f"regime={v['regime']} T={v['temperature']}: {v['what']}")
    if rep["errors"]:
        lines += ["", "## Cells an implementation could not run", ""]
        for e in rep["errors"][:30]:
            lines.append(f"- {e['impl']} {e['dtype']} L={e['L']} E={e['E']}: {e['error']}")
    worst = _worst_cell(rep)
    if worst is not None:
        lines += ["", "## Worst row and its reproducer", "", "```python", _reproducer(worst), "```"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(out_dir, "report.md")


def _tight(s):
    """Tightness for the summary; says so when the bound was infinite (vacuous) somewhere."""
    t = _fmt(s["tightness"])
    return t if not s.get("bound_vacuous") else f"{t} ({s['bound_vacuous']} elements with an infinite bound)"


def _executive(rep):
    out = []
    by = {(s["impl"], s["dtype"]): s for s in rep["summary"]}
    for s in sorted(rep["summary"], key=lambda s: (s["dtype"], s["impl"])):
        if s["impl"] == "naive" or s["ratio_to_naive_median"] is None:
            continue
        med = s["ratio_to_naive_median"]
        word = "less" if med < 1 else "more"
        nonfin = f"; {s['nonfinite']} NaN/inf outputs (not in the error figures)" if s["nonfinite"] else ""
        out.append(f"- **{s['impl']}** ({s['dtype']}): deviates from fp64 {word} than the naive baseline: "
                   f"median ratio {med:.3g} (max {s['ratio_to_naive_max']:.3g}); max abs error {s['max_abs']:.3g}, "
                   f"{s['max_ulp']:.3g} ULP; bound tightness {_tight(s)}{nonfin}; "
                   f"{s['violations']} violation(s).")
    failed = {}
    for e in rep["errors"]:
        failed.setdefault(e["impl"].split(" ")[0], []).append(e["error"])
    for name, errs in failed.items():
        out.append(f"- {name}: could not run {len(errs)} cell(s), e.g. {errs[0][:150]}")
    for i in rep["impls"]:
        if not i["available"]:
            out.append(f"- {i['name']}: not available here ({i['reason'][:120]}).")
    n = len(rep["violations"])
    out.append(f"- **Verdict: {'FAIL' if n else 'PASS'}** ({n} violation(s) of the spec or a declared bound).")
    return out


def _worst_cell(rep):
    rows = [r for r in rep["cells"] if "metrics" in r and r["role"] != "baseline"]
    return max(rows, key=lambda r: r["metrics"]["max_row_rel"], default=None)


def _reproducer(r):
    b, h, i = (r["metrics"]["worst_row"] + [0, 0, 0])[:3]
    tile = ", ".join(f"{a}={x!r}" for a, x in r["tile"].items())
    return (f"# {r['impl']} {r['dtype']}: worst row (b={b}, h={h}, i={i}), max row-relative error "
            f"{r['metrics']['max_row_rel']:.3g}\n"
            "from flashproof.audit import make_inputs\nfrom flashproof import reference, kernels\n"
            f"q, k, v = make_inputs(seed={r['seed']}, b={r['batch']}, h={r['heads']}, lq={r['L']}, lk={r['L']}, "
            f"e={r['E']}, dtype={r['dtype']!r}, temperature={r['temperature']}, regime={r['regime']!r})\n"
            f"ref, _ = reference.forward_fp64(q, k, v, causal={r['causal']})\n"
            f"o = kernels.attention(q, k, v, causal={r['causal']}{', ' + tile if tile else ''})\n"
            f"print(abs(o.double().numpy() - ref)[{b}, {h}, {i}].max())")


def _plots(rep, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    dts = sorted({r["dtype"] for r in rep["cells"]})
    for sweep, xkey, fname, xlabel in (("L", "L", "error_vs_L.png", "sequence length L"),
                                       ("temperature", "temperature", "error_vs_logit_scale.png", "logit scale (temperature)")):
        fig, axes = plt.subplots(1, len(dts), figsize=(5 * len(dts), 4), squeeze=False)
        for ax, dt in zip(axes[0], dts):
            rows = [r for r in rep["cells"] if r["sweep"] == sweep and r["dtype"] == dt and "metrics" in r
                    and (sweep != "L" or not r["causal"])]
            for name in sorted({r["impl"] for r in rows}):
                pts = sorted((r[xkey], r["metrics"]["max_abs"]) for r in rows if r["impl"] == name)
                ax.plot([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{dt}: max |O - O_fp64|")
            ax.set_xlabel(xlabel)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, fname), dpi=90)
        plt.close(fig)
        files.append(fname)
    fig, axes = plt.subplots(1, len(dts), figsize=(5 * len(dts), 4), squeeze=False)
    labels = [f"<{b}" for b in _ULP_BINS[1:]]
    for ax, dt in zip(axes[0], dts):
        rows = [r for r in rep["cells"] if r["dtype"] == dt and "metrics" in r and r["sweep"] == "L"]
        names = sorted({r["base"] for r in rows})
        width = 0.8 / max(1, len(names))
        for n, name in enumerate(names):
            tot = np.sum([r["metrics"]["ulp_hist"] for r in rows if r["base"] == name], axis=0)
            frac = tot / max(1, tot.sum())
            ax.bar(np.arange(len(labels)) + n * width, frac, width=width, label=name)
        ax.set_xticks(np.arange(len(labels)) + 0.4)
        ax.set_xticklabels(labels, rotation=45, fontsize=7)
        ax.set_title(f"{dt}: error in output ULPs")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ulp_histogram.png"), dpi=90)
    plt.close(fig)
    files.append("ulp_histogram.png")
    return files


# ----------------------------------------------------------------------------- CLI
def add_arguments(p):
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="module:attr of extra attention kernels to audit (default: the built-in set only)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--dtype", action="append", choices=("bfloat16", "float16", "float32"),
                   help="repeatable; default all three")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sweep (default on CPU)")
    g.add_argument("--full", action="store_true", help="the full sweep (default on a GPU)")
    p.add_argument("--out", default="audit-out", help="report directory (default ./audit-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-defaults", action="store_true",
                   help="audit only the TARGETs (the naive baseline is always kept for the ratios)")


def run(args) -> int:
    from flashproof.cli import EXIT_ERROR, EXIT_OK, EXIT_VIOLATION

    try:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            print("flashproof audit: --device cuda but no CUDA GPU is available", file=sys.stderr)
            return EXIT_ERROR
        impls = [_naive_impl()]
        if not args.no_defaults:
            impls = [_kernel_impl()] + impls + _sdpa_impls(device)
        for t in args.targets:
            impls.append(_target_impl(t))
    except Exception as exc:
        print(f"flashproof audit: could not set up: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    quick = args.quick or (not args.full and device == "cpu")
    t0 = time.time()
    rep = audit(impls, device=device, dtypes=tuple(args.dtype or ("bfloat16", "float16", "float32")), quick=quick,
                seed=args.seed)
    if device == "cuda":
        try:
            from flashproof.ulp import exp_ulp_audit

            rep["exp_ulp"] = exp_ulp_audit()
        except Exception as exc:
            rep["errors"].append(dict(impl="exp-ulp-audit", dtype="float32", L=0, E=0, error=f"{type(exc).__name__}: {exc}"))
    rep["config"]["seconds"] = round(time.time() - t0, 1)
    path = write_report(rep, args.out)
    print("\n".join(_executive(rep)))
    print(f"report: {path} ({rep['config']['seconds']} s)")
    return EXIT_VIOLATION if rep["violations"] else EXIT_OK

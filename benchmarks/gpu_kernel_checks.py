"""Correctness checks of the compiled Triton kernels on a CUDA GPU, in one device call.

    python benchmarks/gpu_kernel_checks.py all --out DIR       # every group in parallel, then
                                                                # compute-sanitizer on 'small'
    python benchmarks/gpu_kernel_checks.py GROUP [--quick]     # one group (GROUPS below)

Groups: forward (real shapes, fwd vs fp64), backward (real shapes, grads vs fp64), special
(extreme values, garbage memory, NaN policy, TF32 switch), tiles (every TILE_CONFIGS entry at a
ragged shape, E=64 fp16), tiles256 (every entry at E=256 bf16: accepted and correct, or refused
with ValueError), decode (split-KV, paged, ragged seqlens), determinism, small (a small ragged
set for compute-sanitizer).

Reference: spec evaluated in float64 on the GPU with torch (masks from flashproof.spec; no
python-flint needed). Criterion: FlashAttention's, max error <= 2 x the max error of the naive
baseline in the input dtype + one ulp of the dtype at max|ref| (plus, for dq/dk, the propagated
rounding of D = rowsum(dO*O), see tests/test_kernels_util.py). Each check prints one JSON line;
the exit status is 0 when every check passed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import torch

from flashproof import spec

__all__ = ["GROUPS", "main"]

UNIT = {d: spec.format_of(d).u for d in (torch.float16, torch.bfloat16, torch.float32)}  # unit roundoff, spec's table
SHRINK = 1  # divide lengths by this (--shrink; the pytest gpu marker uses 8)
DEV = "cuda"
PART = (0, 1)  # run only checks whose index % n == k (--part k/n): groups split over processes
_RESULTS = []
_COUNTER = [0]


# ----------------------------------------------------------------------------- reference

def _spec():
    from flashproof import spec
    return spec


def _keep(lq, lk, device, causal=False, window=None, alignment=None, attn_mask=None):
    spec = _spec()
    m = spec.make_mask(causal=causal, window=window, alignment=alignment)
    keep = torch.from_numpy(m.matrix(lq, lk)).to(device)
    if attn_mask is not None:
        keep = keep & attn_mask
    return keep


def _logits(q, k, dtype, *, scale, softcap, bias):
    spec = _spec()
    rep = q.shape[1] // k.shape[1]
    kk = k.to(dtype).repeat_interleave(rep, 1)
    s = (q.to(dtype) @ kk.transpose(-1, -2)) * torch.tensor(spec.resolve_scale(scale, q.shape[-1]), dtype=dtype)
    c = spec.normalize_softcap(softcap)
    if c is not None:
        c = torch.tensor(c, dtype=dtype)
        s = c * torch.tanh(s / c)
    if bias is not None:
        s = s + bias.to(dtype)
    return s


def attend(q, k, v, dtype, *, causal=False, window=None, alignment=None, scale=None, softcap=None,
           attn_mask=None, bias=None):
    """Spec attention with every op in ``dtype`` (float64: the reference; input dtype: the
    naive baseline). Empty rows give 0 and -inf; differentiable (empty rows get 0 grads)."""
    lq, lk = q.shape[2], k.shape[2]
    keep = _keep(lq, lk, q.device, causal, window, alignment, attn_mask)
    if bias is not None:
        keep = keep & ~torch.isneginf(bias)
    keep = keep.expand(q.shape[0], q.shape[1], lq, lk)
    s = _logits(q, k, dtype, scale=scale, softcap=softcap, bias=bias)
    empty = ~keep.any(-1, keepdim=True)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s.masked_fill(empty, 0.0), -1).masked_fill(empty[..., 0], float("-inf"))
    p = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    rep = q.shape[1] // k.shape[1]
    vv = v.to(dtype).repeat_interleave(rep, 1)
    # masked keys are dropped, not multiplied by 0 (a NaN there must not leak)
    o = p @ torch.where(torch.isfinite(vv), vv, torch.zeros((), dtype=dtype, device=v.device))
    if not torch.isfinite(vv).all():
        o = o + (p.unsqueeze(-1) * torch.where(torch.isfinite(vv), 0.0, vv).unsqueeze(2)).where(
            keep.unsqueeze(-1), torch.zeros((), dtype=dtype, device=v.device)).sum(-2)
    return o, lse


def grads(q, k, v, do, dtype, **opts):
    qq, kk, vv = (x.detach().to(dtype).requires_grad_() for x in (q, k, v))
    o, _ = attend(qq, kk, vv, dtype, **opts)
    o.backward(do.to(dtype))
    return qq.grad.double(), kk.grad.double(), vv.grad.double(), o.detach()


def d_term(o_kernel, q, k, do, o_ref, **opts):
    """Propagated rounding of D = rowsum(dO*O) into dq and dk (tests/test_kernels_util._d_term)."""
    spec = _spec()
    err_d = ((do.float() * o_kernel.float()).sum(-1).double() - (do.double() * o_ref).sum(-1)).abs()
    lq, lk = q.shape[2], k.shape[2]
    keep = _keep(lq, lk, q.device, opts.get("causal", False), opts.get("window"), opts.get("alignment"),
                 opts.get("attn_mask"))
    s = _logits(q, k, torch.float64, scale=opts.get("scale"), softcap=opts.get("softcap"), bias=None)
    p = torch.nan_to_num(torch.softmax(s.masked_fill(~keep, float("-inf")), -1), nan=0.0)
    scale = abs(spec.resolve_scale(opts.get("scale"), q.shape[-1]))
    w = p * err_d[..., None] * scale
    rep = q.shape[1] // k.shape[1]
    eq = float((w @ k.double().abs().repeat_interleave(rep, 1)).max())
    ek = float((w.transpose(-1, -2) @ q.double().abs()).max())
    return eq, ek


def fa_check(name, got, ref, naive, dtype, eps=None):
    got, ref, naive = got.double(), ref.double(), naive.double()
    info = {"tensor": name}
    for what, fn in (("nan", torch.isnan), ("posinf", torch.isposinf), ("neginf", torch.isneginf)):
        bad = fn(got) != fn(ref)
        if bad.any():
            info.update(ok=False, why=f"{what} pattern differs at {int(bad.sum())} entries, first "
                        f"{[int(x) for x in bad.nonzero()[0]]}")
            return info
    fin = torch.isfinite(ref)
    if not fin.any():
        return dict(info, ok=True)
    err = torch.where(fin, (got - ref).abs(), torch.zeros((), dtype=torch.float64, device=ref.device))
    nerr = torch.where(fin, torch.nan_to_num((naive - ref).abs(), nan=0.0, posinf=0.0), torch.zeros((), dtype=torch.float64, device=ref.device))
    base = 2 * UNIT[dtype] * float(ref[fin].abs().max())
    eps = base + (eps or 0.0)
    bound = 2 * float(nerr.max()) + eps
    worst = float(err.max())
    idx = [int(x) for x in torch.nonzero(err == err.max())[0]]
    info.update(ok=worst <= bound, max_err=worst, naive_err=float(nerr.max()), eps=eps, bound=bound,
                ratio=worst / bound if bound else 0.0, worst_index=idx)
    return info


# ----------------------------------------------------------------------------- harness

def _record(group, name, fn):
    index = _COUNTER[0]
    _COUNTER[0] += 1
    if index % PART[1] != PART[0]:
        return None
    t = time.time()
    try:
        info = fn() or {}
        parts = info if isinstance(info, list) else [info]
        ok = all(p.get("ok", True) for p in parts)
        rec = dict(group=group, check=name, ok=ok, seconds=round(time.time() - t, 2), details=parts)
    except Exception as e:  # a crash is a failed check, never a silent pass
        rec = dict(group=group, check=name, ok=False, seconds=round(time.time() - t, 2),
                   error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
    _RESULTS.append(rec)
    print(json.dumps(rec, default=str), flush=True)
    torch.cuda.empty_cache()
    return rec


def _rand(*shape, dtype, scale=1.0, gen=None):
    return (torch.randn(*shape, device=DEV, dtype=torch.float32, generator=gen) * scale).to(dtype)


def _inputs(b, h, hkv, lq, lk, e, ev, dtype, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return (_rand(b, h, lq, e, dtype=dtype, gen=g), _rand(b, hkv, lk, e, dtype=dtype, gen=g),
            _rand(b, hkv, lk, ev, dtype=dtype, gen=g), g)


def _fwd_check(q, k, v, *, lse_check=True, kernel_kw=None, **opts):
    from flashproof.kernels import attention
    o, lse = attention(q, k, v, return_lse=True, **opts, **(kernel_kw or {}))
    ro, rl = attend(q, k, v, torch.float64, **opts)
    no, nl = attend(q, k, v, q.dtype, **opts)
    out = [fa_check("o", o, ro, no, q.dtype)]
    if lse_check:
        out.append(fa_check("lse", lse, rl, nl, q.dtype,
                            eps=4 * UNIT[torch.float32] * (float(torch.nan_to_num(rl, neginf=0).abs().max()) + 1)))
    return out, o


def _bwd_check(q, k, v, kernel_kw=None, **opts):
    from flashproof.kernels import attention
    g = torch.Generator(device=DEV).manual_seed(123)
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = attention(qq, kk, vv, **opts, **(kernel_kw or {}))
    do = _rand(*o.shape, dtype=q.dtype, gen=g)
    o.backward(do)
    rq, rk, rv, ro = grads(q, k, v, do, torch.float64, **opts)
    nq, nk, nv, _ = grads(q, k, v, do, q.dtype, **opts)
    eq, ek = d_term(o.detach(), q, k, do, ro, **opts)
    return [fa_check("dq", qq.grad, rq, nq, q.dtype, eq), fa_check("dk", kk.grad, rk, nk, q.dtype, ek),
            fa_check("dv", vv.grad, rv, nv, q.dtype)]


def _shape(lq, lk):
    return max(1, lq // SHRINK), max(1, lk // SHRINK)


# Real shapes: (name, dtype, b, h, hkv, lq, lk, e, ev, opts)
REAL = [
    ("bf16 MHA causal top_left 4096 E128", torch.bfloat16, 2, 8, 8, 4096, 4096, 128, 128, dict(causal=True)),
    ("fp16 GQA 8/2 bottom_right 1000x3001 E64", torch.float16, 2, 8, 2, 1000, 3001, 64, 64, dict(causal="bottom_right")),
    ("bf16 GQA 8/4 bottom_right+window 2049x1537 E40 (empty rows)", torch.bfloat16, 2, 8, 4, 2049, 1537, 40, 40,
     dict(causal="bottom_right", window=(256, -1))),
    ("fp16 MHA full 1023 E256", torch.float16, 2, 8, 8, 1023, 1023, 256, 256, {}),
    ("fp32 MQA 8/1 full 1000x1777 E64 Ev32 softcap 30", torch.float32, 2, 8, 1, 1000, 1777, 64, 32, dict(softcap=30.0)),
    ("bf16 GQA 16/2 window (64, 64) 3000 E96", torch.bfloat16, 1, 16, 2, 3000, 3000, 96, 96, dict(window=(64, 64))),
    ("fp16 GQA 8/4 top_left 1537x2049 E72 Ev80", torch.float16, 2, 8, 4, 1537, 2049, 72, 80, dict(causal=True)),
    ("bf16 GQA 8/2 bottom_right window (300, 0) 4096 E192", torch.bfloat16, 1, 8, 2, 4096, 4096, 192, 192,
     dict(causal="bottom_right", window=(300, 0))),
]


def group_forward():
    for i, (name, dt, b, h, hkv, lq, lk, e, ev, opts) in enumerate(REAL):
        lq, lk = _shape(lq, lk)
        q, k, v, _ = _inputs(b, h, hkv, lq, lk, e, ev, dt, i)
        _record("forward", name, lambda: _fwd_check(q, k, v, **opts)[0])
    # sdpa with a bool mask and with an additive mask, against the same fp64 spec
    from flashproof.kernels import sdpa
    lq, lk = _shape(1500, 1500)
    q, k, v, g = _inputs(2, 8, 8, lq, lk, 64, 64, torch.bfloat16, 99)
    m = torch.rand(2, 1, lq, lk, device=DEV, generator=g) > 0.2
    m[:, :, 7] = False  # an empty row

    def sdpa_bool():
        o = sdpa(q, k, v, attn_mask=m)
        return [fa_check("o", o, attend(q, k, v, torch.float64, attn_mask=m)[0],
                         attend(q, k, v, q.dtype, attn_mask=m)[0], q.dtype)]
    _record("forward", "sdpa bool mask bf16 1500 E64", sdpa_bool)
    bias = (torch.randn(lq, lk, device=DEV, generator=g) * 3).to(torch.bfloat16)

    def sdpa_add():
        o = sdpa(q, k, v, attn_mask=bias)
        return [fa_check("o", o, attend(q, k, v, torch.float64, bias=bias.double())[0],
                         attend(q, k, v, q.dtype, bias=bias)[0], q.dtype)]
    _record("forward", "sdpa additive mask bf16 1500 E64", sdpa_add)


def group_backward():
    for i, (name, dt, b, h, hkv, lq, lk, e, ev, opts) in enumerate(REAL):
        if i in (0, 7):  # fp64 autograd at 4096^2 x heads: keep the group short
            lq, lk, h, hkv = 2048, 2048, 4, min(hkv, 4)
        lq, lk = _shape(lq, lk)
        q, k, v, _ = _inputs(b, h, hkv, lq, lk, e, ev, dt, 100 + i)
        _record("backward", name, lambda: _bwd_check(q, k, v, **opts))
    from flashproof.kernels import sdpa
    lq, lk = _shape(700, 900)
    q, k, v, g = _inputs(2, 4, 4, lq, lk, 64, 64, torch.float16, 7)
    m = torch.rand(1, 4, lq, lk, device=DEV, generator=g) > 0.3
    m[..., 0] = True

    def sdpa_bwd():
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        o = sdpa(qq, kk, vv, attn_mask=m)
        do = _rand(*o.shape, dtype=q.dtype, gen=g)
        o.backward(do)
        rq, rk, rv, ro = grads(q, k, v, do, torch.float64, attn_mask=m)
        nq, nk, nv, _ = grads(q, k, v, do, q.dtype, attn_mask=m)
        eq, ek = d_term(o.detach(), q, k, do, ro, attn_mask=m)
        return [fa_check("dq", qq.grad, rq, nq, q.dtype, eq), fa_check("dk", kk.grad, rk, nk, q.dtype, ek),
                fa_check("dv", vv.grad, rv, nv, q.dtype)]
    _record("backward", "sdpa bool mask fp16 700x900", sdpa_bwd)


def group_special():
    from flashproof.kernels import attention
    dev = DEV

    def empty_rows():
        out = []
        for dt in UNIT:
            q, k, v, _ = _inputs(2, 4, 2, 300, 45, 64, 64, dt, 1)
            o, lse = attention(q, k, v, causal="bottom_right", return_lse=True)
            out.append(dict(tensor=str(dt), ok=bool(torch.isfinite(o).all() and (o[:, :, :255] == 0).all()
                                                   and torch.isneginf(lse[:, :, :255]).all()
                                                   and torch.isfinite(lse[:, :, 255:]).all())))
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
            attention(qq, kk, vv, causal="bottom_right").backward(torch.ones_like(o))
            out.append(dict(tensor=f"grads {dt}", ok=bool(all(torch.isfinite(x.grad).all() for x in (qq, kk, vv))
                                                         and (qq.grad[:, :, :255] == 0).all())))
        return out
    _record("special", "fully masked rows: O=0, LSE=-inf, finite zero grads", empty_rows)

    def extreme():
        out = []
        g = torch.Generator(device=dev).manual_seed(3)
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            q = _rand(1, 2, 513, 64, dtype=torch.float32, gen=g)
            k = _rand(1, 2, 700, 64, dtype=torch.float32, gen=g)
            q = (q / q.norm(dim=-1, keepdim=True) * 100).to(dt)
            k = (k / k.norm(dim=-1, keepdim=True) * 100).to(dt)  # logits in [-1e4, 1e4] at scale 1
            v = _rand(1, 2, 700, 64, dtype=dt, gen=g)
            res, o = _fwd_check(q, k, v, scale=1.0, causal="bottom_right")
            out += res
        return out
    _record("special", "logits +-1e4 (all dtypes)", extreme)

    def overflow_fp16():
        q = torch.full((1, 2, 257, 64), 40.0, dtype=torch.float16, device=dev)
        k = torch.full((1, 2, 300, 64), 40.0, dtype=torch.float16, device=dev)
        k[:, :, ::3] = -40.0
        v = _rand(1, 2, 300, 64, dtype=torch.float16, gen=torch.Generator(device=dev).manual_seed(4))
        res, o = _fwd_check(q, k, v)
        return res + [dict(tensor="finite", ok=bool(torch.isfinite(o).all()))]
    _record("special", "fp16 q.k = 102400 > 65504", overflow_fp16)

    def minus_1e6():
        q = torch.full((1, 1, 200, 16), -250.0, device=dev)
        k = torch.full((1, 1, 200, 16), 250.0, device=dev)
        g = torch.Generator(device=dev).manual_seed(5)  # seeded: every check is reproducible
        v = _rand(1, 1, 200, 16, dtype=torch.float32, gen=g)
        o, lse = attention(q, k, v, scale=1.0, window=(0, 0), return_lse=True)
        q2 = torch.full((1, 1, 64, 16), -1.0, device=dev)
        k2 = torch.full((1, 1, 300, 16), 1250.0, device=dev)
        v2 = _rand(1, 1, 300, 16, dtype=torch.float32, gen=g)
        res, o2 = _fwd_check(q2, k2, v2, scale=1.0, window=(4, 150))
        return [dict(tensor="single key -1e6", ok=bool(torch.equal(o, v) and (lse == -1e6).all())),
                dict(tensor="all logits -2e4 finite", ok=bool(torch.isfinite(o2).all()))] + res
    _record("special", "finite-sentinel and guard-max regimes", minus_1e6)

    def garbage():
        out = []
        for dt, (causal, window) in ((torch.bfloat16, ("bottom_right", (130, -1))), (torch.float16, (True, None)),
                                     (torch.float32, (False, (50, 70)))):
            lq, lk, e, ev = 333, 517, 40, 72
            q, k, v, _ = _inputs(2, 4, 2, lq, lk, e, ev, dt, 5)
            o0, l0 = attention(q, k, v, causal=causal, window=window, return_lse=True)
            used = _keep(lq, lk, dev, causal, window).any(0)
            big = []
            for x, l, d in ((q, lq, e), (k, lk, e), (v, lk, ev)):
                bx = torch.full((x.shape[0], x.shape[1], l + 77, d + 9), float("nan"), dtype=dt, device=dev)
                bx[:, :, :l, :d] = x
                big.append(bx[:, :, :l, :d])
            big[1][:, :, ~used] = float("nan")
            big[2][:, :, ~used] = float("nan")
            o1, l1 = attention(*big, causal=causal, window=window, return_lse=True)
            out.append(dict(tensor=f"{dt} {causal} {window}", ok=bool(torch.equal(o0, o1) and torch.equal(l0, l1))))
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
            attention(qq, kk, vv, causal=causal, window=window).backward(torch.ones_like(o0))
            gq, gk, gv = (x.grad for x in (qq, kk, vv))
            qq, kk, vv = (x.clone().requires_grad_() for x in big)
            attention(qq, kk, vv, causal=causal, window=window).backward(torch.ones_like(o0))
            out.append(dict(tensor=f"grads {dt}", ok=bool(torch.equal(gq, qq.grad) and torch.equal(gk[:, :, used], kk.grad[:, :, used])
                                                        and torch.equal(gv[:, :, used], vv.grad[:, :, used])
                                                        and (kk.grad[:, :, ~used] == 0).all())))
        return out
    _record("special", "NaN garbage in masked keys and padded memory: bitwise no leak", garbage)

    def nan_policy():
        out = []
        for bad in (float("nan"), float("inf"), -float("inf")):
            q, k, v, _ = _inputs(1, 2, 2, 400, 400, 64, 64, torch.float32, 6)
            v[:, :, 5, 2] = bad
            v[:, :, 300, 7] = bad
            for causal, window in ((True, None), (False, (20, 20)), (False, None)):
                o = attention(q, k, v, causal=causal, window=window)
                ro, _ = attend(q, k, v, torch.float64, causal=causal, window=window)
                out.append(dict(fa_check("o", o, ro, ro, q.dtype, eps=1.0), tensor=f"{bad} {causal} {window}"))
        return out
    _record("special", "non-finite v reaches exactly the attending rows (IEEE values)", nan_policy)

    def tf32():
        q, k, v, _ = _inputs(2, 4, 4, 1000, 1000, 64, 64, torch.float32, 8)
        o_ieee = attention(q, k, v)
        o_tf32 = attention(q, k, v, allow_tf32=True)
        ro, _ = attend(q, k, v, torch.float64)
        e1, e2 = float((o_ieee.double() - ro).abs().max()), float((o_tf32.double() - ro).abs().max())
        return [dict(tensor="ieee err", ok=e1 < 1e-5, err=e1), dict(tensor="tf32 err (larger)", ok=e2 > e1, err=e2)]
    _record("special", "fp32 IEEE by default, TF32 only when allowed", tf32)

    def refused():
        q = torch.zeros(1, 1, 64, 256, device=dev)
        try:
            attention(q, q, q, block_m=256, block_n=256, num_stages=4)
        except ValueError as e:
            return dict(ok="shared memory" in str(e), msg=str(e)[:200])
        return dict(ok=False, msg="no error")
    _record("special", "over-size tile config refused with ValueError", refused)

    def long_offsets():
        # B*H*L*E > 2^31 elements through strided views: int64 offsets (sampled rows vs fp64)
        if SHRINK > 1:
            return dict(ok=True, skipped="shrunk run")
        b, h, l, e = 1, 32, 65536 + 17, 1024  # storage 2.2e9 elements, bf16 4.4 GB per tensor
        base = torch.empty(b, l, h, e, dtype=torch.bfloat16, device=dev).normal_()
        q = base[..., :64].transpose(1, 2)  # (1, 32, L, 64), strides beyond 2^31
        k = base[..., 64:128].transpose(1, 2)
        v = base[..., 128:192].transpose(1, 2)
        o = attention(q, k, v, causal=True)
        out = []
        for hh, rows in ((31, slice(l - 5, l)), (0, slice(0, 3))):
            lq_end = rows.stop
            qs = q[:, hh:hh + 1, :lq_end][:, :, rows]
            ks, vs = k[:, hh:hh + 1, :lq_end], v[:, hh:hh + 1, :lq_end]
            ro, _ = attend(qs, ks, vs, torch.float64, causal="bottom_right")
            no, _ = attend(qs, ks, vs, torch.bfloat16, causal="bottom_right")
            out.append(fa_check(f"o head {hh} rows {rows}", o[:, hh:hh + 1, rows], ro, no, torch.bfloat16))
        del base
        return out
    _record("special", "int64 offsets: strided views past 2^31 elements", long_offsets)


def _tile_sweep(group, dt, e, lq, lk, with_backward):
    from flashproof.kernels import TILE_CONFIGS, accepts_tile_config, attention
    lq, lk = _shape(lq, lk)
    q, k, v, _ = _inputs(2, 4, 2, lq, lk, e, e, dt, 11)
    opts = dict(causal="bottom_right", window=(lk // 3, -1))
    ro, rl = attend(q, k, v, torch.float64, **opts)
    no, nl = attend(q, k, v, dt, **opts)
    bwd_subset = {(16, 16), (32, 64), (64, 32), (128, 128), (256, 64), (64, 64)}
    for cfg in TILE_CONFIGS:
        kw = dict(block_m=cfg.block_m, block_n=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

        def one(cfg=cfg, kw=kw):
            accepted = accepts_tile_config(cfg, head_dim=e, head_dim_v=e, dtype=dt)
            try:
                o, lse = attention(q, k, v, return_lse=True, **opts, **kw)
            except ValueError as err:
                return dict(ok=True, refused=str(err)[:160], predicted_refusal=not accepted)
            out = [fa_check("o", o, ro, no, dt),
                   fa_check("lse", lse, rl, nl, dt, eps=4 * UNIT[torch.float32] * (float(torch.nan_to_num(rl, neginf=0).abs().max()) + 1))]
            if not accepted:
                out.append(dict(ok=False, why="ran although accepts_tile_config said no"))
            if with_backward and (cfg.block_m, cfg.block_n) in bwd_subset:
                out += _bwd_check(q, k, v, kernel_kw=kw, **opts)
            return out
        _record(group, f"{dt} E{e} config {tuple(cfg)}", one)


def group_tiles():
    _tile_sweep("tiles", torch.float16, 64, 777, 1333, with_backward=True)


def group_tiles256():
    _tile_sweep("tiles256", torch.bfloat16, 256, 300, 517, with_backward=False)


def group_decode():
    from flashproof.kernels import attention, decode
    g = torch.Generator(device=DEV).manual_seed(21)

    def run(name, dt, b, h, hkv, lq, e, ev, lmax, splits_list, page_sizes, **opts):
        opts.setdefault("causal", "bottom_right")  # decode's default, stated for the reference
        lens = torch.randint(0, lmax + 1, (b,), generator=g, device=DEV)
        lens[0], lens[-1] = 0, lmax
        if SHRINK > 1:
            lens = lens // SHRINK
            lmax //= SHRINK
        q = _rand(b, h, lq, e, dtype=dt, gen=g)
        k = _rand(b, hkv, lmax + 3, e, dtype=dt, gen=g)
        v = _rand(b, hkv, lmax + 3, ev, dtype=dt, gen=g)
        for i in range(b):
            k[i, :, int(lens[i]):] = float("nan")
            v[i, :, int(lens[i]):] = float("nan")

        def check(o, lse):
            out = []
            for i in range(b):
                n = int(lens[i])
                if n == 0:
                    out.append(dict(tensor=f"seq {i} empty", ok=bool((o[i] == 0).all() and torch.isneginf(lse[i]).all())))
                    continue
                qi, ki, vi = q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n]
                ro, rl = attend(qi, ki, vi, torch.float64, **opts)
                no, nl = attend(qi, ki, vi, dt, **opts)
                r = fa_check(f"o seq {i}", o[i:i + 1], ro, no, dt)
                r2 = fa_check(f"lse seq {i}", lse[i:i + 1], rl, nl, dt,
                              eps=4 * UNIT[torch.float32] * (float(torch.nan_to_num(rl, neginf=0).abs().max()) + 1))
                out += [r, r2]
            bad = [x for x in out if not x["ok"]]
            return bad or [dict(ok=True, sequences=b)]

        base = {}
        for s in splits_list:
            def contiguous(s=s):
                o, lse = decode(q, k, v, seqlens=lens.to(torch.int32), num_splits=s, return_lse=True, **opts)
                base[s] = (o, lse)
                return check(o, lse)
            _record("decode", f"{name} contiguous splits={s}", contiguous)
        for ps in page_sizes:
            def paged(ps=ps):
                n_pages = [(int(x) + ps - 1) // ps for x in lens]
                total = sum(n_pages) + 5
                perm = torch.randperm(total, generator=torch.Generator().manual_seed(ps)).tolist()
                kp = torch.full((total, hkv, ps, e), float("nan"), dtype=dt, device=DEV)
                vp = torch.full((total, hkv, ps, ev), float("nan"), dtype=dt, device=DEV)
                table = torch.full((b, max(n_pages) + 1), 2**30, dtype=torch.int32)
                c = 0
                for i in range(b):
                    for p in range(n_pages[i]):
                        pid = perm[c]
                        c += 1
                        table[i, p] = pid
                        m = min(ps, int(lens[i]) - p * ps)
                        kp[pid, :, :m] = k[i, :, p * ps:p * ps + m]
                        vp[pid, :, :m] = v[i, :, p * ps:p * ps + m]
                out = []
                for s in splits_list:
                    o, lse = decode(q, kp, vp, seqlens=lens.to(torch.int32), block_table=table.to(DEV),
                                    page_size=ps, num_splits=s, return_lse=True, **opts)
                    if s is None:  # the default split count follows each layout's capacity: judged, not compared
                        out += check(o, lse)
                        continue
                    same = s in base and torch.equal(o, base[s][0]) and torch.equal(lse, base[s][1])
                    out.append(dict(tensor=f"paged ps={ps} splits={s} bitwise == contiguous", ok=bool(same)))
                return out
            _record("decode", f"{name} paged page_size={ps}", paged)

    run("bf16 B8 H32/8 Lq1 E128 ragged<=4096", torch.bfloat16, 8, 32, 8, 1, 128, 128, 4096,
        [None, 1, 4, 13], [16, 13])
    run("fp16 B4 H16/2 Lq4 E64 window(512,0)", torch.float16, 4, 16, 2, 4, 64, 64, 3000, [None, 7],
        [1, 32], window=(512, 0))
    run("fp32 B3 H8/8 Lq1 E40 softcap", torch.float32, 3, 8, 8, 1, 40, 40, 2000, [None, 3], [7], softcap=20.0)

    def prefill_decode():
        q, k, v, _ = _inputs(2, 8, 2, 1200, 1200, 128, 128, torch.bfloat16, 22)
        full, full_lse = attention(q, k, v, causal="bottom_right", return_lse=True)
        o, lse = decode(q[:, :, -3:], k, v, return_lse=True)
        d = float((o.double() - full[:, :, -3:].double()).abs().max())
        return dict(ok=d <= 2 * UNIT[torch.bfloat16] * float(full.abs().max()), max_diff=d)
    _record("decode", "prefill then decode == full prefill rows", prefill_decode)
    _decode_validation()


# A bad seqlen / used page on the device fails a device-side assert, which ends the CUDA context:
# each case runs in a child process. argv: case, device.
_ASSERT_CHILD = r"""
import sys
import torch
from flashproof.kernels import decode
case, dev = sys.argv[1], sys.argv[2]
g = torch.Generator(device=dev).manual_seed(5)
q = torch.randn(3, 4, 1, 64, device=dev, generator=g).half()
kc = torch.randn(3, 2, 48, 64, device=dev, generator=g).half()
kp = torch.randn(8, 2, 16, 64, device=dev, generator=g).half()
lens = torch.tensor([40, 20, 48], dtype=torch.int32, device=dev)
table = torch.tensor([[0, 1, 2, 2**30], [3, 4, 2**30, -1], [5, 6, 7, 2**30]], dtype=torch.int32, device=dev)
if case == "seqlens":  # sequence 1 past the capacity (48)
    decode(q, kc, kc, seqlens=torch.tensor([40, 49, 48], dtype=torch.int32, device=dev))
elif case == "page":  # sequence 1 (20 keys) uses slots 0 and 1; slot 1 names page 8 of 0..7
    table[1, 1] = 8
    decode(q, kp, kp, seqlens=lens, block_table=table)
elif case == "graph":  # captured with valid metadata, replayed after a bad seqlen is written in place
    decode(q, kp, kp, seqlens=lens, block_table=table)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode(q, kp, kp, seqlens=lens, block_table=table)
    graph.replay()
    torch.cuda.synchronize()
    print("valid replay ok", flush=True)
    lens[1] = 10**6
    graph.replay()
torch.cuda.synchronize()
print("no error", flush=True)
"""


def _decode_validation():
    """decode(validate=True) without host syncs (issue 17): device metadata checked by
    decode._check_kernel (device asserts), host metadata on the host (ValueError)."""
    import contextlib
    import importlib
    import re

    from flashproof.kernels import decode
    D = importlib.import_module("flashproof.kernels.decode")
    cuda = DEV == "cuda"

    @contextlib.contextmanager
    def no_sync():
        """torch raises on any synchronizing CUDA call inside (a no-op off CUDA)."""
        if not cuda:
            yield
            return
        old = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(old)

    g = torch.Generator(device=DEV).manual_seed(17)
    lens_l = [0, 17, 300, 129]
    ps, cap = 16, 304
    q = _rand(4, 8, 1, 64, dtype=torch.bfloat16, gen=g)
    k = _rand(4, 2, cap, 64, dtype=torch.bfloat16, gen=g)
    v = _rand(4, 2, cap, 64, dtype=torch.bfloat16, gen=g)
    n_pages = [-(-n // ps) for n in lens_l]
    kp = torch.full((sum(n_pages) + 2, 2, ps, 64), float("nan"), dtype=torch.bfloat16, device=DEV)
    vp = torch.full_like(kp, float("nan"))
    table_h = torch.full((4, cap // ps), 2**30, dtype=torch.int32)  # unused entries out of range: never checked
    nxt = 0
    for i, n in enumerate(lens_l):
        k[i, :, n:], v[i, :, n:] = float("nan"), float("nan")
        for p in range(n_pages[i]):
            table_h[i, p] = nxt
            m = min(ps, n - p * ps)
            kp[nxt, :, :m], vp[nxt, :, :m] = k[i, :, p * ps:p * ps + m], v[i, :, p * ps:p * ps + m]
            nxt += 1
    lens_h = torch.tensor(lens_l, dtype=torch.int32)
    lens_d, table_d = lens_h.to(DEV), table_h.to(DEV)
    layouts = {"contiguous": (k, v, {}), "paged": (kp, vp, dict(block_table=table_d))}

    def device_metadata():
        out = []
        for name, (kc, vc, kw) in layouts.items():
            for splits in (None, 3):
                call = dict(kw, seqlens=lens_d, num_splits=splits, return_lse=True)
                decode(q, kc, vc, **call)  # compiled outside the checked region
                if cuda:
                    torch.cuda.synchronize()
                with no_sync():
                    o, lse = decode(q, kc, vc, **call)
                    o2, lse2 = decode(q, kc, vc, validate=False, **call)
                same = bool(torch.equal(o, o2) and torch.equal(lse, lse2))
                out.append(dict(tensor=f"{name} splits={splits}: no sync, bitwise == validate=False", ok=same))
        return out
    _record("decode", "validate=True, seqlens/block_table on the GPU: no host sync (sync debug mode 'error'), "
                      "bitwise == validate=False", device_metadata)

    def host_metadata():
        out = []
        ref = decode(q, kp, vp, seqlens=lens_d, block_table=table_d, num_splits=3)
        for what, kw in (("both", dict(seqlens=lens_h, block_table=table_h)),
                         ("seqlens", dict(seqlens=lens_h, block_table=table_d)),
                         ("block_table", dict(seqlens=lens_d, block_table=table_h))):
            decode(q, kp, vp, **kw)  # compiled outside the checked region
            with no_sync():
                decode(q, kp, vp, **kw)
                o = decode(q, kp, vp, num_splits=3, **kw)
            out.append(dict(tensor=f"{what} on the host: no sync, bitwise == device metadata",
                            ok=bool(torch.equal(o, ref))))
        bad_page = table_h.clone()
        bad_page[2, 5] = kp.shape[0]
        for what, kw, want in (
                ("seqlens past the capacity", dict(seqlens=torch.tensor([0, 17, cap + 1, 129], dtype=torch.int32),
                                                   block_table=table_h),
                 f"{D._seqlens_rule(cap)}, got [0, {cap + 1}]"),
                ("negative seqlen, contiguous", dict(seqlens=torch.tensor([0, -3, 300, 129], dtype=torch.int32)),
                 f"{D._seqlens_rule(cap)}, got [-3, 300]"),
                ("used page past the pool", dict(seqlens=lens_h, block_table=bad_page),
                 f"block_table[2, 5] = {kp.shape[0]} {D._page_rule(kp.shape[0] - 1)}")):
            kc, vc = (kp, vp) if "block_table" in kw else (k, v)
            try:
                with no_sync():
                    decode(q, kc, vc, **kw)
                out.append(dict(tensor=what, ok=False, why="no error"))
            except ValueError as e:
                out.append(dict(tensor=what, ok=str(e) == want, message=str(e), expected=want))
        return out
    _record("decode", "validate=True, seqlens/block_table on the CPU: no sync; bad input gives the host ValueError",
            host_metadata)

    def graph():
        if not cuda:
            return dict(ok=True, skipped="CUDA graphs need a CUDA device")
        out = []
        for name, (kc, vc, kw) in layouts.items():
            sl = lens_d.clone()
            call = dict(kw, seqlens=sl, return_lse=True)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                decode(q, kc, vc, **call)
            torch.cuda.current_stream().wait_stream(side)
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                o, lse = decode(q, kc, vc, **call)
            # replay, then shorter lengths written in place (within each sequence's pages and finite keys)
            for new in (lens_l, [0, 9, 250, 100]):
                sl.copy_(torch.tensor(new, dtype=torch.int32))
                gr.replay()
                ro, rl = decode(q, kc, vc, **dict(call, seqlens=sl.clone()))
                out.append(dict(tensor=f"{name} seqlens {new}: replay == eager",
                                ok=bool(torch.equal(o, ro) and torch.equal(lse, rl))))
        return out
    _record("decode", "validate=True with device metadata captured in a CUDA graph: replay == eager", graph)

    def asserts():
        if not cuda:
            return dict(ok=True, skipped="device-side asserts need a CUDA device")
        want = {"seqlens": f"decode: {D._seqlens_rule()}", "page": f"block_table[b, p] {D._page_rule()}",
                "graph": f"decode: {D._seqlens_rule()}"}
        children = {case: subprocess.Popen([sys.executable, "-c", _ASSERT_CHILD, case, DEV], stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True) for case in want}
        out = []
        for case, p in children.items():
            try:
                text, _ = p.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                p.kill()
                text = p.communicate()[0] + "\n[timed out]"
            found = want[case] in text
            block = re.search(r"block: \[(\d+), ?0, ?0\]", text)
            out.append(dict(tensor=f"child '{case}'", ok=p.returncode != 0 and found and "no error" not in text
                            and (case != "graph" or "valid replay ok" in text),
                            returncode=p.returncode, message_found=found,
                            block_reported=block.group(1) if block else None, tail=text[-1500:]))
        return out
    _record("decode", "bad seqlens / used page on the GPU: device assert with its message (child processes)", asserts)


def group_determinism():
    from flashproof.kernels import attention, decode
    lq, lk = _shape(2048, 2048)
    q, k, v, g = _inputs(2, 8, 2, lq, lk, 128, 128, torch.bfloat16, 31)

    def fwd():
        a = attention(q, k, v, causal="bottom_right", return_lse=True)
        same = sum(all(torch.equal(x, y) for x, y in zip(a, attention(q, k, v, causal="bottom_right", return_lse=True)))
                   for _ in range(9))
        return dict(ok=same == 9, identical=same + 1, of=10)
    _record("determinism", "forward x10 bitwise", fwd)

    def bwd():
        do = _rand(2, 8, lq, 128, dtype=torch.bfloat16, gen=g)
        outs = []
        for _ in range(4):
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
            attention(qq, kk, vv, causal="bottom_right", deterministic=True).backward(do)
            outs.append((qq.grad, kk.grad, vv.grad))
        same = sum(all(torch.equal(x, y) for x, y in zip(outs[0], o)) for o in outs[1:])
        return dict(ok=same == 3, identical=same + 1, of=4)
    _record("determinism", "backward x4 bitwise", bwd)

    def dec():
        lens = torch.randint(1, lk + 1, (2,), generator=g, device=DEV).to(torch.int32)
        a = decode(q[:, :, :1], k, v, seqlens=lens, num_splits=5)
        same = sum(torch.equal(a, decode(q[:, :, :1], k, v, seqlens=lens, num_splits=5)) for _ in range(4))
        return dict(ok=same == 4, identical=same + 1, of=5)
    _record("determinism", "decode x5 bitwise", dec)

    def batch_invariance():
        a = attention(q, k, v, causal="bottom_right")
        b1 = attention(q[1:], k[1:], v[1:], causal="bottom_right")
        return dict(ok=bool(torch.equal(a[1:], b1)))
    _record("determinism", "a row's output does not depend on its batch", batch_invariance)


def group_small():
    """Small ragged set for compute-sanitizer (memcheck): forward, backward, sdpa, decode."""
    from flashproof.kernels import attention, decode, sdpa
    q, k, v, g = _inputs(2, 4, 2, 77, 133, 40, 24, torch.bfloat16, 41)

    def fwd_bwd():
        qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
        o = attention(qq, kk, vv, causal="bottom_right", window=(30, -1), block_m=32, block_n=32)
        o.backward(torch.ones_like(o))
        q2, k2, v2, _ = _inputs(1, 2, 2, 50, 33, 64, 64, torch.float16, 42)
        o2 = attention(q2, k2, v2, causal="bottom_right")  # Lq > Lk: empty rows
        return dict(ok=bool(torch.isfinite(o).all() and torch.isfinite(o2).all()))
    _record("small", "forward+backward ragged", fwd_bwd)

    def sdpa_mask():
        q3, k3, v3, _ = _inputs(1, 2, 2, 45, 61, 32, 32, torch.float32, 43)
        m = torch.rand(45, 61, device=DEV, generator=g) > 0.5
        qq = q3.clone().requires_grad_()
        sdpa(qq, k3, v3, attn_mask=m).sum().backward()
        return dict(ok=bool(torch.isfinite(qq.grad).all()))
    _record("small", "sdpa bool mask fwd+bwd", sdpa_mask)

    def dec():
        lens = torch.tensor([0, 29, 64], dtype=torch.int32, device=DEV)
        qd = _rand(3, 4, 1, 64, dtype=torch.float16, gen=g)
        kc = _rand(3, 2, 64, 64, dtype=torch.float16, gen=g)
        o1 = decode(qd, kc, kc, seqlens=lens, num_splits=3)
        ps = 13
        kp = _rand(20, 2, ps, 64, dtype=torch.float16, gen=g)
        table = torch.tensor([[99, 99, 99, 99, 99], [3, 7, 11, 99, 99], [0, 1, 2, 4, 5]], dtype=torch.int32, device=DEV)
        o2 = decode(qd, kp, kp, seqlens=lens, block_table=table, page_size=ps, num_splits=2)
        return dict(ok=bool(torch.isfinite(o1).all() and torch.isfinite(o2).all()))
    _record("small", "decode contiguous + paged (unused table entries out of range)", dec)

    def dec_unvalidated():
        # validate=False: a used page id past k_cache and a seqlen past the capacity are never
        # followed (the sanitizer sees no out-of-range read); those sequences come back NaN.
        lens = torch.tensor([1000, 29, 64], dtype=torch.int32, device=DEV)
        qd = _rand(3, 4, 1, 64, dtype=torch.float16, gen=g)
        kp = _rand(20, 2, 13, 64, dtype=torch.float16, gen=g)
        table = torch.tensor([[99, 99, 99, 99, 99], [3, 7, 10**6, 99, 99], [0, 1, 2, 4, 5]], dtype=torch.int32,
                             device=DEV)
        good = decode(qd, kp, kp, seqlens=torch.tensor([0, 0, 64], dtype=torch.int32, device=DEV),
                      block_table=table, num_splits=2)
        o = decode(qd, kp, kp, seqlens=lens, block_table=table, num_splits=2, validate=False)
        return dict(ok=bool(torch.isnan(o[:2]).all() and torch.equal(o[2], good[2])))
    _record("small", "decode validate=False: out-of-range page and seqlen give NaN, no stray read", dec_unvalidated)


GROUPS = {
    "forward": group_forward, "backward": group_backward, "special": group_special,
    "tiles": group_tiles, "tiles256": group_tiles256, "decode": group_decode,
    "determinism": group_determinism, "small": group_small,
}
# (group, part): compilation is CPU-bound, so the long groups are split over processes.
PARALLEL = [("tiles", "0/2"), ("tiles", "1/2"), ("tiles256", "0/2"), ("tiles256", "1/2"), ("forward", "0/1"),
            ("backward", "0/2"), ("backward", "1/2"), ("special", "0/2"), ("special", "1/2"),
            ("decode", "0/1"), ("determinism", "0/1")]


def _env():
    import triton
    info = dict(torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                time=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # nvidia-smi missing: recorded, not fatal
        info["driver"] = f"unknown ({e})"
    return info


def run_all(out_dir, timeout, san_timeout, shrink):
    """Every group in its own process (compilation is CPU-bound), then the sanitizer."""
    os.makedirs(out_dir, exist_ok=True)
    env = _env()
    print(json.dumps(dict(env=env)), flush=True)
    t0 = time.time()
    procs = {}
    for name, part in PARALLEL:
        key = f"{name}_{part.replace('/', 'of')}"
        f = open(os.path.join(out_dir, f"g_{key}.jsonl"), "w")
        procs[key] = (subprocess.Popen([sys.executable, "-u", __file__, name, "--shrink", str(shrink),
                                        "--part", part, "--device", DEV], stdout=f, stderr=subprocess.STDOUT), f)
    # compute-sanitizer on the small set runs beside the groups (its cost is mostly compilation)
    san_log = os.path.join(out_dir, "g_sanitizer.txt")
    env_s = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # memcheck sees each tensor's bounds
    cmd = ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-u", __file__,
           "small", "--device", DEV]
    san_f = open(san_log, "w")
    try:
        san_p = subprocess.Popen(cmd, stdout=san_f, stderr=subprocess.STDOUT, env=env_s)
    except FileNotFoundError:
        san_p = None
    status = {}
    for name, (p, f) in procs.items():
        try:
            status[name] = p.wait(timeout=max(5, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            status[name] = "timeout"
        f.close()
    san = {}
    if san_p is None:
        san["memcheck"] = dict(returncode="compute-sanitizer not found")
    else:
        try:
            rc = san_p.wait(timeout=max(5, san_timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            san_p.kill()
            rc = "timeout"
        san_f.close()
        with open(san_log) as f:
            text = f.read()
        san["memcheck"] = dict(returncode=rc, tail=text[-4000:])
    os.remove(san_log)
    records = []
    for name in procs:
        with open(os.path.join(out_dir, f"g_{name}.jsonl")) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    records.append(dict(group=name, raw=line.rstrip()[-500:]))
        os.remove(os.path.join(out_dir, f"g_{name}.jsonl"))
    checks = [r for r in records if "check" in r]
    failed = [r for r in checks if not r["ok"]]
    summary = dict(env=env, seconds=round(time.time() - t0, 1), group_exit=status, sanitizer=san,
                   checks=len(checks), failed=len(failed),
                   failed_names=[f"{r['group']}: {r['check']}" for r in failed])
    with open(os.path.join(out_dir, "results.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    print(json.dumps(summary, indent=1, default=str), flush=True)
    ok = not failed and all(v == 0 for v in status.values()) and all(s.get("returncode") == 0 for s in san.values())
    return 0 if ok else 1


def main(argv=None):
    global SHRINK, DEV, PART
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group", choices=["all", *GROUPS])
    ap.add_argument("--out", default="gpu_kernel_checks_out")
    ap.add_argument("--shrink", type=int, default=1, help="divide lengths by this (pytest gpu marker: 8)")
    ap.add_argument("--timeout", type=float, default=170.0, help="seconds for the parallel groups")
    ap.add_argument("--sanitizer-timeout", type=float, default=200.0, help="seconds from the start")
    ap.add_argument("--device", default="cuda", help="cpu: dry-run the harness under the interpreter")
    ap.add_argument("--part", default="0/1", help="k/n: only checks with index %% n == k")
    a = ap.parse_args(argv)
    SHRINK, DEV = max(1, a.shrink), a.device
    k_, n_ = (int(x) for x in a.part.split("/"))
    PART = (k_, n_)
    if DEV == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: these checks need the compiled kernels", file=sys.stderr)
        return 2
    if a.group == "all":
        return run_all(a.out, a.timeout, a.sanitizer_timeout, a.shrink)
    GROUPS[a.group]()
    return 0 if all(r["ok"] for r in _RESULTS if r) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reliability checks of the compiled kernels on a GPU (issue: determinism, long context, races).

    python benchmarks/gpu_reliability.py determinism      # forward x50, backward x10 bitwise
    python benchmarks/gpu_reliability.py longcontext      # L=131072 and B*H*L*E > 2^31, sampled rows vs fp64
    python benchmarks/gpu_reliability.py small            # a small ragged set, for compute-sanitizer racecheck

Sampled rows are compared with an fp64 evaluation of the spec on the GPU (torch float64,
through flashproof.reference.forward_naive on float64 inputs) and judged by the derived bound of
flashproof.proofs.bounds.running_forward_bound for those rows.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from flashproof import kernels, reference

__all__ = []


def _log(rec, out):
    print(json.dumps(rec), flush=True)
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")


def determinism(out=None):
    g = torch.Generator(device="cuda").manual_seed(0)
    for dt in (torch.bfloat16, torch.float16):
        for causal in (False, "bottom_right"):
            q = torch.randn(2, 8, 1000, 128, device="cuda", dtype=dt, generator=g)
            k = torch.randn(2, 4, 1500, 128, device="cuda", dtype=dt, generator=g)
            v = torch.randn_like(k)
            o0 = kernels.attention(q, k, v, causal=causal)
            same = sum(bool(torch.equal(o0, kernels.attention(q, k, v, causal=causal))) for _ in range(49))
            _log(dict(check="forward bitwise x50", dtype=str(dt), causal=causal, identical=same + 1, of=50), out)
            qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
            do = torch.randn_like(o0)
            grads = []
            for _ in range(10):
                o = kernels.attention(qq, kk, vv, causal=causal, deterministic=True)
                grads.append(torch.autograd.grad(o, (qq, kk, vv), do))
            ok = sum(all(torch.equal(a, b) for a, b in zip(grads[0], gr)) for gr in grads)
            _log(dict(check="backward bitwise x10 (deterministic=True)", dtype=str(dt), causal=causal,
                      identical=ok, of=10), out)


def _check_rows(name, q, k, v, o, rows, causal, out, left=None):
    """fp64 reference on sampled (b, h, i) rows, against the derived bound."""
    from flashproof.proofs import bounds

    worst, worst_ratio, nonfinite = 0.0, 0.0, 0
    hkv = k.shape[1]
    grp = q.shape[1] // hkv
    for b, h, i in rows:
        kv = h // grp
        qs = q[b:b + 1, h:h + 1, i:i + 1]
        ks = k[b:b + 1, kv:kv + 1]
        vs = v[b:b + 1, kv:kv + 1]
        # a single query row at position i: express the mask through alignment on a 1-row problem
        lk = ks.shape[2]
        keep = lk if not causal else min(lk, i + 1 + (lk - q.shape[2] if causal == "bottom_right" else 0))
        first = 0 if left is None else max(0, keep - 1 - left)  # spec: window (left, 0) around the diagonal
        ks, vs = ks[:, :, first:keep], vs[:, :, first:keep]
        ref, _ = reference.forward_naive(qs.double(), ks.double(), vs.double())
        got = o[b, h, i].double()
        err = (got - ref[0, 0, 0]).abs()
        bnd, _ = bounds.running_forward_bound(qs.cpu(), ks.cpu(), vs.cpu(),
                                              precision=bounds.precision_for(q.dtype))
        bnd = torch.as_tensor(bnd[0, 0, 0], device=err.device)
        nonfinite += int((~torch.isfinite(got)).sum())
        worst = max(worst, float(err.max()))
        worst_ratio = max(worst_ratio, float((err / bnd).max()))
    _log(dict(check=name, shape=list(q.shape), kv_shape=list(k.shape), strides=list(q.stride()), rows=len(rows),
              max_abs_err=worst, max_err_over_bound=worst_ratio, nonfinite=nonfinite,
              passed=bool(worst_ratio <= 1.0 and nonfinite == 0)), out)


def longcontext(out=None):
    torch.manual_seed(0)
    # L = 131072, one head group, GQA 8:1, bf16, causal bottom-right
    L = 131072
    q = torch.randn(1, 8, L, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 1, L, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    t = time.time()
    o = kernels.attention(q, k, v, causal=True)
    torch.cuda.synchronize()
    rows = [(0, h, i) for h in (0, 7) for i in (0, 1, 4095, 65536, L - 1)]
    _check_rows(f"L=131072 causal ({time.time() - t:.2f} s)", q, k, v, o, rows, True, out)
    del q, k, v, o
    torch.cuda.empty_cache()
    # B*H*L*E > 2^31 elements, as strided (B, L, H, E) -> (B, H, L, E) views: 32-bit offsets would wrap
    B, H, L, E = 4, 40, 131072, 128
    n = B * H * L * E
    assert n > 2 ** 31, n
    base = torch.randn(B, L, H, E, device="cuda", dtype=torch.bfloat16)
    q = base.transpose(1, 2)
    kb = torch.randn(B, L, H, E, device="cuda", dtype=torch.bfloat16)
    k = kb.transpose(1, 2)
    v = torch.randn(B, L, H, E, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    t = time.time()
    # a causal window keeps the work small; the addressing still spans every row of every head
    o = kernels.attention(q, k, v, causal=True, window=(2048, 0))
    torch.cuda.synchronize()
    rows = [(B - 1, H - 1, L - 1), (B - 1, H - 1, L // 2), (1, 20, 12345), (0, 0, 0), (B - 1, 0, L - 1)]
    _check_rows(f"B*H*L*E={n} (>2^31) strided views causal window 2048 ({time.time() - t:.2f} s)", q, k, v, o,
                rows, True, out, left=2048)


def small(out=None):
    """A small ragged set of forward/backward/decode launches, for compute-sanitizer."""
    torch.manual_seed(0)
    for (lq, lk, e, causal) in ((17, 33, 40, "bottom_right"), (64, 1, 64, False), (33, 70, 128, True)):
        q = torch.randn(2, 4, lq, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(2, 2, lk, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(2, 2, lk, e, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        o = kernels.attention(q, k, v, causal=causal, window=(16, 0) if causal else None)
        o.sum().backward()
    q = torch.randn(3, 8, 1, 64, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(3, 2, 300, 64, device="cuda", dtype=torch.bfloat16)
    kernels.decode(q, kc, kc.clone(), seqlens=torch.tensor([300, 0, 17], device="cuda", dtype=torch.int32),
                   num_splits=4)
    torch.cuda.synchronize()
    _log(dict(check="small ragged set ran"), out)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "determinism"
    out = os.path.join(os.environ["OUT"], "reliability.jsonl") if os.environ.get("OUT") else None
    dict(determinism=determinism, longcontext=longcontext, small=small)[what](out)

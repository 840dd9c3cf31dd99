"""Shared helpers of the kernel tests (no tests here): inputs, references and the error criterion.

Criterion (FlashAttention's): the kernel's max error against the float64 reference is at most
twice the max error of the same-precision naive baseline (torch ops in the input dtype), plus
one ulp of the output dtype at the output's magnitude (see ``fa_check``).
"""
from __future__ import annotations

import numpy as np
import torch

from flashproof import spec
from flashproof.reference import backward_fp64, forward_fp64, forward_naive

__all__ = ["UNIT", "rand", "ref_forward", "naive_forward", "fa_check", "check_forward",
           "naive_grads", "check_backward", "assert_same_nonfinite", "describe_worst",
           "window_rows_empty", "finite_all"]

#: Unit roundoff u = 2^-p of each storage dtype.
UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}


def rand(*shape, dtype, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(dtype)


def ref_forward(q, k, v, **opts):
    o, lse = forward_fp64(q, k, v, **opts)
    return torch.from_numpy(o), torch.from_numpy(lse)


def naive_forward(q, k, v, **opts):
    o, lse = forward_naive(q, k, v, **opts)
    return o.double(), lse.double()


def describe_worst(name, err, k=3):
    flat = err.flatten()
    idx = torch.topk(torch.nan_to_num(flat, nan=float("inf")), min(k, flat.numel())).indices
    where = [tuple(int(x) for x in np.unravel_index(int(i), tuple(err.shape))) for i in idx]
    return f"{name}: worst indices {where} errors {[float(flat[i]) for i in idx]}"


def assert_same_nonfinite(name, got, ref):
    """Non-finite entries must match the reference's: NaN where NaN, +-inf where +-inf."""
    got, ref = got.double(), ref.double()
    for what, fn in (("NaN", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        bad = fn(got) != fn(ref)
        if bad.any():
            where = [tuple(int(x) for x in w) for w in bad.nonzero()[:5]]
            raise AssertionError(f"{name}: {what} pattern differs from the reference at {where} "
                                 f"(kernel {int(fn(got).sum())} {what}, reference {int(fn(ref).sum())})")


def fa_check(name, got, ref, naive, dtype, *, eps=None):
    """max|got - ref| <= 2 max|naive - ref| + eps over the finite reference entries.

    eps defaults to one ulp (2u) of ``dtype`` at max|ref|: the final rounding of the output to
    the storage dtype, which no implementation avoids and which a lucky naive run on a tiny
    problem may not show.
    """
    assert_same_nonfinite(name, got, ref)
    fin = torch.isfinite(ref)
    got, ref, naive = got.double()[fin], ref[fin], naive.double()[fin]
    if ref.numel() == 0:
        return
    if eps is None:
        eps = 2 * UNIT[dtype] * float(ref.abs().max())
    err = (got - ref).abs()
    nerr = torch.nan_to_num((naive - ref).abs(), nan=0.0, posinf=0.0)
    bound = 2 * float(nerr.max()) + eps
    worst = float(err.max())
    if not worst <= bound:
        full = torch.zeros(fin.shape, dtype=torch.float64)
        full[fin] = err
        raise AssertionError(f"{name} ({dtype}): max error {worst:.3e} > 2 * naive {float(nerr.max()):.3e} "
                             f"+ eps {eps:.3e}; {describe_worst(name, full)}")


def check_forward(o, lse, q, k, v, **opts):
    """o (and lse if given) against forward_fp64 with the FA criterion vs forward_naive."""
    ro, rl = ref_forward(q, k, v, **opts)
    no, nl = naive_forward(q, k, v, **opts)
    fa_check("o", o, ro, no, q.dtype)
    if lse is not None:
        # LSE is float32 in the kernel: the exp2 fold (scale*log2 e, then * ln 2) adds about two
        # fp32 roundings of a logit-sized value, so eps = 4 u_fp32 (max|lse| + 1).
        fa_check("lse", lse, rl, nl, q.dtype, eps=4 * UNIT[torch.float32] * (float(
            torch.nan_to_num(rl, neginf=0.0).abs().max()) + 1))
    return ro, rl


def naive_grads(q, k, v, do, *, attn_mask=None, causal=False, alignment=None, window=None,
                scale=None, softcap=None):
    """Autograd through the naive forward in the input dtype, with empty rows kept finite
    (torch's softmax of an all -inf row is NaN, and so would be its gradient)."""
    d = spec.check_dims(q.shape, k.shape, v.shape)
    mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
    keep = torch.from_numpy(mask.matrix(d.lq, d.lk)).expand(d.batch, d.heads, d.lq, d.lk)
    if attn_mask is not None:
        keep = keep & attn_mask
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    rep = d.heads // d.kv_heads
    kr, vr = kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1)
    s = (qq @ kr.transpose(-1, -2)) * spec.resolve_scale(scale, d.e)
    c = spec.normalize_softcap(softcap)
    if c is not None:
        s = c * torch.tanh(s / c)
    empty = ~keep.any(-1, keepdim=True)
    s = s.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)
    p = torch.softmax(s, -1).masked_fill(empty, 0.0)
    (p @ vr).backward(do)
    return qq.grad.double(), kk.grad.double(), vv.grad.double()


def _d_term(o, q, k, v, do, opts):
    """Propagated rounding of the FA backward's D_i = rowsum(dO_i * O_i), as scalar eps for
    (dq, dk). D is formed from the kernel's stored O, so dS_ij = P_ij (dP_ij - D_i) inherits
    |D_i - D_i exact| and dq_i += scale sum_j P_ij |k_j| |err D_i|, dk_j += scale sum_i P_ij
    |q_i| |err D_i|. The naive baseline has no D (softmax backward cancels exactly on one-key
    rows), so without this term fp32 gradients fail 2x naive on rows that attend 1-2 keys."""
    d = spec.check_dims(q.shape, k.shape, v.shape)
    ro, _ = forward_fp64(q, k, v, **opts)
    do64 = do.double()
    err_d = ((do.float() * o.float()).sum(-1).double() - (do64 * torch.from_numpy(ro)).sum(-1)).abs()
    mask = spec.make_mask(causal=opts.get("causal", False), window=opts.get("window"),
                          alignment=opts.get("alignment"))
    keep = torch.from_numpy(mask.matrix(d.lq, d.lk)).expand(d.batch, d.heads, d.lq, d.lk)
    if opts.get("attn_mask") is not None:
        keep = keep & opts["attn_mask"]
    rep = d.heads // d.kv_heads
    k64, q64 = k.double().repeat_interleave(rep, 1), q.double()
    scale = spec.resolve_scale(opts.get("scale"), d.e)
    s = torch.where(keep, (q64 @ k64.transpose(-1, -2)) * scale, torch.tensor(float("-inf"), dtype=torch.float64))
    c = spec.normalize_softcap(opts.get("softcap"))
    if c is not None:
        s = torch.where(keep, c * torch.tanh(s / c), s)
    p = torch.nan_to_num(torch.softmax(s, -1), nan=0.0)
    w = p * err_d[..., None] * abs(scale)
    eps_dq = float((w @ k64.abs()).max()) if w.numel() else 0.0
    eps_dk = float((w.transpose(-1, -2) @ q64.abs()).max()) if w.numel() else 0.0
    return eps_dq, eps_dk


def check_backward(grads, q, k, v, do, *, o=None, **opts):
    """dq, dk, dv against backward_fp64, FA criterion vs naive autograd in the input dtype; with
    the kernel's ``o``, the D-term rounding (``_d_term``) is added to the dq and dk budgets."""
    ref = [torch.from_numpy(g) for g in backward_fp64(q, k, v, do, **opts)]
    naive = naive_grads(q, k, v, do, **opts)
    extra = _d_term(o, q, k, v, do, opts) + (0.0,) if o is not None else (0.0, 0.0, 0.0)
    for name, g, r, n, x in zip(("dq", "dk", "dv"), grads, ref, naive, extra):
        fa_check(name, g, r, n, q.dtype, eps=2 * UNIT[q.dtype] * float(r.abs().max()) + x if r.numel() else 0.0)


def window_rows_empty(mask: spec.Mask, lq, lk) -> bool:
    return not mask.matrix(lq, lk).any(axis=1).all()


def finite_all(*xs):
    return all(bool(torch.isfinite(x).all()) for x in xs)


"""Shared helpers of the kernel tests (no tests here): inputs, references and the error criteria.

Forward (FlashAttention's criterion): the kernel's max error against the float64 reference is at
most twice the max error of the same-precision naive baseline (torch ops in the input dtype),
plus one ulp of the output dtype at the output's magnitude (see ``fa_check``). Backward: theorem
4b's derived bound (``check_backward``), no hand-written criterion.
"""
from __future__ import annotations

import numpy as np
import torch

from flashproof import spec
from flashproof.reference import backward_fp64, forward_fp64, forward_naive

__all__ = ["UNIT", "rand", "ref_forward", "naive_forward", "fa_check", "check_forward",
           "check_backward", "assert_same_nonfinite", "describe_worst",
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


def check_backward(grads, q, k, v, do, *, n_tiles=None, dlse=None, ref=None, **opts):
    """dq, dk, dv within theorem 4b's bound of the exact gradients: |got - exact| <=
    proofs.running_backward_bound (any correct FA2 backward of the inputs' precision, its forward's O
    and LSE within theorem 6) + the float64 reference's own error (test_reference_bounds.
    backward_bound_fp64, first order; ~1e-15 relative). ``ref``: the exact gradients if not
    backward_fp64's (e.g. with ``dlse``). Returns {name: max error / bound} (the tightness)."""
    from test_reference_bounds import backward_bound_fp64

    from flashproof.proofs import precision_for
    from flashproof.proofs.bounds_backward import running_backward_bound
    from flashproof.reference._inputs import prepare

    if ref is None:
        ref = [torch.from_numpy(g) for g in backward_fp64(q, k, v, do, **opts)]
        rad = backward_bound_fp64(prepare(q, k, v, **opts), do.double().numpy())
    else:
        rad = [np.zeros(tuple(r.shape)) for r in ref]
    bounds = running_backward_bound(q, k, v, do, precision=precision_for(q.dtype), n_tiles=n_tiles, dlse=dlse,
                                    on_unbounded="raise", **opts)
    out = {}
    for name, g, r, b, rr in zip(("dq", "dk", "dv"), grads, ref, bounds, rad):
        assert_same_nonfinite(name, g, r)
        err = (g.double() - r.double()).abs()
        lim = torch.from_numpy(np.asarray(b) + rr)
        bad = ~(err <= lim)
        if bad.any():
            ratio = torch.where(lim > 0, err / lim, torch.full_like(err, float("inf")))
            raise AssertionError(f"{name} ({q.dtype}): {int(bad.sum())} elements exceed theorem 4b's bound "
                                 f"(max error/bound {float(ratio.max()):.3g}); {describe_worst(name, ratio)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            out[name] = float(torch.where(lim > 0, err / lim, torch.zeros_like(err)).max()) if err.numel() else 0.0
    return out


def window_rows_empty(mask: spec.Mask, lq, lk) -> bool:
    return not mask.matrix(lq, lk).any(axis=1).all()


def finite_all(*xs):
    return all(bool(torch.isfinite(x).all()) for x in xs)


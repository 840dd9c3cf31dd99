"""Show, independently of the property suite, that a kernel's bug is real on its trigger input.

``deviation(impl, trig)`` runs ``impl`` on a mutant's :class:`zoo.Trigger` and returns ``None``
when the result agrees with flashproof.reference (the correct base must give None), or a
sentence saying what is wrong (every mutant must give one).

``bound_ratio(impl, trig)`` measures a forward trigger against the suite's own judge instead:
max |O - exact| / (derived bound + the reference's radius), the bound being
flashproof.proofs.bounds.running_forward_bound (through properties.oracle.bound) for the zoo's
declaration (fp32 accumulator, c_exp = 1) and the trigger's key-tile count; > 1 is a violation.
"""
from __future__ import annotations

import numpy as np
import torch

from flashproof.reference import backward_fp64, forward_fp64

__all__ = ["deviation", "bound_ratio", "TOL"]

#: crude agreement thresholds for the hand check (not the suite's bounds): measured base error
#: vs forward_fp64 is <= 1e-7 * max|v| (fp32 O; 4e-8 on the log2(e) trigger), <= 1e-6 (LSE), <= 1e-6 (fp32 grads) on these inputs.
#: O is compared relative to max|v| (finite part), the LSE relative to max(1, |LSE|).
TOL = {torch.float32: 5e-7, torch.float16: 2e-3, torch.bfloat16: 2e-2}
LSE_TOL = 1e-4
GRAD_TOL = 1e-4


def _vmax(v):
    a = v.detach().double().abs()
    a = a[torch.isfinite(a)]
    return max(1.0, float(a.max())) if a.numel() else 1.0


def _np64(x):
    """x (a tensor of any dtype, bfloat16 included, or an array) as float64 numpy, exactly."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, np.float64)


def _cmp(name, got, want, tol, rows=None, *, relative=False):
    got = _np64(got)
    want = _np64(want)
    if rows is not None:  # query rows are axis 2 of O (B,H,Lq,Ev) and of LSE (B,H,Lq)
        got, want = got[:, :, rows], want[:, :, rows]
    same_inf = (np.isinf(got) & np.isinf(want) & (np.sign(got) == np.sign(want))) | (np.isnan(got) & np.isnan(want))
    nan = int((np.isnan(got) & ~np.isnan(want)).sum())
    inf = int((np.isinf(got) & ~same_inf).sum())
    with np.errstate(invalid="ignore"):
        err = np.where(same_inf, 0.0, np.abs(got - want) / (np.maximum(1.0, np.abs(want)) if relative else 1.0))
    err = np.where(np.isnan(err), np.inf, err)
    worst = float(err.max()) if err.size else 0.0
    if nan or inf or worst > tol:
        idx = np.unravel_index(int(np.argmax(err)), err.shape)
        return f"{name}: {nan} NaN, {inf} wrong inf, max |err| {worst:.3g} at {tuple(int(i) for i in idx)} (tol {tol:g})"
    return None


def deviation(impl, trig) -> str | None:
    kind = trig["kind"]
    q, k, v = trig["qkv"]
    opts = dict(trig.get("opts", {}))
    tile = dict(trig.get("tile", {}))
    tol = TOL[q.dtype] * _vmax(v)
    if kind == "forward":
        o, lse = impl.forward(q, k, v, return_lse=True, **opts, **tile)
        ro, rl = forward_fp64(q, k, v, **opts)
        rows = trig.get("rows")
        return _cmp("O", o, ro, tol, rows) or _cmp("LSE", lse, rl, LSE_TOL, rows, relative=True)
    if kind == "sdpa":
        o = impl.sdpa(q, k, v, **opts)
        ro, _ = forward_fp64(q, k, v, causal=bool(opts.get("is_causal")), attn_mask=opts.get("attn_mask"))
        return _cmp("O", o, ro, tol)
    if kind == "backward":
        qg, kg, vg = (t.detach().clone().requires_grad_() for t in (q, k, v))
        do = torch.randn(q.shape[:-1] + (v.shape[-1],), generator=torch.Generator().manual_seed(1)).to(q.dtype)
        impl.forward(qg, kg, vg, **opts, **tile).backward(do)
        ref = backward_fp64(q, k, v, do, **opts)
        for name, g, r in zip(("dq", "dk", "dv"), (qg.grad, kg.grad, vg.grad), ref):
            bad = _cmp(name, g, r, GRAD_TOL)
            if bad:
                return bad
        return None
    if kind == "decode":
        o, lse = impl.decode(q, k, v, return_lse=True, **opts)
        seqlens = opts.get("seqlens")
        table = opts.get("block_table")
        for b in range(q.shape[0]):
            if table is None:
                kb, vb = k[b:b + 1], v[b:b + 1]
            else:  # (pages, Hkv, page, E) -> (1, Hkv, pages*page, E) through the table
                kb = k[table[b]].permute(1, 0, 2, 3).reshape(1, k.shape[1], -1, k.shape[-1])
                vb = v[table[b]].permute(1, 0, 2, 3).reshape(1, v.shape[1], -1, v.shape[-1])
            n = kb.shape[2] if seqlens is None else int(seqlens[b])
            ro, rl = forward_fp64(q[b:b + 1], kb[:, :, :n], vb[:, :, :n],
                                  causal="bottom_right" if opts.get("causal", True) else False,
                                  alignment="bottom_right", window=opts.get("window"),
                                  scale=opts.get("scale"), softcap=opts.get("softcap"))
            bad = _cmp(f"O[batch {b}]", o[b:b + 1], ro, tol) or _cmp(f"LSE[batch {b}]", lse[b:b + 1], rl, LSE_TOL, relative=True)
            if bad:
                return bad
        return None
    if kind == "repeat":
        a = impl.forward(q, k, v, **opts, **tile)
        b = impl.forward(q, k, v, **opts, **tile)
        return None if torch.equal(a, b) else f"two identical calls differ: max |diff| {(a - b).abs().max().item():.3g}"
    if kind == "batch":
        whole = impl.forward(q, k, v, **opts, **tile)[:1]
        alone = impl.forward(q[:1], k[:1], v[:1], **opts, **tile)
        return None if torch.equal(whole, alone) else (
            f"row batch 0 alone vs in a batch of {q.shape[0]} differ: max |diff| {(whole - alone).abs().max().item():.3g}")
    if kind == "reject":
        try:
            impl.forward(q, k, v, **opts, **tile)
        except ValueError:
            return None
        return f"accepted invalid options {opts} without ValueError"
    raise ValueError(f"unknown trigger kind {kind!r}")


def bound_ratio(impl, trig) -> float:
    """max over O of |O - exact| / (bound + radius) on a "forward" trigger (see the module docstring)."""
    from flashproof.properties import oracle
    from flashproof.properties.strategies import Inputs

    if trig["kind"] != "forward":
        raise ValueError(f"bound_ratio needs a forward trigger, got {trig['kind']!r}")
    q, k, v = trig["qkv"]
    opts = dict(trig.get("opts", {}))
    tile = dict(trig.get("tile", {}))
    o = impl.forward(q, k, v, **opts, **tile)
    inp = Inputs(q=q, k=k, v=v, **opts)
    block_n = tile.get("block_n", impl.block_n)
    o_b, l_b = oracle.bound(inp, accumulator="fp32", c_exp=1, n_tiles=max(1, -(-k.shape[2] // block_n)))
    ex = oracle.exact(inp, need_o=o_b, need_lse=l_b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.abs(oracle.to_np(o) - ex.o) / (o_b + ex.o_rad)
    return float(np.nanmax(np.where(np.isnan(r), np.inf, r)))

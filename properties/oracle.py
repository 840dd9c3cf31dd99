"""The judge: exact references, error bounds, the FlashAttention criterion and failure messages.

- Exact values: ``flashproof.reference.forward_certified`` (arb balls: |exact - mid| <= rad), or
  ``forward_fp64`` where it is proven accurate enough: its own error is bounded by the running
  bound evaluated at float64 precision, and it is used only where that radius is below
  FP64_RADIUS_SHARE of the target's bound (otherwise the certified reference runs).
- Bounds: ``flashproof.proofs.running_forward_bound`` (theorem 6) and ``running_backward_bound``
  (theorem 4b), at the target's declared precision; no other bound exists. A row with no finite
  bound raises ``proofs.Unbounded`` (rows and reason), except where the exact value is not finite.
- The FlashAttention criterion: per (b, h), max |target - exact| <= 2 * max |naive - exact| +
  eps, with the naive same-precision baseline ``reference.forward_naive``.

Failures raise :class:`Violation` (an AssertionError) whose message names the tensor, lists
the worst indices, and counts NaN and inf separately.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flashproof import spec

__all__ = [
    "Violation", "Exact", "exact", "bound", "backward_bound", "bound_source", "precision", "naive_error",
    "REFERENCE_C_EXP",
    "to_np", "assert_within", "assert_bitwise", "assert_fa_criterion", "assert_finite",
    "fmt_idx", "judge_rows", "take_rows", "allowed_mask", "empty_rows", "ARB_WORK", "fa_eps",
]

#: Above this many (b, h, i, j) row-key pairs times (E + Ev) the arb reference certifies a sample
#: of the rows only (the others get an infinite radius: no claim but finiteness). Measured: arb
#: costs ~0.4 us per pair and head-dim entry at 96 bits (2 cores), so this caps one certified
#: reference near 2 s; the ci profile's largest problem (8 x 40 x 40 x 192) stays below it.
ARB_WORK = 1 << 22
#: The radius is always added to the tolerance (the judge stays rigorous); this share only decides when
#: the fp64 path is tight enough that adding it loosens the judge by at most 1/64 (else arb runs).
FP64_RADIUS_SHARE = 1 / 64
_WORST = 5


class Violation(AssertionError):
    """The target violated a property; the message says where and by how much."""


def to_np(x) -> np.ndarray:
    """A tensor (any dtype/device) or array as float64 numpy, exactly."""
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    import torch

    return x.detach().to("cpu", torch.float64).numpy()


# ----------------------------------------------------------------------------- bounds
#: exp/log error of numpy's float64 libm in ulps, for the float64 references' own radius: glibc
#: documents <= 1 ulp for exp and log on x86_64 (libm-test-ulps); 4 covers other libms' documented
#: maxima (the bound's c_exp is in units of u, so c_exp = 4 allows 8 u relative).
REFERENCE_C_EXP = 4.0


def bound_source() -> str:
    """Where every bound comes from (reports name it): theorems 6 and 4b's executable bounds."""
    return "proofs"


def precision(dtype: str, *, accumulator="fp32", c_exp=None, toward_zero=False):
    """The error model's Precision (``proofs.precision_for``); ``toward_zero``: the storage roundings
    truncate, whose unit roundoff is the format's eps = 2^(1-p) (round to nearest: u = 2^-p)."""
    import dataclasses

    from flashproof.proofs import precision_for

    kw = {} if c_exp is None else {"c_exp": c_exp}
    p = precision_for(dtype, accumulator=accumulator, **kw)
    return dataclasses.replace(p, u_in=spec.FORMATS[spec.dtype_name(dtype)].eps) if toward_zero else p


def bound(inputs, *, accumulator="fp32", c_exp=None, n_tiles=None, dtype=None, toward_zero=False, lse_combine=False,
          on_unbounded="raise"):
    """(o_bound, lse_bound) for a correct kernel of the target's precision on ``inputs``:
    ``proofs.running_forward_bound``, nothing else. Rows with no finite bound (a kernel of the model
    may overflow there) raise ``proofs.Unbounded`` naming the rows and the reason (``on_unbounded=
    "inf"``: inf there instead); elements whose exact value is not finite (NaN/inf in an allowed
    input) are NaN: no claim on the bound, the judge checks NaN propagation there."""
    from flashproof.proofs import running_forward_bound

    name = dtype or inputs.dtype_name
    prec = precision(name, accumulator=accumulator, c_exp=c_exp, toward_zero=toward_zero)
    with np.errstate(all="ignore"):
        o_b, l_b = running_forward_bound(inputs.q, inputs.k, inputs.v, precision=prec, n_tiles=n_tiles,
                                         lse_combine=lse_combine, on_unbounded=on_unbounded, **inputs.opts())
    return np.asarray(o_b, dtype=np.float64), np.asarray(l_b, dtype=np.float64)


def backward_bound(inputs, do, *, accumulator="fp32", c_exp=None, n_tiles=None, dtype=None, toward_zero=False,
                   dlse=None, on_unbounded="raise"):
    """(dq, dk, dv) bounds for a correct FlashAttention-2 backward of the target's precision:
    ``proofs.running_backward_bound`` (theorem 4b), the forward's O and LSE errors from theorem 6 at the
    same precision; Unbounded / NaN as :func:`bound`."""
    from flashproof.proofs import running_backward_bound

    name = dtype or inputs.dtype_name
    prec = precision(name, accumulator=accumulator, c_exp=c_exp, toward_zero=toward_zero)
    with np.errstate(all="ignore"):
        out = running_backward_bound(inputs.q, inputs.k, inputs.v, do, precision=prec, n_tiles=n_tiles, dlse=dlse,
                                     on_unbounded=on_unbounded, **inputs.opts())
    return tuple(np.asarray(x, dtype=np.float64) for x in out)


# ----------------------------------------------------------------------------- exact reference
@dataclass
class Exact:
    o: np.ndarray
    o_rad: np.ndarray
    lse: np.ndarray
    lse_rad: np.ndarray
    source: str


def exact(inputs, *, need_o=None, need_lse=None) -> Exact:
    """Exact O and LSE with radii. ``need_*`` (bound arrays) decide whether fp64 is enough.

    Where the arb reference is needed on more than ARB_WORK row-key pairs x (E + Ev), it certifies an
    evenly spread sample of the query rows (the same in every head) and the other rows keep the
    fp64 value with an infinite radius: no claim on them beyond finiteness.
    """
    from flashproof import reference

    opts = inputs.opts()
    o, lse = reference.forward_fp64(inputs.q, inputs.k, inputs.v, **opts)
    # forward_fp64 is a correct kernel at float64 precision: the running bound bounds its error
    # (where it has none, e.g. a non-finite input, the certified reference runs instead)
    r_o, r_l = bound(inputs, accumulator="fp64", dtype="float64", c_exp=REFERENCE_C_EXP, on_unbounded="inf")
    ok = bool(np.all(np.isfinite(r_o)) and np.all(np.isfinite(r_l)))
    if ok and need_o is not None:
        ok = bool(np.all(r_o <= np.where(np.isfinite(need_o), need_o, np.inf) * FP64_RADIUS_SHARE))
    if ok and need_lse is not None:
        ok = bool(np.all(r_l <= np.where(np.isfinite(need_lse), need_lse, np.inf) * FP64_RADIUS_SHARE))
    if ok:
        return Exact(o, r_o, lse, r_l, "fp64 (radius from the bound at float64 precision)")
    # arb needs ~log2(max |logit|) extra bits to keep exp's balls tight at huge logits
    top = float(np.nanmax(np.abs(np.where(np.isfinite(lse), lse, 0.0)), initial=0.0))
    prec = 96 + 2 * max(0, int(math.ceil(math.log2(top + 1.0))) - 8)
    b, h, lq = inputs.q.shape[0], inputs.q.shape[1], inputs.q.shape[2]
    lk = inputs.k.shape[2]
    rows = judge_rows(lq, lk, b * h, pairs=ARB_WORK // (inputs.q.shape[-1] + inputs.v.shape[-1]))
    if rows is None:
        c = reference.forward_certified(inputs.q, inputs.k, inputs.v, prec=prec, **opts)
        return Exact(c.o_mid, c.o_rad, c.lse_mid, c.lse_rad, f"certified (arb, {prec} bits)")
    sub = take_rows(inputs, rows)
    c = reference.forward_certified(sub.q, sub.k, sub.v, prec=prec, **sub.opts())
    # other rows: no claim (infinite radius around a finite mid); rows with no allowed key stay exact
    empty = ~allowed_mask(inputs).any(axis=-1)
    o_mid = np.where(np.isfinite(o), o, 0.0)
    o_rad = np.where(empty[..., None], 0.0, np.inf) + np.zeros_like(o_mid)
    lse_mid = np.where(empty, -np.inf, np.where(np.isfinite(lse), lse, 0.0))
    lse_rad = np.where(empty, 0.0, np.inf)
    o_mid[:, :, rows], o_rad[:, :, rows] = c.o_mid, c.o_rad
    lse_mid[:, :, rows], lse_rad[:, :, rows] = c.lse_mid, c.lse_rad
    return Exact(o_mid, o_rad, lse_mid, lse_rad,
                 f"certified (arb, {prec} bits) on {len(rows)} of {lq} rows per head; no claim on the others")


# ----------------------------------------------------------------------------- row samples
def judge_rows(lq, lk, heads, *, pairs, seed=0, block=None):
    """Query rows to judge (a sorted int array), or None for all: at most ``pairs`` row-key pairs
    over ``heads`` (b, h) slices, at least 2 rows. The first and last rows, the rows around every
    ``block``-th row (tile edges) and evenly spread rows come first, then seeded random ones."""
    if pairs is None or heads * lq * max(lk, 1) <= pairs or lq <= 2:
        return None
    n = max(2, pairs // (heads * max(lk, 1)))
    if n >= lq:
        return None
    rng = np.random.default_rng(seed)
    first = [0, lq - 1]
    if block:
        edges = [x for t in range(block, lq, block) for x in (t - 1, t)]
        first += [edges[i] for i in sorted(rng.choice(len(edges), size=min(len(edges), n // 2), replace=False))] \
            if edges else []
    first += np.linspace(0, lq - 1, max(2, n // 4)).round().astype(int).tolist()
    chosen = list(dict.fromkeys(int(x) for x in first))[:n]
    rest = np.setdiff1d(np.arange(lq), chosen)
    if len(chosen) < n and len(rest):
        chosen += rng.choice(rest, size=min(len(rest), n - len(chosen)), replace=False).tolist()
    return np.array(sorted(chosen), dtype=np.int64)


def allowed_mask(inputs):
    """(B, H, Lq, Lk) bool: the pairs the structural mask and attn_mask allow (no logits computed)."""
    import torch

    from flashproof import spec

    b, h, lq = inputs.q.shape[0], inputs.q.shape[1], inputs.q.shape[2]
    lk = inputs.k.shape[2]
    m = spec.make_mask(causal=inputs.causal, window=inputs.window, alignment=inputs.alignment)
    allowed = np.broadcast_to(m.matrix(lq, lk), (b, h, lq, lk))
    am = inputs.attn_mask
    if am is not None:
        a = am.detach().cpu() if isinstance(am, torch.Tensor) else torch.from_numpy(np.asarray(am))
        keep = a.numpy() if a.dtype == torch.bool else ~np.isneginf(a.to(torch.float64).numpy())
        allowed = allowed & np.broadcast_to(keep, (b, h, lq, lk))
    return np.array(allowed, dtype=bool)


def empty_rows(inputs):
    """(B, H, Lq) bool: the query rows with no allowed key (spec: O = 0, LSE = -inf there)."""
    return ~allowed_mask(inputs).any(axis=-1)


def take_rows(inputs, rows):
    """The problem restricted to query rows ``rows`` of every head: q's rows, and the mask of those
    rows (causal, window and attn_mask together) as an explicit attn_mask. Each row's exact value
    and proofs bound depend on that row alone, so they are those of the full problem's rows."""
    import torch

    from flashproof import spec

    if rows is None:
        return inputs
    q, k = inputs.q, inputs.k
    lq, lk = q.shape[2], k.shape[2]
    idx = torch.as_tensor(np.asarray(rows), dtype=torch.long, device=q.device)
    m = spec.make_mask(causal=inputs.causal, window=inputs.window, alignment=inputs.alignment)
    struct = torch.from_numpy(np.ascontiguousarray(m.matrix(lq, lk)[np.asarray(rows)])).to(q.device)
    am = inputs.attn_mask
    if am is None:
        mask = struct
    else:
        a = am if am.dim() >= 2 else am.expand(lq, lk)
        a = a.index_select(-2, idx.to(a.device)) if a.shape[-2] == lq else a
        mask = (a & struct) if a.dtype == torch.bool else a.masked_fill(~struct, float("-inf"))
    return inputs.with_(q=q.index_select(2, idx), attn_mask=mask, causal=False, alignment=None, window=None)


def naive_error(inputs, ex: Exact):
    """Per (b, h): max |naive - exact| over O (inf where the naive baseline is not finite)."""
    from flashproof import reference

    o_n, _ = reference.forward_naive(inputs.q, inputs.k, inputs.v, **inputs.opts())
    err = np.abs(to_np(o_n) - ex.o)
    err = np.where(np.isfinite(ex.o), err, 0.0)
    err = np.where(np.isnan(err), np.inf, err)
    return err.max(axis=(-1, -2), initial=0.0)


# ----------------------------------------------------------------------------- messages
def fmt_idx(idx) -> str:
    return "(" + ", ".join(str(int(i)) for i in idx) + ")"


def _nonfinite_report(name, got, want_finite):
    nan = np.isnan(got) & want_finite
    pinf = np.isposinf(got) & want_finite
    ninf = np.isneginf(got) & want_finite
    out = []
    if nan.any():
        out.append(f"  NaN: {int(nan.sum())} element(s) where the exact value is finite, first at "
                   + ", ".join(fmt_idx(i) for i in np.argwhere(nan)[:_WORST]))
    if pinf.any() or ninf.any():
        out.append(f"  inf: {int(pinf.sum())} +inf and {int(ninf.sum())} -inf where the exact value is finite, "
                   "first at " + ", ".join(fmt_idx(i) for i in np.argwhere(pinf | ninf)[:_WORST]))
    return out


def assert_within(name, got, want, tol, *, what="the error bound", context="", dims="(b, h, i, c)"):
    """|got - want| <= tol elementwise; want -inf (empty LSE) must be matched exactly.

    ``tol`` already includes the reference's own radius. Raises Violation naming ``name``.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), want.shape)
    if got.shape != want.shape:
        raise Violation(f"{name}: shape {got.shape}, expected {want.shape}{context}")
    fin = np.isfinite(want)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - want)
        bad_fin = fin & ~(err <= tol)  # NaN err counts as bad
    bad_inf = ~fin & ~(got == want) & ~(np.isnan(want) & np.isnan(got))
    if not (bad_fin.any() or bad_inf.any()):
        return
    lines = [f"{name} violates {what}{context}"]
    lines += _nonfinite_report(name, got, fin)
    if bad_inf.any():
        idx = np.argwhere(bad_inf)[:_WORST]
        lines.append(f"  {int(bad_inf.sum())} element(s) where the exact value is {want[tuple(idx[0])]:g} "
                     f"but got {', '.join(f'{got[tuple(i)]:g} at {fmt_idx(i)}' for i in idx)}")
    finite_bad = bad_fin & np.isfinite(got)
    if finite_bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(finite_bad, err / np.where(tol > 0, tol, np.finfo(float).tiny), -1.0)
        order = np.argsort(ratio, axis=None)[::-1][:_WORST]
        lines.append(f"  {int(finite_bad.sum())} of {want.size} element(s) exceed it; worst |err|/bound = "
                     f"{ratio.flat[order[0]]:.4g}; worst indices {dims}:")
        for flat in order:
            if ratio.flat[flat] < 0:
                break
            i = np.unravel_index(flat, want.shape)
            lines.append(f"    {fmt_idx(i)}: |err| {err[i]:.4g} > bound {tol[i]:.4g}   got {got[i]:.9g}  "
                         f"exact {want[i]:.9g}")
    raise Violation("\n".join(lines))


def assert_bitwise(name, got, want, *, context="", dims="(b, h, i, c)"):
    """Bitwise equality (NaN == NaN in the same place; +0 and -0 differ)."""
    import torch

    g = got.detach().cpu() if isinstance(got, torch.Tensor) else torch.from_numpy(np.asarray(got))
    w = want.detach().cpu() if isinstance(want, torch.Tensor) else torch.from_numpy(np.asarray(want))
    if g.shape != w.shape or g.dtype != w.dtype:
        raise Violation(f"{name}: got {tuple(g.shape)} {g.dtype}, expected {tuple(w.shape)} {w.dtype}{context}")
    gi, wi = _bits(g), _bits(w)
    diff = gi != wi
    if not bool(diff.any()):
        return
    gd, wd = g.to(torch.float64).numpy(), w.to(torch.float64).numpy()
    idx = np.argwhere(diff.numpy())
    lines = [f"{name} is not bitwise equal{context}: {len(idx)} of {w.numel()} element(s) differ"]
    lines += _nonfinite_report(name, gd, np.isfinite(wd))
    with np.errstate(invalid="ignore"):
        err = np.abs(gd - wd)
    order = sorted(idx.tolist(), key=lambda i: -(err[tuple(i)] if np.isfinite(err[tuple(i)]) else np.inf))[:_WORST]
    lines.append(f"  worst indices {dims}:")
    for i in order:
        lines.append(f"    {fmt_idx(i)}: got {gd[tuple(i)]!r}  expected {wd[tuple(i)]!r}")
    raise Violation("\n".join(lines))


def _bits(t):
    import torch

    if t.dtype in (torch.float16, torch.bfloat16):
        return t.contiguous().view(torch.int16)
    if t.dtype == torch.float32:
        return t.contiguous().view(torch.int32)
    if t.dtype == torch.float64:
        return t.contiguous().view(torch.int64)
    return t


def assert_finite(name, got, *, where=None, context=""):
    got = np.asarray(got, dtype=np.float64)
    bad = ~np.isfinite(got)
    if where is not None:
        bad &= where
    if bad.any():
        lines = [f"{name} is not finite{context}"]
        lines += _nonfinite_report(name, got, np.ones_like(bad) if where is None else where)
        raise Violation("\n".join(lines))


def assert_fa_criterion(name, got, ex: Exact, naive_err, eps, *, context=""):
    """Per (b, h): max |got - exact| <= 2 * naive_err + eps (+ the reference radius)."""
    got = np.asarray(got, dtype=np.float64)
    fin = np.isfinite(ex.o)
    with np.errstate(invalid="ignore"):
        err = np.where(fin, np.abs(got - ex.o), 0.0)
    err = np.where(np.isnan(err), np.inf, err)
    head_err = err.max(axis=(-1, -2), initial=0.0)
    rad = np.where(fin, ex.o_rad, 0.0).max(axis=(-1, -2), initial=0.0)
    allowed = 2.0 * naive_err + eps + rad
    bad = head_err > allowed
    if not bad.any():
        return
    lines = [f"{name} fails the FlashAttention criterion (max error per head <= 2 x the naive "
             f"same-precision baseline's + eps){context}"]
    for i in np.argwhere(bad)[:_WORST]:
        i = tuple(i)
        lines.append(f"    head (b, h) = {fmt_idx(i)}: max |err| {head_err[i]:.4g} > 2 x {naive_err[i]:.4g} "
                     f"+ eps {eps[i]:.4g}")
    raise Violation("\n".join(lines))


def fa_eps(inputs, ex: Exact, *, u_acc, c_exp, n_tiles, u_in=None):
    """The FA criterion's epsilon per (b, h), derived: a correct kernel rounds its output to the
    storage dtype (<= u_in max|o|) and P before P@V (<= u_in max|v|), which a lucky naive baseline
    may escape; each of its t online rescales multiplies acc and l separately by the same alpha,
    so only those two roundings remain (2 u_acc (max|v| + max|o|) per rescale, t + 1 with the final
    division); a P rounded in the subnormal range loses up to eta each."""
    u_in = spec.FORMATS[inputs.dtype_name].u if u_in is None else u_in
    v = np.abs(to_np(inputs.v))
    rep = inputs.q.shape[1] // inputs.k.shape[1]
    vmax = np.repeat(v.max(axis=(-1, -2), initial=0.0), rep, axis=1)
    omax = np.where(np.isfinite(ex.o), np.abs(ex.o), 0.0).max(axis=(-1, -2), initial=0.0)
    t = n_tiles if n_tiles else inputs.k.shape[2]
    # P rounded to fp16 underflows by half its subnormal spacing; elsewhere an fp32 P flushes below tiny
    eta = spec.FORMATS["float16"].subnormal / 2 if inputs.dtype_name == "float16" else spec.FORMATS["float32"].tiny
    return (u_in * (vmax + omax) + 2 * (t + 1) * u_acc * (vmax + omax) + inputs.k.shape[2] * eta * vmax
            + _logit_rounding(inputs, rep, u_acc, c_exp) * (vmax + omax))


def _logit_rounding(inputs, rep, u_acc, c_exp):
    """Relative weight error, per (b, h), that a correct kernel's exponent may carry and a naive
    baseline may escape: each logit rounded at its own magnitude |s| twice (the scale * log2 e
    fold, then the product; proofs/fp_error.py's logit term) and exp's own 2 c_exp u. Weights
    off by a factor (1 + d) move O by at most d (max|v| + max|o|). |s| <= |scale| ||q_i|| ||k_j||
    (Cauchy-Schwarz), capped by a softcap, plus the largest finite additive mask entry."""
    q, k = np.abs(to_np(inputs.q)), np.abs(to_np(inputs.k))
    with np.errstate(over="ignore", invalid="ignore"):
        qn = np.sqrt(np.nan_to_num((q * q).sum(-1), posinf=np.inf)).max(axis=-1, initial=0.0)
        kn = np.repeat(np.sqrt(np.nan_to_num((k * k).sum(-1), posinf=np.inf)).max(axis=-1, initial=0.0), rep, axis=1)
    scale = abs(spec.resolve_scale(inputs.scale, inputs.q.shape[-1]))
    smax = scale * qn * kn
    cap = spec.normalize_softcap(inputs.softcap)
    if cap is not None:
        smax = np.minimum(smax, cap)
    if inputs.attn_mask is not None and not str(getattr(inputs.attn_mask, "dtype", "")).endswith("bool"):
        m = np.abs(to_np(inputs.attn_mask))
        smax = smax + (np.where(np.isfinite(m), m, 0.0).max(initial=0.0) if m.size else 0.0)
    return np.nan_to_num(2.0 * u_acc * smax + 2.0 * c_exp * u_acc, nan=np.inf, posinf=np.inf)

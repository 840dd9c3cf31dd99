"""Tensors of a problem: :func:`build` turns a :class:`cases.Problem` into :class:`Inputs`
deterministically (its seed), and the logit regime it claims is measured and checked here.

The logit regimes are built through q and k (an offset channel, a pattern channel and noise
channels) so the logits really reach the regime after rounding to the input dtype:
:func:`regime_report` measures them exactly and :func:`check_regime` verifies the claim.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flashproof import spec

from .cases import Problem

__all__ = ["Inputs", "build", "logits_exact", "regime_report", "check_regime", "max_abs_logit", "torch_dtype",
           "tensor_like"]


def torch_dtype(name):
    import torch

    return getattr(torch, name)


def tensor_like(t, arr):
    """A tensor like ``t`` (dtype, device) holding the float64 array ``arr`` (exact when ``arr``'s
    values are representable in t's dtype)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr)).to(t.dtype).to(t.device)


def max_abs_logit(dtype: str, scale: float, *, accumulator="fp32") -> float:
    """The largest |logit| a q.k in ``dtype`` can reach while the accumulator cannot overflow
    (``accumulator``: any declared name; "same" accumulates in ``dtype``, every other name holds at
    least fp32's range)."""
    elem = spec.FORMATS[dtype].max / 4
    acc = spec.FORMATS["float16" if (accumulator == "same" and dtype == "float16") else "float32"].max
    unscaled = min(elem * elem, acc / 64)
    return unscaled * scale


# ----------------------------------------------------------------------------- building tensors
@dataclass
class Inputs:
    """Tensors of one problem, with spec's options; ``opts()`` feeds targets and references."""

    q: Any
    k: Any
    v: Any
    attn_mask: Any = None
    causal: Any = False
    alignment: Any = None
    window: Any = None
    scale: Any = None
    softcap: Any = None
    problem: Any = None

    def opts(self) -> dict:
        return dict(attn_mask=self.attn_mask, causal=self.causal, alignment=self.alignment,
                    window=self.window, scale=self.scale, softcap=self.softcap)

    def with_(self, **kw) -> "Inputs":
        return replace(self, **kw)

    @property
    def dtype_name(self) -> str:
        return spec.dtype_name(self.q.dtype)


def _round(x: np.ndarray, dtype: str) -> np.ndarray:
    """x rounded to ``dtype`` (spec.round_to: as torch's conversion rounds it), as float64."""
    return spec.round_to(x, dtype).astype(np.float64)


def _pow2_below(x: float) -> float:
    return 2.0 ** math.floor(math.log2(x)) if x > 0 else 1.0


def _qk(problem: Problem, rng: np.random.Generator):
    """q (B,H,Lq,E), k (B,Hkv,Lk,E) float64 arrays, exactly representable in the dtype."""
    sh, dt, reg = problem.shape, problem.dtype, problem.regime
    b, h, hkv, lq, lk, e = sh.batch, sh.heads, sh.kv_heads, sh.lq, sh.lk, sh.e
    sc = problem.scale_value
    emax = spec.FORMATS[dt].max / 4
    q = rng.standard_normal((b, h, lq, e))
    k = rng.standard_normal((b, hkv, lk, e))
    name = reg.name
    if name == "standard" or (name == "ties"):
        t = reg.spread
        q *= t
    elif name == "large":
        # std of s = scale * a * b * sqrt(E): choose a = b
        ab = reg.spread / (sc * math.sqrt(e))
        a = min(math.sqrt(ab), emax / 8)
        q *= a
        k *= ab / a
    pat_ch = 1 if e >= 2 else None
    noise_from = 2 if name in ("very_negative", "rising", "spread", "sentinel") else None
    if noise_from is not None:
        # Channels >= 2 carry noise of logit std ~`noise` (0 for relative layouts).
        noise = {"very_negative": reg.spread, "rising": 0.1, "spread": 0.5, "sentinel": 0.0}[name]
        if name == "very_negative" and abs(reg.offset) * 2.0 ** -18 > noise:
            noise = 0.0  # unresolvable next to the offset in fp32: lay the variation out relatively
        ne = max(e - 2, 0)
        if ne and noise > 0:
            c = math.sqrt(noise / (sc * math.sqrt(ne)))
            q[..., 2:] *= c
            k[..., 2:] *= c
        else:
            q[..., 2:] = 0.0
            k[..., 2:] = 0.0
        q[..., :2] = 0.0
        k[..., :2] = 0.0
    if name in ("very_negative", "rising", "ties", "sentinel") and reg.offset != 0.0 and e >= 1:
        # Channel 0: q_i0 * k_j0 * scale = offset, k_j0 = beta a power of two (exact products).
        target = abs(reg.offset) / sc
        beta = _pow2_below(min(math.sqrt(target), emax))
        alpha = target / beta
        if alpha > emax:
            beta = _pow2_below(min(target / emax * 2, emax))
            alpha = target / beta
        q[..., 0] = -alpha if reg.offset < 0 else alpha
        k[..., 0] = beta
    if pat_ch is not None and name in ("very_negative", "rising", "spread", "sentinel"):
        if name == "rising":
            # s_ij += r * j: k_j1 = j * delta (integers times a power of two), q_i1 = r / (scale delta).
            r = reg.spread / max(lk - 1, 1)
            delta = 2.0 ** max(-4, math.ceil(math.log2(max(r / (sc * emax / 2), 2.0 ** -30))))
            q[..., 1] = r / (sc * delta)
            k[..., 1] = np.arange(lk) * delta
        elif name == "spread":
            # s_ij = -W * w_j, w_j in [0, 1]: q_i1 = alpha, k_j1 = -beta * w_j.
            w = rng.random((b, hkv, lk))
            target = reg.spread / sc
            beta = _pow2_below(min(math.sqrt(target), emax))
            q[..., 1] = target / beta
            k[..., 1] = -beta * w
        elif name in ("very_negative", "sentinel"):
            rel = reg.spread if name == "sentinel" else (2.0 ** -6 if not (noise > 0 and e > 2) else 0.0)
            if rel > 0:
                # Relative layout: logits = offset * (1 + rel * u_j), u_j in [-1, 1], in channel 1.
                target = abs(reg.offset) * rel / sc
                beta = _pow2_below(min(math.sqrt(target), emax))
                q[..., 1] = target / beta
                sign = np.where(np.arange(lk) % 2 == 0, 1.0, -1.0)  # both sides of the offset, always
                k[..., 1] = beta * rng.uniform(0.05, 1, (b, hkv, lk)) * sign
    if name == "ties":
        groups = max(1, min(3, lk))
        idx = rng.integers(0, groups, lk)
        k = k[:, :, idx, :]
    return _round(q, dt), _round(k, dt)


def _values(problem: Problem, rng):
    sh, dt = problem.shape, problem.dtype
    shape = (sh.batch, sh.kv_heads, sh.lk, sh.ev)
    kind = problem.values
    if kind == "normal":
        v = rng.standard_normal(shape)
    elif kind == "ones":
        v = np.ones(shape)
    elif kind == "onehot":
        v = np.zeros(shape)
        for j in range(sh.lk):
            v[:, :, j, j % sh.ev] = 1.0
    elif kind == "offset":
        v = 100.0 + rng.standard_normal(shape)
    else:  # large
        v = rng.standard_normal(shape) * min(1e3, spec.FORMATS[dt].max / 64)
    return _round(v, dt)


def _attn_mask(problem: Problem, rng):
    """(B,H,Lq,Lk) or (Lq,Lk) mask; empty rows have no allowed key at all."""
    ms, sh = problem.mask, problem.shape
    full = (sh.batch, sh.heads, sh.lq, sh.lk)
    shp = full if ms.full else (sh.lq, sh.lk)
    keep = rng.random(shp) < ms.density
    if ms.empty_rows:
        rows = rng.choice(sh.lq, size=min(ms.empty_rows, sh.lq), replace=False) if sh.lq else []
        keep[..., rows, :] = False
    if ms.attn_mask == "bool":
        return keep
    bias = rng.standard_normal(shp) * 2.0
    return np.where(keep, bias, -np.inf)


def build(problem: Problem, *, device="cpu") -> Inputs:
    """The tensors of ``problem`` (deterministic in ``problem.seed``) on ``device``."""
    import torch

    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a Problem, got {type(problem).__name__}")
    rng = np.random.default_rng(problem.seed)
    q, k = _qk(problem, rng)
    v = _values(problem, rng)
    dt = torch_dtype(problem.dtype)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dt).to(device)  # noqa: E731
    ms = problem.mask
    am = None
    if ms.attn_mask is not None:
        m = _attn_mask(problem, rng)
        am = torch.from_numpy(m).to(device) if m.dtype == np.bool_ else t(m)
    causal = ms.causal if ms.causal else False
    return Inputs(q=t(q), k=t(k), v=t(v), attn_mask=am, causal=causal, alignment=None, window=ms.window,
                  scale=problem.scale, softcap=problem.softcap, problem=problem)


# ----------------------------------------------------------------------------- regime checks
def logits_exact(inputs: Inputs):
    """(s (B,H,Lq,Lk) float64 scaled logits, allowed bool) of the built problem.

    q and k are exact in float64; the dot products are exact here whenever E * 2^-53 relative
    is below the regime claims checked with them (always, for the dims the suite draws).
    """
    import torch

    q = inputs.q.detach().to("cpu", torch.float64).numpy()
    k = inputs.k.detach().to("cpu", torch.float64).numpy()
    b, h, lq, e = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    kk = np.repeat(k, h // hkv, axis=1)
    s = spec.resolve_scale(inputs.scale, e) * np.einsum("bhie,bhje->bhij", q, kk)
    if inputs.softcap is not None and spec.normalize_softcap(inputs.softcap) is not None:
        c = float(inputs.softcap)
        s = c * np.tanh(s / c)  # softcap on the scaled logits, before any bias or mask (spec)
    mask = spec.make_mask(causal=inputs.causal, window=inputs.window, alignment=inputs.alignment)
    allowed = np.broadcast_to(mask.matrix(lq, lk), s.shape).copy()
    if inputs.attn_mask is not None:
        am = inputs.attn_mask.detach().cpu()
        if am.dtype == torch.bool:
            allowed &= np.broadcast_to(am.numpy(), s.shape)
        else:
            a = np.broadcast_to(am.to(torch.float64).numpy(), s.shape)
            allowed &= ~np.isneginf(a)
            s = s + np.where(np.isneginf(a), 0.0, a)
    return s, allowed


def regime_report(inputs: Inputs) -> dict:
    """What the built logits actually are: per-row max, min and spread over allowed keys."""
    s, allowed = logits_exact(inputs)
    with np.errstate(invalid="ignore"):
        smax = np.where(allowed, s, -np.inf).max(axis=-1, initial=-np.inf)
        smin = np.where(allowed, s, np.inf).min(axis=-1, initial=np.inf)
    rows = allowed.any(axis=-1)
    return {"max": smax, "min": smin, "rows": rows, "logits": s, "allowed": allowed}


def check_regime(inputs: Inputs) -> None:
    """Raise AssertionError unless the built logits are in the regime the problem claims."""
    p = inputs.problem
    reg = p.regime
    r = regime_report(inputs)
    rows = r["rows"]
    if not rows.any():
        return
    smax, smin, s, allowed = r["max"][rows], r["min"][rows], r["logits"], r["allowed"]
    name = reg.name
    if name in ("very_negative", "sentinel") and reg.offset != 0.0:
        c = reg.offset
        lo, hi = c * 1.05, c * 0.95  # offset < 0: [1.05 c, 0.95 c]
        noise = 8 * reg.spread + 1e-9 if name == "very_negative" else 0.0
        assert (smax <= hi + noise).all() and (smin >= lo - noise).all(), (
            f"{name}: logits [{smin.min():g}, {smax.max():g}] not around {c:g}")
        assert (smax < -1e3).all(), f"{name}: a row's max logit {smax.max():g} is not far below 0"
        if name == "sentinel" and p.shape.e >= 2 and p.shape.lk >= 2:
            # both sides of the sentinel occur somewhere
            vals = s[allowed]
            assert (vals < c).any() and (vals > c).any(), f"sentinel {c:g}: logits not on both sides"
    elif name == "large" and p.shape.e >= 2:
        top = np.abs(np.where(allowed, s, 0.0)).max()
        assert top >= reg.spread / 8, f"large: max |logit| {top:g} < spread/8 = {reg.spread / 8:g}"
    elif name == "spread" and p.shape.e >= 2 and p.shape.lk >= 8:
        width = (smax - smin).max()
        assert width >= reg.spread / 4, f"spread: widest row {width:g} < W/4 = {reg.spread / 4:g}"
    elif name == "rising" and p.shape.e >= 2 and p.shape.lk >= 2:
        # the full row (no mask) rises key by key: every tile has a new running max
        sr = s[..., :]
        step = np.diff(sr, axis=-1)
        expect = reg.spread / max(p.shape.lk - 1, 1)
        assert (step > expect * 0.5 - 0.5).mean() > 0.9, "rising: logits do not rise along the keys"
    elif name == "ties" and p.shape.lk >= 4:
        # some row has two allowed keys with exactly equal logits
        found = False
        for idx in np.ndindex(s.shape[:-1]):
            vals = s[idx][allowed[idx]]
            if len(vals) != len(set(vals.tolist())):
                found = True
                break
        assert found or not allowed.any(), "ties: no exact tie among allowed keys"

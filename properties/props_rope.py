"""Rotary position embeddings (theorem 5's executable counterpart): queries and keys rotated by
spec.apply_rope (both pairings), and a KV cache re-encoded by spec.reposition_keys, through any target."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from flashproof import spec
from flashproof.proofs.bounds_eval import RND
from flashproof.proofs.fp_model import gam
from flashproof.proofs.rope import MPMATH_TRIG, attention_shift_bound, reencoding_error_bound, rope_error_bound

from . import oracle
from .cases import Case, Shape
from .gen import case_strategy, corner, prop, sample
from .inputs import build, tensor_like
from .oracle import Violation, to_np
from .registry import skip

__all__ = []

#: RoPE bases: the original (RoFormer, LLaMA 1/2) and LLaMA 3's
BASES = (10000.0, 500000.0)
_U64 = spec.FORMATS["float64"].u
#: digits of the mpmath reference rotation (float64 needs 17; the margin keeps its own error negligible)
_MP_DIGITS = 40


def _even_dims(ctx):
    return tuple(e for e in ctx.limits.head_dims if e >= 2 and e % 2 == 0)


def _rope_strategy(ctx):
    dims = _even_dims(ctx)
    if not dims:
        skip("RoPE needs an even head dim, and the profile's head dims for this target have none")
    extra = st.tuples(st.sampled_from(spec.ROPE_STYLES), st.sampled_from(BASES), st.integers(0, 10 ** 4),
                      st.integers(-10 ** 4, 10 ** 5)).map(
        lambda x: (("style", x[0]), ("base", x[1]), ("start", x[2]), ("delta", x[3])))
    return case_strategy(ctx, regimes=("standard", "large", "ties"), e=st.sampled_from(dims), extra=extra)


def _rope_corners(ctx):
    dims = _even_dims(ctx)
    if not dims:
        return []
    e = min((d for d in dims if d >= 16), default=dims[-1])
    return [corner(ctx, shape=Shape(1, 2, 1 if ctx.target.gqa else 2, 7, 19, e, e), seed=1500 + i,
                   extra=(("style", style), ("base", BASES[i]), ("start", 37), ("delta", 4093)))
            for i, style in enumerate(spec.ROPE_STYLES)]


def _positions(lq, lk, start):
    """Keys at start .. start + Lk - 1, queries at the last Lq of those positions (a prefill's layout)."""
    pk = start + np.arange(lk, dtype=np.float64)
    pq = start + lk - lq + np.arange(lq, dtype=np.float64)
    return pq, pk


def _check_spec_rotation(x64, pos, style, thetas, name):
    """spec.apply_rope in float64 against the same code on mpmath numbers at 40 digits, on the first and
    last rows of the first head: within proofs.rope.rope_error_bound."""
    import mpmath

    got = spec.apply_rope(x64, pos, style=style, thetas=thetas)
    bound = rope_error_bound(x64, pos, style=style, thetas=thetas)
    rows = sorted({0, x64.shape[2] - 1})
    with mpmath.workdps(_MP_DIGITS):
        th = [mpmath.mpf(float(t)) for t in thetas]
        for i in rows:
            ref = [float(c) for c in spec.apply_rope([mpmath.mpf(float(c)) for c in x64[0, 0, i]], mpmath.mpf(pos[i]),
                                                     style=style, thetas=th, ops=MPMATH_TRIG)]
            oracle.assert_within(f"spec.apply_rope({name}) row {i} (float64)", got[0, 0, i], np.array(ref),
                                 bound[0, 0, i], what="proofs.rope.rope_error_bound", dims="(e,)")
    return got


def _row_spread(v, allowed, rep):
    """W (B, H, Lq, Ev): max - min of each value column over the row's allowed keys (0 for an empty row)."""
    vv = np.repeat(v, rep, axis=1)[:, :, None]                     # (B, H, 1, Lk, Ev)
    ok = allowed[..., None]
    hi = np.where(ok, vv, -np.inf).max(axis=-2)
    lo = np.where(ok, vv, np.inf).min(axis=-2)
    return np.where(np.isfinite(hi) & np.isfinite(lo), hi - lo, 0.0)


@prop("rope_reencoded_cache_matches",
      asserts="for q, k rotated by spec.apply_rope (interleaved and half pairs, bases 1e4 and 5e5, positions up to "
              "1e5): spec's float64 rotation is within rope_error_bound of a 40-digit one, the target on the "
              "encoded inputs is within the running bound of the exact attention, and keys cached at n and "
              "re-encoded by spec.reposition_keys to n + Delta give, with queries at m + Delta, the attention of "
              "keys encoded at n + Delta directly, within the derived bound",
      classes=(6, 18), strategy=_rope_strategy, corners=_rope_corners, examples=0.5,
      bound="proofs.rope.rope_error_bound; running_forward_bound; re-encoded keys: proofs.rope.reencoding_error_bound "
            "+ storage rounding, through attention by proofs.rope.attention_shift_bound, + the running bound")
def rope_reencoded_cache_matches(ctx, case):
    inp = build(case.problem, device=ctx.device)
    style, base, start, delta = case.get("style"), case.get("base"), case.get("start"), case.get("delta")
    q64, k64, v64 = to_np(inp.q), to_np(inp.k), to_np(inp.v)
    lq, lk, e = q64.shape[2], k64.shape[2], q64.shape[3]
    thetas = spec.rope_frequencies(e, base)
    pq, pk = _positions(lq, lk, start)
    tile = case.tile_dict
    where = f"RoPE {style}, base {base:g}"

    # 1. the rotation itself, and the target on the rotated inputs
    qr64 = _check_spec_rotation(q64, pq, style, thetas, "q") if lq else spec.apply_rope(q64, pq, style=style, thetas=thetas)
    kr64 = _check_spec_rotation(k64, pk, style, thetas, "k") if lk else spec.apply_rope(k64, pk, style=style, thetas=thetas)
    enc = inp.with_(q=tensor_like(inp.q, qr64), k=tensor_like(inp.k, kr64))
    o, lse = ctx.call(enc, tile=tile)
    enc_s, o, lse = sample(ctx, enc, o, lse, tile=tile)
    ctx.judge(enc_s, o, lse, tile=tile, label=f"{where}, positions {start}..")

    # 2. the cache (float64 keys at n) re-encoded to n + delta vs keys encoded at n + delta
    moved64 = spec.reposition_keys(kr64, delta, style=style, thetas=thetas)
    fresh64 = spec.apply_rope(k64, pk + delta, style=style, thetas=thetas)
    k_moved, k_fresh = tensor_like(inp.k, moved64), tensor_like(inp.k, fresh64)
    u_in = spec.FORMATS[inp.dtype_name].u  # tensor_like rounds to nearest (torch's conversion)
    kdiff = (reencoding_error_bound(k64, pk, delta, style=style, thetas=thetas)
             + u_in * (np.abs(moved64) + np.abs(fresh64))) * RND
    oracle.assert_within(f"k re-encoded by spec.reposition_keys (delta={delta})", to_np(k_moved), to_np(k_fresh), kdiff,
                         what="proofs.rope.reencoding_error_bound + the storage rounding of both",
                         dims="(b, kv_head, j, e)")
    q_new = tensor_like(inp.q, spec.apply_rope(q64, pq + delta, style=style, thetas=thetas))
    moved = inp.with_(q=q_new, k=k_moved)
    o2, lse2 = ctx.call(moved, tile=tile)
    moved_s, o2, lse2 = sample(ctx, moved, o2, lse2, tile=tile)
    fresh_s = moved_s.with_(k=k_fresh)
    ob, lb = ctx.bound(moved_s, tile=tile)
    ex = oracle.exact(fresh_s, need_o=ob, need_lse=lb if lse2 is not None else None)
    # every allowed logit moves by at most sigma sum_e |q_e| kdiff_e (softcap and additive masks are
    # 1-Lipschitz / unchanged); fp64 sums of non-negative terms, rounded up by gamma_(E+2)
    rep = inp.q.shape[1] // inp.k.shape[1]
    sigma = abs(spec.resolve_scale(inp.scale, e))
    qa = np.abs(to_np(moved_s.q))
    dlogit = sigma * np.einsum("bhie,bhje->bhij", qa, np.repeat(kdiff, rep, axis=1)) * (1 + gam(e + 2, _U64))
    allowed = oracle.allowed_mask(moved_s)
    dmax = np.where(allowed, dlogit, 0.0).max(axis=-1, initial=0.0)              # (B, H, Lq)
    shift = attention_shift_bound(dmax[..., None], _row_spread(v64, allowed, rep))
    label = f"keys re-encoded by delta={delta} vs encoded at n + delta, {where}"
    oracle.assert_within(f"O ({label})", to_np(o2), ex.o, ob + ex.o_rad + shift,
                         what="the running bound + attention_shift_bound of the re-encoding error")
    if lse2 is not None:
        # the LSE is 1-Lipschitz in the logits (a convex combination of their changes)
        oracle.assert_within(f"LSE ({label})", to_np(lse2), ex.lse, lb + ex.lse_rad + dmax,
                             what="the running LSE bound + the largest logit change", dims="(b, h, i)")
    if not np.isfinite(np.where(allowed.any(-1), dmax, 0.0)).all():
        raise Violation(f"{label}: no finite logit change bound (non-finite rotated keys)")

"""reference/: the paths agree with each other within stated bounds.

- arb balls (forward_certified) contain the mpmath result at 200 bits;
- forward_fp64 is within the derived float64 bound (test_reference_bounds.py) of the ball;
- forward_tiled in mp at 128 bits equals the monolithic mp result within 2^-(prec - guard);
- forward_tiled in fp64 / true fp32 is within the derived bound (with the tree depth) of the ball.
Measured on the dev machine: fp64 error is 0.3-2% of its bound for O and 3-8% for the LSE; the
ball radii are ~1e-12 of an fp64 ulp (median), 5e-10 at most, at the default 96 bits.
"""
import math

import mpmath
import numpy as np
import pytest

from flashproof import reference as ref
from flashproof.reference._inputs import prepare
from flashproof.reference.fast import logits_np
from flashproof.reference.tiled import make_boundaries, make_tree

from test_reference_bounds import C_EXP32, C_LOG32, C_TANH32, U32, forward_bound


def _case(name):
    rng = np.random.default_rng(abs(hash(name)) % 2 ** 32)
    b, h, hk, lq, lk, e, ev = 1, 2, 1, 9, 13, 16, 8
    opts = {}
    mul = 1.0
    dtype = np.float64
    if name == "large_logits":
        mul = 12.0  # |s| up to ~150: exp's argument spans a wide range
    elif name == "fp16_inputs":
        dtype = np.float16
    elif name == "bottom_right_softcap":
        lq, lk = 5, 11
        opts = dict(causal="bottom_right", softcap=5.0)
        mul = 4.0
    elif name == "bias_window":
        opts = dict(window=(3, 2), attn_mask=rng.standard_normal((lq, lk)) * 3)
    elif name == "gqa_empty_rows":
        h, hk, lq, lk = 3, 1, 12, 8
        opts = dict(causal="bottom_right")  # Lq > Lk: the first 4 rows are empty
    q = (rng.standard_normal((b, h, lq, e)) * mul).astype(dtype)
    k = rng.standard_normal((b, hk, lk, e)).astype(dtype)
    v = rng.standard_normal((b, hk, lk, ev)).astype(dtype)
    return q, k, v, opts


CASES = ["plain", "large_logits", "fp16_inputs", "bottom_right_softcap", "bias_window", "gqa_empty_rows"]


@pytest.mark.parametrize("name", CASES)
def test_arb_balls_contain_mp_at_200_bits_and_are_tiny(name):
    q, k, v, opts = _case(name)
    c = ref.forward_certified(q, k, v, **opts)
    assert c.certified.all()
    mo, ml = ref.forward_mp(q, k, v, prec=200, as_mpf=True, **opts)
    vmax = float(np.max(np.abs(v.astype(np.float64))))
    with mpmath.mp.workprec(256):
        # mp at 200 bits is within ~2^-190 of the exact value (a few roundings of 2^-200, exp's
        # argument |s| <= 2^10): 2^-180 of the magnitude covers it.
        for idx in np.ndindex(mo.shape):
            assert abs(mo[idx] - c.o_mid[idx]) <= c.o_rad[idx] + 2.0 ** -180 * vmax, idx
        for idx in np.ndindex(ml.shape):
            if ml[idx] == mpmath.ninf:
                assert c.lse_mid[idx] == -np.inf and c.lse_rad[idx] == 0 and (c.o_rad[idx] == 0).all()
                assert (c.o_mid[idx] == 0).all()
            else:
                assert abs(ml[idx] - c.lse_mid[idx]) <= c.lse_rad[idx] + 2.0 ** -180 * (1 + abs(ml[idx])), idx
    # The balls themselves (before rounding the mid to fp64) are far below an fp64 ulp: with
    # the default 96 bits, |s| <= 200 and Lk = 13, arb's radius is ~2^-85 of max|v| (measured).
    live = np.isfinite(c.lse_mid)
    assert np.all(c.o_ball_rad[live] <= 2.0 ** -70 * vmax)
    assert np.all(c.lse_ball_rad[live] <= 2.0 ** -70 * (1 + np.abs(c.lse_mid[live])))
    # ... and the total radius is at most half an ulp (the fp64 rounding) plus that ball.
    assert np.all(c.o_rad <= 0.5 * np.spacing(np.abs(c.o_mid)) * (1 + 2.0 ** -50) + c.o_ball_rad * 2)


@pytest.mark.parametrize("name", CASES)
def test_fp64_is_within_the_derived_bound_of_the_certified_ball(name):
    q, k, v, opts = _case(name)
    c = ref.forward_certified(q, k, v, **opts)
    o, lse = ref.forward_fp64(q, k, v, **opts)
    bo, bl, _ = forward_bound(prepare(q, k, v, **opts))
    err_o = np.abs(o - c.o_mid)
    assert np.all(err_o <= bo + c.o_rad), (err_o / (bo + c.o_rad)).max()
    live = np.isfinite(c.lse_mid)
    with np.errstate(invalid="ignore"):  # -inf - -inf on empty rows, checked separately
        assert np.all(np.abs(lse - c.lse_mid)[live] <= bl[live] + c.lse_rad[live])
    np.testing.assert_array_equal(lse[~live], -np.inf)
    np.testing.assert_array_equal(o[~live], 0.0)


def _logit_range(pb):
    """max over rows of (max - min) of the allowed logits."""
    d = pb.dims
    out = 0.0
    for b in range(d.batch):
        for h in range(d.heads):
            s, keep, _ = logits_np(pb, b, h, 0, d.lq, 0, d.lk)
            hi = np.where(keep, s, -np.inf).max(axis=1)
            lo = np.where(keep, s, np.inf).min(axis=1)
            ok = keep.any(axis=1)
            out = max(out, float(np.max((hi - lo)[ok], initial=0.0)))
    return out


def _fit(boundaries, lk):
    """The tiling's cut points clipped to this case's Lk (repeats stay: empty blocks)."""
    return [min(c, lk) for c in boundaries] if isinstance(boundaries, list) else boundaries


def _depth(t):
    if isinstance(t, int):
        return 0
    return len(t) - 1 + max((_depth(c) for c in t), default=0)


TILINGS = [(None, None), (1, "left"), (3, "right"), ([0, 0, 2, 2, 7, 8, 13], "balanced"),
           ([4, 4, 5, 11], "random"), (2, "random"), ([6], ((1,), 0))]


@pytest.mark.parametrize("boundaries,tree", TILINGS)
@pytest.mark.parametrize("name", ["plain", "large_logits", "bias_window", "gqa_empty_rows"])
def test_tiled_mp_equals_monolithic_within_the_precision(name, boundaries, tree):
    q, k, v, opts = _case(name)
    prec = 128
    mo, ml = ref.forward_mp(q, k, v, prec=prec, as_mpf=True, **opts)
    boundaries = _fit(boundaries, k.shape[2])
    to, tl = ref.forward_tiled(q, k, v, boundaries=boundaries, tree=tree, seed=11, arithmetic="mp", prec=prec,
                               as_mpf=True, **opts)
    lk = k.shape[2]
    edges = make_boundaries(boundaries, lk)
    depth = len(edges) if tree is None else _depth(make_tree(tree, len(edges) - 1, seed=11))
    s_range = _logit_range(prepare(q, k, v, **opts)) * (1 + 2.0 ** -40)  # fp64 estimate of the real range
    # Both share the logits. Each p carries <= (R + 3) roundings of exp's argument/result per
    # level (R = logit range) over depth + 2 levels, the ratio acc/l doubles it, +4 final ops.
    rel = 2.0 ** -prec * (2 * (s_range + 3) * (depth + 2) + 4)
    vmax = float(np.max(np.abs(v.astype(np.float64))))
    with mpmath.mp.workprec(256):
        for idx in np.ndindex(mo.shape):
            assert abs(mo[idx] - to[idx]) <= rel * vmax, idx
        for idx in np.ndindex(ml.shape):
            if ml[idx] == mpmath.ninf:
                assert tl[idx] == mpmath.ninf
            else:
                assert abs(ml[idx] - tl[idx]) <= rel * (1 + abs(ml[idx])), idx
    assert math.log2(1 / rel) > prec - 20  # the guard stays below 20 bits


@pytest.mark.parametrize("boundaries,tree", TILINGS)
@pytest.mark.parametrize("name", ["plain", "large_logits", "fp16_inputs", "bottom_right_softcap", "gqa_empty_rows"])
def test_tiled_fp64_and_true_fp32_are_within_their_derived_bounds(name, boundaries, tree):
    q, k, v, opts = _case(name)
    q, k, v = (x.astype(np.float32) for x in (q, k, v))  # fp32 arithmetic rounds inputs: make them exact
    c = ref.forward_certified(q, k, v, **opts)
    boundaries = _fit(boundaries, k.shape[2])
    edges = make_boundaries(boundaries, k.shape[2])
    depth = len(edges) if tree is None else _depth(make_tree(tree, len(edges) - 1, seed=11))
    pb = prepare(q, k, v, **opts)
    live = np.isfinite(c.lse_mid)
    errs = {}
    for arith, kw in (("fp64", {}), ("fp32", dict(u=U32, c_exp=C_EXP32, c_log=C_LOG32, c_tanh=C_TANH32, dtype=np.float32))):
        o, lse = ref.forward_tiled(q, k, v, boundaries=boundaries, tree=tree, seed=11, arithmetic=arith, **opts)
        bo, bl, _ = forward_bound(pb, depth=depth, **kw)
        assert np.all(np.abs(o - c.o_mid) <= bo + c.o_rad)
        with np.errstate(invalid="ignore"):
            assert np.all(np.abs(lse - c.lse_mid)[live] <= bl[live] + c.lse_rad[live])
        np.testing.assert_array_equal(lse[~live], -np.inf)
        errs[arith] = np.abs(o - c.o_mid).max()
        if arith == "fp32":  # every value is a float32: the arithmetic really rounded in fp32
            np.testing.assert_array_equal(o.astype(np.float32).astype(np.float64), o)
            np.testing.assert_array_equal(lse.astype(np.float32).astype(np.float64), lse)
    assert errs["fp32"] > 1e3 * errs["fp64"]

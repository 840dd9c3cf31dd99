"""flashproof.proofs.bounds: argument validation, precisions, structural properties of the
bounds (masks, empty rows, garbage, GQA, spread form) and speed."""
import math
import time

import numpy as np
import pytest
import torch

from flashproof.proofs.bounds import C_EXP_MEASURED
from flashproof.proofs import (Precision, Unbounded, apriori_forward_bound, apriori_lse_bound, precision_for,
                               running_forward_bound)

F16 = precision_for(torch.float16)


def _qkv(rng, b=1, h=2, hk=1, lq=5, lk=9, e=8, ev=3, dtype=torch.float16):
    q = torch.randn(b, h, lq, e, generator=rng).to(dtype)
    k = torch.randn(b, hk, lk, e, generator=rng).to(dtype)
    v = torch.randn(b, hk, lk, ev, generator=rng).to(dtype)
    return q, k, v


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("dt,u_in", [(torch.float16, 2 ** -11), ("bf16", 2 ** -8), (np.float32, 2 ** -24),
                                     ("float16", 2 ** -11), (torch.bfloat16, 2 ** -8)])
def test_precision_for_storage_units(dt, u_in):
    p = precision_for(dt)
    assert p.u_in == u_in and p.u_acc == 2 ** -24 and p.u_dot == 0 and p.c_exp == C_EXP_MEASURED


def test_precision_for_float64_is_2_pow_53_everywhere():
    p = precision_for(torch.float64)
    assert p.u_in == p.u_acc == 2 ** -53


def test_precision_for_options():
    assert precision_for("fp16", accumulator="same").u_acc == 2 ** -11
    assert precision_for("fp16", accumulator="fp32_rz").u_acc == 2 ** -23
    assert precision_for("fp32", tf32=True).u_dot == 2 ** -11
    assert precision_for("fp32", c_exp=0.5).c_exp == 0.5


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(dtype="int8"), ValueError, "dtype"),
    (dict(dtype=torch.float16, accumulator="fp8"), ValueError, "accumulator"),
    (dict(dtype=torch.float16, c_exp=-1), ValueError, "c_exp"),
    (dict(dtype=torch.float16, tf32="yes"), TypeError, "tf32"),
])
def test_precision_for_rejects(kwargs, exc, word):
    dt = kwargs.pop("dtype")
    with pytest.raises(exc, match=word):
        precision_for(dt, **kwargs)


def test_precision_validation():
    with pytest.raises(ValueError, match="u_in"):
        Precision(u_in=-1.0, u_acc=1e-8, c_exp=1, eta=0, name="x")
    with pytest.raises(ValueError, match="u_acc"):
        Precision(u_in=1e-3, u_acc=0.7, c_exp=1, eta=0, name="x")


@pytest.mark.parametrize("kw,word", [(dict(e=0), "e"), (dict(lk=-3), "lk"), (dict(n_tiles=1.5), "n_tiles"),
                                     (dict(max_logit=-1.0), "max_logit"), (dict(max_v=math.inf), "max_v")])
def test_apriori_validation(kw, word):
    base = dict(precision=F16, e=64, lk=128, n_tiles=4, max_logit=10.0, max_v=1.0)
    base.update(kw)
    with pytest.raises(ValueError, match=word):
        apriori_forward_bound(**base)
    with pytest.raises(TypeError, match="precision"):
        apriori_forward_bound(**dict(base, precision="fp16"))


def test_apriori_monotone_and_linear_in_v():
    f = lambda **kw: apriori_forward_bound(**dict(dict(precision=F16, e=64, lk=128, n_tiles=4,  # noqa: E731
                                                       max_logit=10.0, max_v=1.0), **kw))
    assert f(max_logit=20.0) > f() and f(lk=512) > f() and f(n_tiles=32) > f() and f(e=128) > f()
    assert math.isclose(f(max_v=4.0), 4 * f(), rel_tol=1e-4)  # linear in max|v| up to the eta_in (2^-25) terms
    # logit errors beyond 1: the first-order bound is void and the convexity cap (>= spread 2 max|v|) stands
    assert apriori_forward_bound(precision=F16, e=64, lk=128, n_tiles=4, max_logit=1e6, max_v=1.0) >= 2.0
    assert 0 < apriori_lse_bound(precision=F16, e=64, lk=128, n_tiles=4, max_logit=10.0) < 1e-3


def test_running_validation(rng):
    q, k, v = _qkv(rng)
    with pytest.raises(TypeError, match="precision"):
        running_forward_bound(q, k, v, precision=torch.float16)
    with pytest.raises(ValueError, match="query"):
        running_forward_bound(q[0], k, v, precision=F16)
    with pytest.raises(ValueError, match="n_tiles"):
        running_forward_bound(q, k, v, precision=F16, n_tiles=0)
    with pytest.raises(ValueError, match="attn_mask"):
        running_forward_bound(q, k, v, precision=F16, attn_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="window"):
        running_forward_bound(q, k, v, precision=F16, window=(-2, 0))
    with pytest.raises(TypeError, match="value"):
        running_forward_bound(q, k, "v", precision=F16)


def test_running_shapes_and_nonnegative(rng):
    q, k, v = _qkv(rng, b=2, h=6, hk=3, lq=7, lk=11, e=16, ev=5)
    ob, lb = running_forward_bound(q, k, v, precision=F16, n_tiles=3, causal=True)
    assert ob.shape == (2, 6, 7, 5) and lb.shape == (2, 6, 7) and ob.dtype == np.float64
    assert np.all(ob >= 0) and np.all(lb >= 0) and np.isfinite(ob).all()


def test_empty_rows_get_zero_bound(rng):
    q, k, v = _qkv(rng, lq=6, lk=3)
    ob, lb = running_forward_bound(q, k, v, precision=F16, causal="bottom_right")
    assert np.all(ob[:, :, :3] == 0) and np.all(lb[:, :, :3] == 0)  # rows 0..2 see no key
    assert np.all(ob[:, :, 3:] > 0)


def test_masked_garbage_does_not_change_the_bound(rng):
    q, k, v = _qkv(rng, lq=4, lk=8)
    clean = running_forward_bound(q, k, v, precision=F16, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., 5:, :] = float("nan")  # keys 5.. are masked for every row (lq=4, top-left)
    v2[..., 5:, :] = float("inf")
    dirty = running_forward_bound(q, k2, v2, precision=F16, causal=True)
    np.testing.assert_array_equal(clean[0], dirty[0])
    np.testing.assert_array_equal(clean[1], dirty[1])


def test_nan_in_allowed_query_or_key_gives_no_claim_for_its_rows(rng):
    q, k, v = _qkv(rng, lq=4, lk=8)
    q2, k2 = q.clone(), k.clone()
    q2[0, 1, 2, 3] = float("nan")
    k2[0, 0, 1, 0] = float("inf")  # key 1: allowed for rows >= 1 (causal)
    ob, lb = running_forward_bound(q2, k, v, precision=F16, causal=True)
    assert np.isnan(ob[0, 1, 2]).all() and np.isnan(lb[0, 1, 2]) and np.isfinite(np.delete(lb[0, 1], 2)).all()
    ob, lb = running_forward_bound(q, k2, v, precision=F16, causal=True)
    assert np.isnan(lb[0, :, 1:]).all() and np.isfinite(lb[0, :, 0]).all() and (lb[0, :, 0] > 0).all()


def test_nan_in_allowed_value_gives_no_claim_only_there(rng):
    q, k, v = _qkv(rng, lq=4, lk=8)
    v2 = v.clone()
    v2[0, 0, 2, 1] = float("nan")  # key 2 is allowed for rows >= 2 (causal)
    ob, _ = running_forward_bound(q, k, v2, precision=F16, causal=True)
    assert np.isnan(ob[0, :, 2:, 1]).all() and np.isfinite(ob[0, :, :2]).all() and np.isfinite(ob[0, :, :, 0]).all()


def test_additive_minus_inf_equals_bool_mask(rng):
    q, k, v = _qkv(rng, lq=4, lk=6)
    allow = torch.rand(4, 6, generator=rng) > 0.4
    allow[:, 0] = True
    bias = torch.where(allow, 0.0, float("-inf"))
    a = running_forward_bound(q, k, v, precision=F16, attn_mask=allow)
    b = running_forward_bound(q, k, v, precision=F16, attn_mask=bias)
    # the additive path adds the bias rounding terms (|s| u_acc): never smaller
    assert np.all(b[0] >= a[0]) and np.allclose(a[0], b[0], rtol=1e-2)


def test_gqa_equals_repeated_heads(rng):
    """Bitwise: a row's bound depends only on its own q, mask and allowed keys (GQA groups rows of
    several heads into one slice; repeating the KV heads puts each head in its own slice)."""
    q, k, v = _qkv(rng, h=6, hk=2)
    a = running_forward_bound(q, k, v, precision=F16, n_tiles=2)
    b = running_forward_bound(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), precision=F16, n_tiles=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("mask", ["causal", "window", "bool"])
def test_row_bound_does_not_depend_on_the_batch(rng, mask):
    """Bitwise: the bound of a row computed alone (its mask row as attn_mask), inside a subset of
    rows, or in a batch with other sequences equals its bound in the full problem."""
    q, k, v = _qkv(rng, b=2, h=3, hk=1, lq=23, lk=31, e=24, ev=5)
    if mask == "bool":
        opts = dict(attn_mask=torch.rand(2, 3, 23, 31, generator=rng) > 0.5)
    else:
        opts = dict(causal="bottom_right", window=(6, 2) if mask == "window" else None)
    full_o, full_l = running_forward_bound(q, k, v, precision=F16, n_tiles=4, **opts)
    from flashproof import spec
    m = spec.make_mask(causal=opts.get("causal", False), window=opts.get("window"),
                       alignment=None).matrix(23, 31)
    allow = torch.from_numpy(np.broadcast_to(m, (2, 3, 23, 31)).copy())
    if "attn_mask" in opts:
        allow &= opts["attn_mask"]
    for rows in ([0], [5, 17], list(range(3, 20, 4)), [22]):
        sub_o, sub_l = running_forward_bound(q[:, :, rows], k, v, precision=F16, n_tiles=4,
                                             attn_mask=allow[:, :, rows])
        np.testing.assert_array_equal(sub_o, full_o[:, :, rows])
        np.testing.assert_array_equal(sub_l, full_l[:, :, rows])
    one_o, one_l = running_forward_bound(q[1:, 2:, 7:8], k[1:], v[1:], precision=F16, n_tiles=4,
                                         attn_mask=allow[1:, 2:, 7:8])
    np.testing.assert_array_equal(one_o, full_o[1:, 2:, 7:8])
    np.testing.assert_array_equal(one_l, full_l[1:, 2:, 7:8])


def test_spread_form_constant_offset_does_not_scale_with_length(rng):
    """V = c + small: the bound grows like c (u_in + a few u_acc), never like c L u."""
    q, k, v = _qkv(rng, lq=3, lk=64, e=16)
    base = running_forward_bound(q, k, v, precision=F16, n_tiles=8)[0]
    ones = running_forward_bound(q, k, torch.ones_like(v), precision=F16, n_tiles=8)[0]
    # V = ones: the common (exp, rescale, logit) errors cancel exactly; left: P rounding, sums, store
    assert ones.max() < 3 * 2 ** -11
    shifted = running_forward_bound(q, k, v + 100, precision=F16, n_tiles=8)[0]
    assert np.all(shifted <= base + 100 * 1.01 * ones.max())


def test_running_at_most_apriori(rng):
    for e, lk in ((16, 7), (64, 40)):
        q, k, v = _qkv(rng, lk=lk, e=e)
        ob, lb = running_forward_bound(q, k, v, precision=F16, n_tiles=3)
        qa, ka = q.double().abs(), k.double().abs()
        gm = float((qa[0] @ ka[0, 0].T).max()) / math.sqrt(e)
        ap = apriori_forward_bound(precision=F16, e=e, lk=lk, n_tiles=3, max_logit=gm,
                                   max_v=float(v.double().abs().max()))
        apl = apriori_lse_bound(precision=F16, e=e, lk=lk, n_tiles=3, max_logit=gm)
        assert ob.max() <= ap and lb.max() <= apl


def test_softcap_and_default_n_tiles(rng):
    q, k, v = _qkv(rng)
    a = running_forward_bound(q, k, v, precision=F16, softcap=5.0)[0]
    b = running_forward_bound(q, k, v, precision=F16, softcap=5.0, n_tiles=9)[0]
    np.testing.assert_array_equal(a, b)  # None = any tiling = Lk tiles
    assert np.all(a > 0) and np.isfinite(a).all()


def test_convexity_cap_bounds_huge_logit_errors():
    """fp32 logits ~1e5: the first-order budget exceeds 1, the cap (spread + O(u)) still holds."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 1, 3, 64)).astype(np.float32) * 300
    k = rng.standard_normal((1, 1, 40, 64)).astype(np.float32) * 300
    v = rng.standard_normal((1, 1, 40, 2)).astype(np.float32)
    ob, _ = running_forward_bound(q, k, v, precision=precision_for("float32"), n_tiles=3)
    spread = np.ptp(v.astype(np.float64), axis=2)[0, 0]
    assert np.all(np.isfinite(ob)) and np.all(ob >= spread) and np.all(ob <= spread * 1.2 + 1)


def test_overflow_gives_inf_or_raises_with_the_reason():
    q = np.full((1, 1, 2, 4), 2.0 ** 63)  # q.k = 2^128: beyond fp32
    k = np.full((1, 1, 3, 4), 2.0 ** 63)
    v = np.ones((1, 1, 3, 2))
    prec = precision_for("fp32", accumulator="same")
    ob, lb = running_forward_bound(q, k, v, precision=prec)
    assert np.isinf(ob).all() and np.isinf(lb).all()
    with pytest.raises(Unbounded, match="accumulator's largest value") as info:
        running_forward_bound(q, k, v, precision=prec, on_unbounded="raise")
    assert info.value.rows == [(0, 0, 0), (0, 0, 1)]
    with pytest.raises(ValueError, match="on_unbounded"):
        running_forward_bound(q, k, v, precision=prec, on_unbounded="skip")


@pytest.mark.parametrize("dt", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("offset", [-1e4, -1e6, -1e30, 1e30])
def test_lse_bound_finite_at_any_logit_magnitude(dt, offset):
    """The LSE bound is finite at every magnitude (theorem 6, lse_any) and relative to |lse|; without
    an LSE combine so is the output bound (the convexity cap)."""
    rng = np.random.default_rng(4)
    e = 16
    q = rng.standard_normal((1, 2, 5, e))
    k = rng.standard_normal((1, 1, 9, e))
    c = offset if dt != "float16" else math.copysign(1e4, offset)  # fp16 holds |k| <= 65504
    q[..., 0] = 1.0
    k[..., 0] = c * math.sqrt(e)
    v = rng.standard_normal((1, 1, 9, 3))
    t = [torch.from_numpy(x).to(getattr(torch, dt)) for x in (q, k, v)]
    prec = precision_for(dt)
    ob, lb = running_forward_bound(*t, precision=prec, lse_combine=False, on_unbounded="raise")
    assert np.isfinite(ob).all() and np.isfinite(lb).all() and (lb > 0).all()
    assert lb.max() <= 1e-4 * abs(c) + 1e-2  # relative to |lse| ~ |c|, never a blow-up
    assert ob.max() <= 2 * np.ptp(v, axis=2).max() + 1  # at worst the convexity cap: spread + O(u)
    lb2 = running_forward_bound(*t, precision=prec)[1]  # with the LSE-combine model: the LSE stays finite
    assert np.isfinite(lb2).all()


def test_accumulator_models():
    from flashproof.proofs.accumulation import block_fma_name, block_fma_unit
    p = precision_for("fp16", accumulator=block_fma_name(8, 0, "rz"))
    assert p.u_acc == 2 ** -24 and p.k_mma == 8 and p.u_mma == block_fma_unit(8, 0, "rz") == 2 ** -23 + 8 * 2 ** -23 * (1 + 2 ** -23)
    assert precision_for("fp16").u_mma is None and precision_for("fp16").mma_unit == 2 ** -24
    with pytest.raises(ValueError, match="blockfma"):
        precision_for("fp16", accumulator="fp32_blockfma_k0_x0_rz")
    with pytest.raises(ValueError, match="float64"):
        precision_for("fp64", accumulator="fp32_blockfma_k8_x0_rz")
    q = torch.randn(1, 1, 4, 64).half()
    k = torch.randn(1, 1, 40, 64).half()
    v = torch.randn(1, 1, 40, 8).half()
    a = running_forward_bound(q, k, v, precision=precision_for("fp16"), n_tiles=3)
    b = running_forward_bound(q, k, v, precision=p, n_tiles=3)
    assert np.all(b[0] >= a[0]) and np.all(b[1] >= a[1]) and np.any(b[1] > a[1])


def _reference_workload(q, k):
    """A fixed numpy workload of the same size (one fp32 q k^T per head and one fp64 exp over all
    logits): the bound's cost is measured relative to it, so a loaded shared CPU does not matter."""
    qn, kn = q.float().numpy(), k.float().numpy()
    t0 = time.perf_counter()
    s = qn @ np.swapaxes(kn, -1, -2)
    np.exp(s.astype(np.float64) * -1e-3)
    return time.perf_counter() - t0


def test_speed_at_4x8x512x128(rng):
    q, k, v = _qkv(rng, b=4, h=8, hk=8, lq=512, lk=512, e=128, ev=128)
    running_forward_bound(q[:1, :1, :8], k[:1, :1], v[:1, :1], precision=F16)  # warm-up
    ref = min(_reference_workload(q, k) for _ in range(2))
    t0, c0 = time.perf_counter(), time.process_time()
    running_forward_bound(q, k, v, precision=F16, n_tiles=8, causal=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ref = min(ref, _reference_workload(q, k))
    print(f"running_forward_bound (4, 8, 512, 128) causal fp16: {wall:.2f} s wall, {cpu:.2f} s CPU, "
          f"{wall / ref:.1f}x the reference workload ({ref:.3f} s)")
    # Measured ~0.9 s single-threaded on an idle box, about 6-10x the reference workload; 25x
    # flags a real regression while tolerating the load of a shared 2-core CI machine.
    assert wall < 25 * ref, f"running_forward_bound took {wall:.2f} s = {wall / ref:.1f}x the reference workload"

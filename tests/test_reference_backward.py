"""reference/: backward_fp64 and backward_mp against mp, torch autograd (float64 SDPA math) and
finite differences at mp precision; masks, empty rows, GQA and the NaN policy."""
import mpmath
import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from flashproof import reference as ref
from flashproof.reference._inputs import prepare
from flashproof.reference.mp import MpPrepared

from test_reference_bounds import backward_bound_fp64


def _case(name):
    rng = np.random.default_rng(sum(map(ord, name)))
    b, h, hk, lq, lk, e, ev = 2, 2, 1, 6, 9, 8, 5
    opts = {}
    mul = 1.0
    if name == "causal_bottom_right":
        opts = dict(causal="bottom_right")  # Lq < Lk: no empty row
    elif name == "gqa_causal":
        h, hk, lq, lk = 6, 2, 7, 7
        opts = dict(causal=True)
    elif name == "softcap":
        opts = dict(softcap=3.0)
        mul = 4.0
    elif name == "bias_window":
        opts = dict(window=(4, 1), attn_mask=rng.standard_normal((b, 1, lq, lk)))
    elif name == "large_logits":
        mul = 10.0
    elif name == "bool_mask_scale":
        keep = rng.random((lq, lk)) < 0.5
        keep[:, 0] = True  # no empty row (torch's math path differs there)
        opts = dict(attn_mask=keep, scale=0.3)
    q = rng.standard_normal((b, h, lq, e)) * mul
    k = rng.standard_normal((b, hk, lk, e))
    v = rng.standard_normal((b, hk, lk, ev))
    do = rng.standard_normal((b, h, lq, ev))
    return q, k, v, do, opts


CASES = ["plain", "causal_bottom_right", "gqa_causal", "softcap", "bias_window", "large_logits", "bool_mask_scale"]


def _check(name, got, want, bound):
    err = np.abs(got - want)
    bad = ~(err <= bound)
    assert not bad.any(), f"{name}: worst {np.argwhere(bad)[:5].tolist()}, err/bound {np.nanmax(err / bound):.3g}, nan {np.isnan(got).sum()}"


@pytest.mark.parametrize("name", CASES)
def test_backward_fp64_is_within_its_derived_bound_of_mp(name):
    q, k, v, do, opts = _case(name)
    exact = ref.backward_mp(q, k, v, do, prec=128, **opts)  # within ~2^-110 relative: negligible
    got = ref.backward_fp64(q, k, v, do, **opts)
    bounds = backward_bound_fp64(prepare(q, k, v, **opts), do)
    for tname, g, w, bd in zip(("dq", "dk", "dv"), got, exact, bounds):
        _check(f"{tname}", g, w, bd)
        assert bd.max() < 1e-10  # the bound is tight enough to catch a real error


def _torch_grads(q, k, v, do, opts):
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    h, hk = q.shape[1], k.shape[1]
    if "softcap" in opts:  # SDPA has no softcap: the same math, spelled out in torch float64
        kk, vv = tk.repeat_interleave(h // hk, 1), tv.repeat_interleave(h // hk, 1)
        s = tq @ kk.transpose(-1, -2) / np.sqrt(q.shape[-1])
        s = opts["softcap"] * torch.tanh(s / opts["softcap"])
        o = torch.softmax(s, -1) @ vv
    else:
        mask = None
        causal = opts.get("causal", False)
        if "attn_mask" in opts or "window" in opts or causal == "bottom_right":
            pb = prepare(q, k, v, **opts)
            keep = np.stack([np.stack([pb.allowed(b, hh) for hh in range(h)]) for b in range(q.shape[0])])
            bias = 0.0 if pb.mask_bias is None else np.where(keep, pb.mask_bias, 0.0)
            mask = torch.tensor(np.where(keep, bias, -np.inf))
            causal = False
        with sdpa_kernel(SDPBackend.MATH):
            o = torch.nn.functional.scaled_dot_product_attention(
                tq, tk, tv, attn_mask=mask, is_causal=bool(causal), scale=opts.get("scale"), enable_gqa=h != hk)
    return [g.numpy() for g in torch.autograd.grad(o, (tq, tk, tv), torch.tensor(do))]


@pytest.mark.parametrize("name", CASES)
def test_torch_autograd_float64_math_agrees_within_its_bound(name):
    q, k, v, do, opts = _case(name)
    exact = ref.backward_mp(q, k, v, do, prec=128, **opts)
    got = _torch_grads(q, k, v, do, opts)
    # torch's math path: D = sum_j P dP over Lk terms, scale applied as sqrt(scale) to q and k.
    bounds = backward_bound_fp64(prepare(q, k, v, **opts), do, d_terms=k.shape[2], scale_sqrt=True)
    for tname, g, w, bd in zip(("dq", "dk", "dv"), got, exact, bounds):
        _check(f"torch {tname}", g, w, bd)
    # and therefore backward_fp64 and torch agree within the sum of the two bounds.
    ours = ref.backward_fp64(q, k, v, do, **opts)
    b64 = backward_bound_fp64(prepare(q, k, v, **opts), do)
    for g, w, b1, b2 in zip(ours, got, b64, bounds):
        assert np.all(np.abs(g - w) <= b1 + b2)


def test_backward_mp_matches_finite_differences_at_mp_precision():
    rng = np.random.default_rng(21)
    q, k, v = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((1, 1, 4, 3)), rng.standard_normal((1, 1, 4, 2))
    do = rng.standard_normal((1, 2, 3, 2))
    opts = dict(causal="bottom_right", softcap=2.0, attn_mask=rng.standard_normal((3, 4)))
    prec = 256
    grads = ref.backward_mp(q, k, v, do, prec=prec, as_mpf=True, **opts)
    pb = prepare(q, k, v, **opts)
    h = mpmath.mpf(2) ** -60
    with mpmath.mp.workprec(prec):
        dom = [[[[mpmath.mpf(x) for x in row] for row in hh] for hh in bb] for bb in do.tolist()]

        def f(mq):
            o, _ = mq.forward_rows()
            return mpmath.fsum(o[idx] * dom[idx[0]][idx[1]][idx[2]][idx[3]] for idx in np.ndindex(o.shape))

        for which, g in zip(("q", "k", "v"), grads):
            for idx in np.ndindex(g.shape):
                vals = []
                for sign in (1, -1):
                    mq = MpPrepared(pb, prec)
                    arr = getattr(mq, which)
                    arr[idx[0]][idx[1]][idx[2]][idx[3]] += sign * h
                    vals.append(f(mq))
                fd = (vals[0] - vals[1]) / (2 * h)
                # Central difference: h^2/6 |f'''| (|f'''| < 2^20 for these O(1) inputs) plus
                # 2^-256 |f| / h of rounding: far below 2^-90.
                assert abs(fd - g[idx]) <= 2.0 ** -90, (which, idx, fd, g[idx])


@pytest.mark.parametrize("path", ["fp64", "mp"])
def test_empty_rows_get_zero_gradients_and_garbage_there_never_leaks(path):
    rng = np.random.default_rng(22)
    q, k, v = rng.standard_normal((1, 2, 7, 4)), rng.standard_normal((1, 1, 4, 4)), rng.standard_normal((1, 1, 4, 3))
    do = rng.standard_normal((1, 2, 7, 3))
    empty = np.zeros((1, 2, 7), dtype=bool)
    empty[:, :, :3] = True  # bottom_right with Lq = 7 > Lk = 4: rows 0..2 attend nothing
    q2, do2, do0 = q.copy(), do.copy(), do.copy()
    q2[empty] = np.nan
    do2[empty] = np.nan
    do0[empty] = 0.0
    fn = ref.backward_fp64 if path == "fp64" else (lambda *a, **kw: ref.backward_mp(*a, prec=96, **kw))
    dq, dk, dv = fn(q2, k, v, do2, causal="bottom_right")
    rq, rk, rv = fn(q, k, v, do0, causal="bottom_right")
    assert not any(np.isnan(x).any() for x in (dq, dk, dv))
    np.testing.assert_array_equal(dq[empty], 0.0)
    np.testing.assert_array_equal(dq, rq)
    np.testing.assert_array_equal(dk, rk)
    np.testing.assert_array_equal(dv, rv)


def test_gqa_gradients_are_the_sums_over_each_group():
    rng = np.random.default_rng(23)
    q, k, v = rng.standard_normal((2, 6, 5, 4)), rng.standard_normal((2, 2, 8, 4)), rng.standard_normal((2, 2, 8, 3))
    do = rng.standard_normal((2, 6, 5, 3))
    opts = dict(causal="bottom_right", softcap=4.0)
    dq, dk, dv = ref.backward_fp64(q, k, v, do, **opts)
    mq, mk, mv = ref.backward_fp64(q, np.repeat(k, 3, 1), np.repeat(v, 3, 1), do, **opts)
    np.testing.assert_array_equal(dq, mq)
    # Same per-head arithmetic, accumulated in the same head order: bitwise equal.
    sk = np.zeros_like(dk)
    sv = np.zeros_like(dv)
    for hh in range(6):
        sk[:, hh // 3] += mk[:, hh]
        sv[:, hh // 3] += mv[:, hh]
    np.testing.assert_array_equal(dk, sk)
    np.testing.assert_array_equal(dv, sv)
    # mp: one exact sum per group vs three rounded ones: within 3 * 2^-96 relative.
    gk = ref.backward_mp(q, k, v, do, prec=96, **opts)[1]
    hk = ref.backward_mp(q, np.repeat(k, 3, 1), np.repeat(v, 3, 1), do, prec=96, **opts)[1]
    summed = hk.reshape(2, 2, 3, 8, 4).sum(axis=2)
    assert np.all(np.abs(gk - summed) <= 4 * 2.0 ** -52 * np.abs(hk).reshape(2, 2, 3, 8, 4).sum(axis=2))


@pytest.mark.parametrize("path", ["fp64", "mp"])
def test_masked_garbage_never_reaches_the_gradients(path):
    rng = np.random.default_rng(24)
    q, k, v = rng.standard_normal((1, 2, 6, 4)), rng.standard_normal((1, 1, 6, 4)), rng.standard_normal((1, 1, 6, 3))
    do = rng.standard_normal((1, 2, 6, 3))
    fn = ref.backward_fp64 if path == "fp64" else (lambda *a, **kw: ref.backward_mp(*a, prec=96, **kw))
    keep = np.ones((6, 6), dtype=bool)
    keep[:, 4] = False  # key 4 is masked for every row
    clean = fn(q, k, v, do, attn_mask=keep)
    k2, v2 = k.copy(), v.copy()
    k2[0, 0, 4] = np.nan
    v2[0, 0, 4] = np.inf
    dirty = fn(q, k2, v2, do, attn_mask=keep)
    for a, b in zip(clean, dirty):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clean[1][0, 0, 4], 0.0)
    np.testing.assert_array_equal(clean[2][0, 0, 4], 0.0)
    # causal: key 4 is masked for rows 0..3, whose dq must not change.
    cq = fn(q, k, v, do, causal=True)[0]
    dq = fn(q, k2, v2, do, causal=True)[0]
    np.testing.assert_array_equal(cq[:, :, :4], dq[:, :, :4])
    assert np.isnan(dq[:, :, 4:]).all()


def test_gradient_identities_hold_in_mp():
    # sum_j dK_j = 0 (rows of dS sum to 0 without softcap) and sum_j dV_j = sum of dO over
    # non-empty rows (rows of P sum to 1): bug class 11.
    rng = np.random.default_rng(25)
    q, k, v = rng.standard_normal((1, 2, 7, 4)), rng.standard_normal((1, 1, 5, 4)), rng.standard_normal((1, 1, 5, 3))
    do = rng.standard_normal((1, 2, 7, 3))
    dq, dk, dv = ref.backward_mp(q, k, v, do, prec=128, causal="bottom_right", as_mpf=True)
    with mpmath.mp.workprec(256):
        for e in range(4):  # exactly 0 up to mp rounding: 2^-120 of sum |dk_j| (~10) is < 2^-110
            assert abs(mpmath.fsum(dk[0, 0, :, e])) <= 2.0 ** -110
        for e in range(3):  # Lq - Lk = 2 empty rows
            want = mpmath.fsum(mpmath.mpf(float(x)) for x in do[0, :, 2:, e].ravel())
            assert abs(mpmath.fsum(dv[0, 0, :, e]) - want) <= 2.0 ** -110

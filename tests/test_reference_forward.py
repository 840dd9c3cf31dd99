"""reference/: exact input conversion, argument validation and every semantic edge case of spec,
on each forward path (fp64, mp, certified, tiled in fp64/fp32/mp, naive)."""
from fractions import Fraction
import math
import tracemalloc

import mpmath
import numpy as np
import pytest
import torch
from flint import arb, ctx

from flashproof import reference as ref
from flashproof.reference._inputs import mpf_to_float, prepare, to_float64
from flashproof.reference.mp import MpPrepared

from test_reference_bounds import forward_bound


def _rand(rng, b=1, h=2, hk=1, lq=5, lk=7, e=4, ev=3, dtype=np.float64):
    return (rng.standard_normal((b, h, lq, e)).astype(dtype), rng.standard_normal((b, hk, lk, e)).astype(dtype),
            rng.standard_normal((b, hk, lk, ev)).astype(dtype))


def _cert(q, k, v, **kw):
    c = ref.forward_certified(q, k, v, **kw)
    return c.o_mid, c.lse_mid


def _cuts(k):
    """Irregular cut points with an empty block, valid for any Lk."""
    lk = k.shape[2]
    return [0, min(2, lk), min(2, lk), min(5, lk), lk]


#: Every forward path, returning float64 numpy (o, lse).
FORWARDS = {
    "fp64": ref.forward_fp64,
    "mp": lambda q, k, v, **kw: ref.forward_mp(q, k, v, prec=80, **kw),
    "certified": _cert,
    "tiled_fp64": lambda q, k, v, **kw: ref.forward_tiled(q, k, v, boundaries=_cuts(k), tree="random", seed=3, **kw),
    "tiled_fp32": lambda q, k, v, **kw: ref.forward_tiled(q, k, v, boundaries=2, tree="balanced", arithmetic="fp32", **kw),
    "tiled_mp": lambda q, k, v, **kw: ref.forward_tiled(q, k, v, boundaries=_cuts(k)[1:], tree="right", arithmetic="mp", prec=80, **kw),
}


def _naive(q, k, v, **kw):
    o, lse = ref.forward_naive(*(torch.from_numpy(x) if isinstance(x, np.ndarray) else x for x in (q, k, v)), **kw)
    return o.double().numpy(), lse.double().numpy()


FORWARDS_AND_NAIVE = dict(FORWARDS, naive=_naive)


# ---------------------------------------------------------------- exact conversion

def _random_bits(rng, dtype, n=4096):
    bits = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}[dtype]
    info = torch.iinfo(bits)
    raw = torch.from_numpy(rng.integers(info.min, info.max, n, dtype=np.int64)).to(bits)
    x = raw.view(dtype)
    return x[torch.isfinite(x)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_tensor_values_round_trip_bit_exactly(dtype):
    x = _random_bits(np.random.default_rng(1), dtype)
    x = torch.cat([x, torch.tensor([0.0, -0.0, torch.finfo(dtype).tiny, torch.finfo(dtype).max], dtype=dtype)])
    y = torch.from_numpy(to_float64(x, "query")).to(dtype)
    assert torch.equal(y.view(torch.int16 if x.element_size() == 2 else {4: torch.int32, 8: torch.int64}[x.element_size()]),
                       x.view(torch.int16 if x.element_size() == 2 else {4: torch.int32, 8: torch.int64}[x.element_size()]))
    # ... and into mpf and arb with no rounding either (at any working precision >= 2).
    vals = to_float64(x[:300], "query")
    pb = prepare(vals.reshape(1, 1, 1, -1), vals.reshape(1, 1, 1, -1), vals.reshape(1, 1, 1, -1))
    mq = MpPrepared(pb, prec=8)
    assert all(mpmath.mpf(a) == b and float(b) == a for a, b in zip(vals.tolist(), mq.q[0][0][0]))
    old = ctx.prec
    try:
        ctx.prec = 64
        assert all(arb(a).is_exact() and float(arb(a)) == a for a in vals.tolist())
    finally:
        ctx.prec = old


@pytest.mark.parametrize("name", list(FORWARDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_single_allowed_key_returns_exactly_its_v_in_low_precision_dtypes(name, dtype):
    rng = np.random.default_rng(2)
    v = _random_bits(rng, dtype, 64)[:12].reshape(1, 1, 4, 3)
    q = torch.zeros(1, 1, 4, 4, dtype=dtype)
    k = torch.zeros(1, 1, 4, 4, dtype=dtype)
    o, lse = FORWARDS[name](q, k, v, window=(0, 0))  # row i attends key i only
    np.testing.assert_array_equal(o, v.double().numpy())
    np.testing.assert_array_equal(lse, 0.0)


def _mpf_oracle(x):
    """Correct rounding through Fraction (CPython rounds int/int true division correctly)."""
    sign, man, exp, _ = x._mpf_
    fr = Fraction(man) * (Fraction(2) ** exp)
    try:
        return float(-fr if sign else fr)
    except OverflowError:
        return -math.inf if sign else math.inf


def test_mpf_to_float_rounds_correctly_including_subnormals():
    with mpmath.mp.workprec(200):
        two = mpmath.mpf(2)
        cases = [1 + two ** -53, 1 + 3 * two ** -53, -(1 + two ** -53 + two ** -120),
                 two ** -1074 * (mpmath.mpf(0.5) + two ** -60),  # float(mpf) double-rounds this to 0
                 two ** -1074 * mpmath.mpf(0.5), two ** -1074 * mpmath.mpf(1.5),
                 two ** -1022 * (1 - two ** -60), two ** 1024 * (1 - two ** -54), two ** 1024 * (1 - two ** -53),
                 two ** 1025, mpmath.mpf(0)]
        rng = np.random.default_rng(0)
        for _ in range(300):
            cases.append(mpmath.mpf(float(rng.standard_normal())) * two ** int(rng.integers(-1100, 1030))
                         * (1 + mpmath.mpf(float(rng.standard_normal())) * two ** -int(rng.integers(40, 70))))
        for x in cases:
            assert mpf_to_float(x) == _mpf_oracle(x), x
        assert mpf_to_float(two ** -1074 * (mpmath.mpf(0.5) + two ** -60)) == 5e-324
    assert math.isnan(mpf_to_float(mpmath.nan)) and mpf_to_float(mpmath.ninf) == -math.inf


# ---------------------------------------------------------------- validation

def _bwd64(q, k, v, **kw):
    return ref.backward_fp64(q, k, v, np.zeros(np.shape(q)[:3] + np.shape(v)[3:]), **kw)


def _bwdmp(q, k, v, **kw):
    return ref.backward_mp(q, k, v, np.zeros(np.shape(q)[:3] + np.shape(v)[3:]), prec=64, **kw)


ENTRY_POINTS = dict(FORWARDS_AND_NAIVE, backward_fp64=_bwd64, backward_mp=_bwdmp)
_R = np.random.default_rng(5)
_Q, _K, _V = _R.standard_normal((1, 2, 3, 4)), _R.standard_normal((1, 1, 5, 4)), _R.standard_normal((1, 1, 5, 2))

BAD = [
    ("rank", dict(q=_Q[0]), ValueError, "query must have rank 4"),
    ("batch", dict(k=np.concatenate([_K, _K])), ValueError, "batch sizes differ"),
    ("head dim", dict(k=_K[..., :3]), ValueError, "head dims differ"),
    ("kv length", dict(v=_V[:, :, :4]), ValueError, "lengths differ"),
    ("heads", dict(k=np.concatenate([_K] * 3, 1), v=np.concatenate([_V] * 3, 1)), ValueError, "multiple"),
    ("E=0", dict(q=_Q[..., :0], k=_K[..., :0]), ValueError, "head dims must be positive"),
    ("window", dict(window=(-2, 0)), ValueError, "window"),
    ("scale nan", dict(scale=float("nan")), ValueError, "scale"),
    ("scale inf", dict(scale=float("inf")), ValueError, "scale"),
    ("softcap", dict(softcap=-1.0), ValueError, "softcap"),
    ("causal", dict(causal="diagonal"), ValueError, "causal"),
    ("type", dict(q=_Q.tolist()), TypeError, "query"),
    ("int dtype", dict(v=_V.astype(np.int64)), TypeError, "value"),
    ("mask shape", dict(attn_mask=np.ones((4, 4), dtype=bool)), ValueError, "attn_mask"),
    ("mask dtype", dict(attn_mask=np.ones((3, 5), dtype=np.int32)), TypeError, "attn_mask"),
    ("device", dict(q=torch.zeros(1, 2, 3, 4, device="meta", dtype=torch.float64)), ValueError, "devices"),
]


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
@pytest.mark.parametrize("case,override,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_clear_error(name, case, override, exc, msg):
    args = {"q": _Q, "k": _K, "v": _V}
    opts = {k: v for k, v in override.items() if k not in args}
    args.update({k: v for k, v in override.items() if k in args})
    if name == "naive":
        args = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    with pytest.raises(exc, match=msg):
        ENTRY_POINTS[name](args["q"], args["k"], args["v"], **opts)


def test_bad_option_values_of_each_path_raise():
    with pytest.raises(ValueError, match="prec"):
        ref.forward_mp(_Q, _K, _V, prec=0)
    with pytest.raises(ValueError, match="prec"):
        ref.forward_certified(_Q, _K, _V, prec=1)
    with pytest.raises(ValueError, match="arithmetic"):
        ref.forward_tiled(_Q, _K, _V, arithmetic="fp16")
    with pytest.raises(ValueError, match="arithmetic"):  # numpy float16 sums accumulate in float32
        ref.forward_tiled(_Q, _K, _V, arithmetic=np.float16)
    with pytest.raises(ValueError, match="boundaries"):
        ref.forward_tiled(_Q, _K, _V, boundaries=[3, 1])
    with pytest.raises(ValueError, match="boundaries"):
        ref.forward_tiled(_Q, _K, _V, boundaries=[9])
    with pytest.raises(ValueError, match="tree"):
        ref.forward_tiled(_Q, _K, _V, boundaries=[2], tree=(0, 0))
    with pytest.raises(ValueError, match="tree"):
        ref.forward_tiled(_Q, _K, _V, tree="zigzag")
    with pytest.raises(ValueError, match="do"):
        ref.backward_fp64(_Q, _K, _V, np.zeros((1, 2, 3, 3)))
    with pytest.raises(TypeError, match="one dtype"):
        ref.forward_naive(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.float64), torch.zeros(1, 1, 2, 2))


# ---------------------------------------------------------------- semantics

@pytest.mark.parametrize("name", list(FORWARDS_AND_NAIVE))
def test_single_allowed_key_gives_its_v_and_its_logit(name):
    rng = np.random.default_rng(3)
    q = rng.integers(-4, 5, (1, 2, 4, 4)).astype(np.float32)  # E=4: default scale 1/2 is exact
    k = rng.integers(-4, 5, (1, 2, 6, 4)).astype(np.float32)
    v = rng.standard_normal((1, 2, 6, 3)).astype(np.float32)
    mask = np.zeros((4, 6), dtype=bool)
    cols = [5, 0, 3, 3]
    mask[np.arange(4), cols] = True
    o, lse = FORWARDS_AND_NAIVE[name](q, k, v, attn_mask=mask)
    np.testing.assert_array_equal(o, v[:, :, cols].astype(np.float64))
    np.testing.assert_array_equal(lse, 0.5 * np.einsum("bhie,bhie->bhi", q, k[:, :, cols]).astype(np.float64))


@pytest.mark.parametrize("name", list(FORWARDS_AND_NAIVE))
@pytest.mark.parametrize("how", ["bool", "additive"])
def test_single_key_with_logit_minus_1e6_gives_exactly_its_v(name, how):
    q = np.zeros((1, 1, 2, 4), dtype=np.float32)
    k = np.zeros((1, 1, 3, 4), dtype=np.float32)
    q[..., 0] = 1000.0
    k[0, 0, :, 0] = [-2000.0, 3000.0, 1000.0]  # logits -1e6 (allowed), +1.5e6 and +5e5 (masked)
    v = np.random.default_rng(4).standard_normal((1, 1, 3, 5)).astype(np.float32)
    keep = np.array([[True, False, False]] * 2)
    mask = keep if how == "bool" else np.where(keep, 0.0, -np.inf).astype(np.float32)
    o, lse = FORWARDS_AND_NAIVE[name](q, k, v, attn_mask=mask)
    np.testing.assert_array_equal(o, np.broadcast_to(v[:, :, :1], o.shape).astype(np.float64))
    np.testing.assert_array_equal(lse, -1e6)


@pytest.mark.parametrize("name", list(FORWARDS_AND_NAIVE))
def test_fully_masked_rows_give_zero_and_minus_inf_and_leave_other_rows_alone(name):
    rng = np.random.default_rng(6)
    q, k, v = _rand(rng, lq=6, lk=4)
    q[0, 0, 1] = np.nan  # garbage in an empty row's query must not matter either
    keep = np.ones((1, 2, 6, 4), dtype=bool)
    keep[0, 0, 1] = False
    keep[0, 1, 4] = False
    additive = np.where(keep, 0.0, -np.inf)
    for mask in (keep, additive):
        o, lse = FORWARDS_AND_NAIVE[name](q, k, v, attn_mask=mask)
        assert not np.isnan(o).any() and not np.isnan(lse).any()
        np.testing.assert_array_equal(o[~keep.any(-1)], 0.0)
        assert np.all(lse[~keep.any(-1)] == -np.inf)
    # bottom_right with Lq > Lk: the first Lq - Lk rows are empty.
    o, lse = FORWARDS_AND_NAIVE[name](q[:, :, :, :], k, v, causal="bottom_right")
    np.testing.assert_array_equal(o[:, :, :2], 0.0)
    assert np.all(lse[:, :, :2] == -np.inf) and np.all(np.isfinite(lse[:, 1, 2:]))


def _definition_mask(lq, lk, align, causal=True, window=(-1, -1)):
    d = 0 if align == "top_left" else lk - lq
    left, right = window
    if causal:
        right = 0 if right == -1 else min(right, 0)
    i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
    ok = np.ones((lq, lk), dtype=bool)
    if left != -1:
        ok &= j >= i + d - left
    if right != -1:
        ok &= j <= i + d + right
    return ok


@pytest.mark.parametrize("lq,lk", [(3, 7), (7, 3), (1, 6)])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("window", [(-1, -1), (1, 0), (2, 1)])
def test_causal_alignment_with_unequal_lengths_matches_the_definition(lq, lk, align, window):
    rng = np.random.default_rng(7)
    q, k, v = _rand(rng, lq=lq, lk=lk)
    explicit = _definition_mask(lq, lk, align, window=window)
    for name in ("mp", "tiled_mp"):
        a = FORWARDS[name](q, k, v, causal=align, window=window)
        b = FORWARDS[name](q, k, v, attn_mask=explicit)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # fp64: two evaluations of the same exact function, each within the derived bound of it.
    a = ref.forward_fp64(q, k, v, causal=align, window=window)
    b = ref.forward_fp64(q, k, v, attn_mask=explicit)
    bo, bl, _ = forward_bound(prepare(q, k, v, attn_mask=explicit))
    assert np.all(np.abs(a[0] - b[0]) <= 2 * bo)
    with np.errstate(invalid="ignore"):  # -inf - -inf on empty rows; those must be equal
        assert np.all((np.abs(a[1] - b[1]) <= 2 * bl) | (a[1] == b[1]))


@pytest.mark.parametrize("name", list(FORWARDS_AND_NAIVE))
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_window_at_least_the_length_equals_plain_causal(name, align):
    q, k, v = _rand(np.random.default_rng(8), lq=5, lk=7)
    a = FORWARDS_AND_NAIVE[name](q, k, v, causal=align, window=(7, 7))
    b = FORWARDS_AND_NAIVE[name](q, k, v, causal=align)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", list(FORWARDS_AND_NAIVE))
def test_softcap_none_zero_and_inf_are_identical(name):
    q, k, v = _rand(np.random.default_rng(9))
    base = FORWARDS_AND_NAIVE[name](q, k, v)
    for c in (0, 0.0, math.inf):
        out = FORWARDS_AND_NAIVE[name](q, k, v, softcap=c)
        np.testing.assert_array_equal(out[0], base[0])
        np.testing.assert_array_equal(out[1], base[1])


def test_softcap_converges_to_no_softcap_as_the_cap_grows():
    q, k, v = _rand(np.random.default_rng(10))
    q *= 3
    base = ref.forward_mp(q, k, v, prec=128, as_mpf=True)
    xmax = float(np.max(np.abs(np.einsum("bhie,bje->bhij", q, k[:, 0]))) / 2)  # |scale q.k|, E=4
    vmax = float(np.max(np.abs(v)))
    prev = None
    for c in (10.0, 1e3, 1e6):
        o, lse = ref.forward_mp(q, k, v, prec=128, softcap=c, as_mpf=True)
        d_s = xmax ** 3 / (3 * c * c)  # |c tanh(x/c) - x| <= |x|^3 / (3 c^2)
        do = max(abs(a - b) for a, b in zip(o.ravel(), base[0].ravel()))
        dl = max(abs(a - b) for a, b in zip(lse.ravel(), base[1].ravel()))
        # Moving every logit by <= d_s moves the LSE by <= d_s and a weighted mean by <= 2 d_s max|v|
        # (first order; the second-order term and 2^-120 of mp rounding are far below the slack).
        assert do <= 2 * (math.exp(2 * d_s) - 1) * vmax + 2.0 ** -110 and dl <= d_s + 2.0 ** -110
        assert do > 0
        if prev is not None:
            assert do < prev
        prev = do


@pytest.mark.parametrize("name", list(FORWARDS_AND_NAIVE))
def test_gqa_equals_mha_with_repeat_interleaved_kv(name):
    rng = np.random.default_rng(11)
    q, k, v = _rand(rng, h=6, hk=2)
    a = FORWARDS_AND_NAIVE[name](q, k, v, causal="bottom_right", softcap=3.0)
    b = FORWARDS_AND_NAIVE[name](q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), causal="bottom_right", softcap=3.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", list(FORWARDS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
def test_garbage_in_masked_keys_never_leaks_and_nan_reaches_only_attending_rows(name, bad):
    rng = np.random.default_rng(12)
    q, k, v = _rand(rng, lq=6, lk=6)
    clean = FORWARDS[name](q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[0, 0, 4, 1] = bad  # key 4 is masked for rows 0..3 (causal)
    v2[0, 0, 4, 2] = bad
    o, lse = FORWARDS[name](q, k2, v2, causal=True)
    np.testing.assert_array_equal(o[:, :, :4], clean[0][:, :, :4])
    np.testing.assert_array_equal(lse[:, :, :4], clean[1][:, :, :4])
    if np.isnan(bad):
        assert np.isnan(o[:, :, 4:]).all() and np.isnan(lse[:, :, 4:]).all()
    # A key masked for every row (bool attn_mask) never influences anything.
    keep = np.ones((6, 6), dtype=bool)
    keep[:, 4] = False
    a = FORWARDS[name](q, k, v, attn_mask=keep)
    b = FORWARDS[name](q, k2, v2, attn_mask=keep)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("name", list(FORWARDS))
def test_nan_in_one_query_row_reaches_only_that_row(name):
    q, k, v = _rand(np.random.default_rng(13))
    clean = FORWARDS[name](q, k, v)
    q2 = q.copy()
    q2[0, 1, 2, 0] = np.nan
    o, lse = FORWARDS[name](q2, k, v)
    bad = np.zeros(o.shape[:3], dtype=bool)
    bad[0, 1, 2] = True
    assert np.isnan(o[bad]).all() and np.isnan(lse[bad]).all()
    np.testing.assert_array_equal(o[~bad], clean[0][~bad])
    np.testing.assert_array_equal(lse[~bad], clean[1][~bad])


@pytest.mark.parametrize("name", ["fp64", "mp"])
def test_attn_mask_broadcasts_like_torch(name):
    rng = np.random.default_rng(14)
    q, k, v = _rand(rng, b=2, h=2, hk=2)
    bias = rng.standard_normal((2, 1, 1, 7))
    keep = rng.random((5, 7)) < 0.6
    for m in (bias, keep):
        a = FORWARDS[name](q, k, v, attn_mask=m)
        b = FORWARDS[name](q, k, v, attn_mask=np.ascontiguousarray(np.broadcast_to(m, (2, 2, 5, 7))))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # Additive mask = bias on the logits: equals an explicit shift of a single-key-block mp row.
    a = ref.forward_mp(q, k, v, attn_mask=np.where(keep, 0.0, -np.inf), prec=96)
    b = ref.forward_mp(q, k, v, attn_mask=keep, prec=96)
    np.testing.assert_array_equal(a[0], b[0])


def test_tiled_accepts_numpy_dtypes_as_arithmetic():
    for dt, name in ((np.float32, "fp32"), (np.float64, "fp64")):
        a = ref.forward_tiled(_Q, _K, _V, boundaries=2, arithmetic=dt)
        b = ref.forward_tiled(_Q, _K, _V, boundaries=2, arithmetic=name)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_naive_runs_in_the_input_dtype():
    rng = np.random.default_rng(15)
    q, k, v = (torch.from_numpy(x) for x in _rand(rng, dtype=np.float32))
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        o, lse = ref.forward_naive(q.to(dt), k.to(dt), v.to(dt), causal=True)
        assert o.dtype == dt and lse.dtype == dt and o.shape == (1, 2, 5, 3) and lse.shape == (1, 2, 5)


def test_fp64_memory_stays_bounded_at_long_context():
    # Unchunked, the (L, L) float64 logits alone would take 128 MiB at L = 4096.
    rng = np.random.default_rng(16)
    q, k, v = (rng.standard_normal((1, 1, 4096, 16)) for _ in range(3))
    tracemalloc.start()
    try:
        ref.forward_fp64(q, k, v, causal=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 96 * 2 ** 20, peak  # measured ~60 MiB: a few (256, 4096) float64 chunk temporaries

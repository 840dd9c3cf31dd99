"""spec/: mask semantics, argument validation and the online-softmax merge on numpy/floats."""
import math

import numpy as np
import pytest

from flashproof import spec
from flashproof.spec import Mask, make_mask


def brute_allowed(i, j, lq, lk, causal, align, left, right):
    d = 0 if align == "top_left" else lk - lq
    if causal:
        right = 0 if right == -1 else min(right, 0)
    ok = 0 <= j < lk
    if left != -1:
        ok &= j >= i + d - left
    if right != -1:
        ok &= j <= i + d + right
    return ok


@pytest.mark.parametrize("lq,lk", [(1, 1), (3, 7), (7, 3), (5, 5), (1, 9), (9, 1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("window", [(-1, -1), (0, 0), (2, 1), (-1, 3), (1, -1), (10, 10)])
def test_mask_matrix_matches_definition(lq, lk, causal, align, window):
    m = Mask(causal=causal, alignment=align, window=window)
    want = np.array([[brute_allowed(i, j, lq, lk, causal, align, *window) for j in range(lk)]
                     for i in range(lq)], dtype=bool).reshape(lq, lk)
    np.testing.assert_array_equal(m.matrix(lq, lk), want)
    lo, hi = m.key_range(np.arange(lq), lq, lk)
    for i in range(lq):  # allowed keys are one contiguous range
        np.testing.assert_array_equal(want[i], (np.arange(lk) >= lo[i]) & (np.arange(lk) < hi[i]))


def test_causal_alignments_differ_when_lengths_differ():
    tl = make_mask(causal=True).matrix(2, 4)
    br = make_mask(causal="bottom_right").matrix(2, 4)
    np.testing.assert_array_equal(tl, [[1, 0, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(br, [[1, 1, 1, 0], [1, 1, 1, 1]])
    # bottom_right with lq > lk leaves the first rows empty
    assert not make_mask(causal="bottom_right").matrix(4, 2)[:2].any()


def test_window_wider_than_sequence_equals_causal():
    for align in ("top_left", "bottom_right"):
        a = make_mask(causal=align, window=(100, 100)).matrix(6, 9)
        b = make_mask(causal=align).matrix(6, 9)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad,exc", [
    (dict(window=(-2, 0)), ValueError), (dict(window=(0, -5)), ValueError),
    (dict(window=(1,)), ValueError), (dict(window=(1.5, 0)), TypeError),
    (dict(window=(True, 0)), TypeError), (dict(causal="diagonal"), ValueError),
    (dict(causal=1.0), TypeError), (dict(causal="top_left", alignment="bottom_right"), ValueError),
])
def test_bad_mask_arguments_raise(bad, exc):
    with pytest.raises(exc):
        make_mask(**bad)


def test_scale_and_softcap_validation():
    assert spec.resolve_scale(None, 64) == 0.125
    assert spec.resolve_scale(0.5, 64) == 0.5
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="scale"):
            spec.resolve_scale(bad, 64)
    with pytest.raises(ValueError):
        spec.default_scale(0)
    assert spec.normalize_softcap(0) is None and spec.normalize_softcap(math.inf) is None
    with pytest.raises(ValueError, match="softcap"):
        spec.normalize_softcap(-1.0)
    s = np.linspace(-5, 5, 11)
    np.testing.assert_allclose(spec.apply_softcap(s, 1e12), s, rtol=1e-12)
    assert np.all(np.abs(spec.apply_softcap(s * 1e6, 3.0)) <= 3.0)


def test_gqa_mapping_and_dims():
    assert [spec.kv_head(h, 6, 2) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [spec.kv_head(h, 7, 1) for h in range(7)] == [0] * 7
    with pytest.raises(ValueError, match="multiple"):
        spec.kv_head(0, 6, 4)
    d = spec.check_dims((2, 6, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4))
    assert (d.heads, d.kv_heads, d.lq, d.lk, d.e, d.ev) == (6, 3, 5, 7, 8, 4)
    for shapes, word in [
        (((2, 6, 5), (2, 3, 7, 8), (2, 3, 7, 4)), "query"),
        (((2, 6, 5, 8), (2, 4, 7, 8), (2, 4, 7, 4)), "multiple"),
        (((2, 6, 5, 8), (2, 3, 7, 9), (2, 3, 7, 4)), "head dims"),
        (((2, 6, 5, 8), (2, 3, 7, 8), (2, 3, 6, 4)), "lengths"),
        (((2, 6, 5, 0), (2, 3, 7, 0), (2, 3, 7, 4)), "positive"),
    ]:
        with pytest.raises(ValueError, match=word):
            spec.check_dims(*shapes)


def _direct(s, v):
    keep = ~np.isneginf(s)
    if not keep.any():
        return np.zeros(v.shape[1]), -np.inf
    m = s[keep].max()
    p = np.exp(s[keep] - m)
    return p @ v[keep] / p.sum(), m + np.log(p.sum())


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_irregular_tiles_equals_direct(seed):
    rng = np.random.default_rng(seed)
    n, e = 37, 5
    s = rng.normal(size=n) * 10
    s[rng.random(n) < 0.3] = -np.inf
    v = rng.normal(size=(n, e))
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    blocks = np.split(np.arange(n), cuts)
    states = [spec.block_state(list(s[b]), [list(x) for x in v[b]], e) for b in blocks]
    rng.shuffle(states)  # the merge is commutative
    o, lse = spec.finalize(spec.fold(states, e))
    o_ref, lse_ref = _direct(s, v)
    np.testing.assert_allclose(o, o_ref, rtol=1e-12, atol=1e-12)  # fp64 rounding only
    assert lse == pytest.approx(lse_ref, rel=1e-12, abs=1e-12)


def test_empty_states_merge_without_nan():
    e = 3
    for ops in (spec.SCALAR, spec.NUMPY):
        idn = spec.identity(e, ops)
        both = spec.merge(idn, idn, ops)
        o, lse = spec.finalize(spec.State(np.float64(both.m), np.float64(both.l), np.asarray(both.acc)),
                               spec.NUMPY)
        assert np.all(o == 0) and lse == -np.inf
    st = spec.block_state([-np.inf, -np.inf], [[np.nan] * e, [np.inf] * e], e)
    assert st.l == 0 and all(a == 0 for a in st.acc)  # masked NaN/inf values never leak


def test_numpy_batched_rows_match_scalar_rows():
    rng = np.random.default_rng(7)
    r, n, e = 4, 9, 3
    s = rng.normal(size=(r, n)) * 30
    s[1] = -np.inf  # an empty row
    s[2, :4] = -np.inf
    v = rng.normal(size=(n, e))
    v[0] = np.nan  # only row 1 and 2 mask key 0; rows 0 and 3 attend it
    o, lse = spec.finalize(spec.merge(spec.block_state(s[:, :4], v[:4], e, spec.NUMPY),
                                      spec.block_state(s[:, 4:], v[4:], e, spec.NUMPY), spec.NUMPY),
                           spec.NUMPY)
    assert np.isnan(o[0]).all() and np.isnan(o[3]).all()
    assert np.all(o[1] == 0) and lse[1] == -np.inf
    o2, lse2 = _direct(s[2], v)
    np.testing.assert_allclose(o[2], o2, rtol=1e-12)
    assert lse[2] == pytest.approx(lse2, rel=1e-12)


def test_scalar_max_keeps_nan_so_nan_logits_propagate():
    st = spec.block_state([float("nan"), 1.0], [[1.0], [2.0]], 1)
    o, lse = spec.finalize(st)
    assert math.isnan(o[0]) and math.isnan(lse)
    st = spec.block_state([1.0, float("nan")], [[1.0], [2.0]], 1)
    assert math.isnan(spec.finalize(st)[0][0])


# ----------------------------------------------------------------------------- the dtype table
@pytest.mark.parametrize("name", spec.STORAGE_DTYPES)
def test_dtype_table_matches_torch_finfo(name):
    torch = pytest.importorskip("torch")
    fi = torch.finfo(getattr(torch, name))
    f = spec.FORMATS[name]
    assert (f.max, f.tiny, f.eps, f.u) == (fi.max, fi.tiny, fi.eps, fi.eps / 2)
    assert f.subnormal == fi.smallest_normal * fi.eps
    assert f.ulp(1.5) == fi.eps and f.ulp(0.0) == f.ulp(f.tiny / 3) == f.subnormal
    assert f.ulp(-f.max) == fi.eps * 2.0 ** (math.frexp(f.max)[1] - 1) and np.isnan(f.ulp(np.inf))


@pytest.mark.parametrize("given,want", [
    ("float16", "float16"), ("torch.bfloat16", "bfloat16"), ("half", "float16"), ("fp32", "float32"),
    ("bf16", "bfloat16"), ("double", "float64"), (np.float32, "float32"), (np.dtype("float64"), "float64"),
])
def test_dtype_name_normalises_every_spelling(given, want):
    assert spec.dtype_name(given) == want


def test_dtype_name_torch_dtypes_and_unknowns():
    torch = pytest.importorskip("torch")
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert spec.dtype_name(d) == str(d).replace("torch.", "")
    with pytest.raises(ValueError, match="int8"):
        spec.dtype_name(torch.int8)
    assert spec.dtype_name(torch.int8, strict=False) == "int8"
    assert spec.dtype_name("float8_e4m3fn", strict=False) == "float8_e4m3fn"


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32"])
def test_round_to_agrees_with_torch_bit_for_bit(name):
    """One numpy rounder: round to nearest even, subnormals, overflow to inf, NaN kept; from
    float64 it agrees with torch's conversion (through float32), from float32 too."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50000) * np.exp(rng.uniform(-110, 110, 50000))
    # values at and beside the ties of every format, and the edges
    mids = np.nextafter(np.float32(1.0), np.float32(2.0)) * (1 + 2.0 ** -11 + 2.0 ** -8 * np.arange(4))
    x = np.concatenate([x, mids, [np.nan, np.inf, -np.inf, 0.0, -0.0, 65519.99, 65520.0, 3.3961e38, 2.0 ** -150,
                                  2.0 ** -25, 2.0 ** -133, 1e39]])
    td = getattr(torch, name)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    for src in (x, x32):
        with np.errstate(over="ignore"):
            got = spec.round_to(src, name)
        want = torch.from_numpy(np.asarray(src)).to(td).to(torch.float32).numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)  # NaN == NaN here, and inf/-0.0 must match
        num = ~np.isnan(want)
        assert np.array_equal(np.signbit(got[num]), np.signbit(want[num]))  # -0.0 stays -0.0
    nan_payload = np.array([0x7F800001], dtype=np.uint32).view(np.float32)  # would carry into inf
    assert np.isnan(spec.round_to(nan_payload, "bfloat16")).all()


# ----------------------------------------------------------------------------- partials, identity, ops
def test_partial_states_merge_to_the_whole():
    """A finished partial (o, lse) is (lse, 1, o); merging the partials of a split equals the whole,
    empty parts (lse = -inf, o anything) are the identity: scalar and batched ops alike."""
    rng = np.random.default_rng(5)
    s = rng.normal(size=(3, 10)) * 5
    v = rng.normal(size=(10, 2))
    whole = spec.finalize(spec.block_state(s, v, 2, spec.NUMPY), spec.NUMPY)
    parts = []
    for a, b in ((0, 4), (4, 4), (4, 10)):
        o, lse = spec.finalize(spec.block_state(s[:, a:b], v[a:b], 2, spec.NUMPY), spec.NUMPY)
        if a == b:
            o = np.full_like(o, np.nan)  # an empty part's o is ignored
        parts.append(spec.partial_state(o, lse, spec.NUMPY))
    o, lse = spec.finalize(spec.fold(parts, 2, spec.NUMPY), spec.NUMPY)
    np.testing.assert_allclose(o, whole[0], rtol=1e-13)
    np.testing.assert_allclose(lse, whole[1], rtol=1e-13)
    row = [spec.partial_state(list(o[0]), lse[0]), spec.partial_state([math.nan, math.nan], -math.inf)]
    assert spec.fold(row, 2) == spec.merge(spec.identity(2), row[0])


def test_batched_identity_is_the_identity_of_every_row():
    for ops in (spec.NUMPY, spec.Float32Ops()):
        idn = spec.identity(3, ops, batch=(2, 4))
        assert idn.m.shape == (2, 4) and idn.l.shape == (2, 4) and idn.acc.shape == (2, 4, 3)
        assert idn.m.dtype == idn.l.dtype == idn.acc.dtype == np.asarray(ops.zero).dtype
        st = spec.block_state(np.arange(40.0).reshape(2, 4, 5) - 20, np.ones((5, 3), idn.acc.dtype), 3, ops)
        merged = spec.merge(idn, st, ops)
        for got, want in zip(merged, st):
            np.testing.assert_array_equal(got, want)
    with pytest.raises(NotImplementedError):
        spec.identity(3, spec.SCALAR, batch=(2,))


def test_one_mpmath_ops_propagates_nan_in_either_argument():
    mpmath = pytest.importorskip("mpmath")
    mp = spec.MP
    assert mp is spec.mpmath_ops() and isinstance(mp, spec.MpmathOps)
    nan, one = mpmath.mpf("nan"), mpmath.mpf(1)
    for a, b in ((nan, one), (one, nan), (nan, mpmath.ninf), (mpmath.ninf, nan)):
        assert mpmath.isnan(mp.maximum(a, b))
    st = spec.block_state([one, nan], [[one], [one]], 1, mp)
    assert mpmath.isnan(spec.finalize(st, mp)[1])


def test_float32_ops_round_p_and_report_the_lse_in_natural_log():
    ops, ops_bf16 = spec.Float32Ops(), spec.Float32Ops(p_dtype="bfloat16")
    s = np.array([[0.0, -0.3, -1.7]], dtype=np.float32)
    v = np.eye(3, dtype=np.float32)
    p = ops.exp(s)
    assert p.dtype == np.float32
    o = ops_bf16.weighted_sum(s, p, v, 3)
    np.testing.assert_array_equal(o, spec.round_to(p, "bfloat16"))
    o, lse = ops.finalize(spec.block_state(s, v, 3, ops))
    assert o.dtype == lse.dtype == np.float32
    assert abs(float(lse[0]) - math.log(sum(math.exp(x) for x in s[0].tolist()))) < 4e-7

    class Base2(spec.Float32Ops):
        ln_base = np.float32(math.log(2.0))

        def exp(self, x):
            return np.exp2(np.asarray(x, dtype=np.float32))

        def log(self, x):
            return np.log2(np.asarray(x, dtype=np.float32))

    t = s * np.float32(1 / math.log(2.0))  # base-2 logits
    _, lse2 = Base2().finalize(spec.block_state(t, v, 3, Base2()))
    assert abs(float(lse2[0]) - float(lse[0])) < 4e-7

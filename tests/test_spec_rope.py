"""spec/rope.py at reference level: the numpy float64 rope against a high-precision (mpmath) evaluation
of the same spec code, and re-encoded caches against keys encoded at the new positions, each within a
bound derived in proofs/rope.py (rope_error_bound, reencoding_error_bound, attention_shift_bound)."""
import mpmath
import numpy as np
import pytest

from flashproof import spec
from flashproof.proofs import rope as rope_proof

STYLES = spec.ROPE_STYLES


def _mp_rope(x, pos, style, thetas):
    """spec.apply_rope on mpmath numbers (60 digits), each row at its own position: the exact rotation
    by the float64 frequencies."""
    with mpmath.workdps(60):
        th = [mpmath.mpf(float(t)) for t in thetas]
        flat = x.reshape(-1, x.shape[-1])
        p = np.broadcast_to(pos, x.shape[:-1]).reshape(-1)
        out = [[float(c) for c in spec.apply_rope([mpmath.mpf(float(v)) for v in row], mpmath.mpf(float(pp)),
                                                  style=style, thetas=th, ops=rope_proof.MPMATH_TRIG)]
               for row, pp in zip(flat, p)]
    return np.array(out).reshape(x.shape)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("dim,max_pos", [(2, 10), (8, 4096), (64, 131072), (128, 1 << 20)])
def test_numpy_rope_within_rotation_error_bound(style, dim, max_pos):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(2, 3, 5, dim)) * 10.0 ** rng.uniform(-4, 4, size=(2, 3, 5, 1))
    pos = rng.integers(0, max_pos, size=5).astype(np.float64)  # broadcasts over (B, H, L)
    got = spec.apply_rope(x, pos, style=style)
    ref = _mp_rope(x, pos, style, spec.rope_frequencies(dim))
    bound = rope_proof.rope_error_bound(x, pos, style=style)  # proofs/rope.py: rope_error_bound
    ratio = np.abs(got - ref) / bound
    assert got.shape == x.shape and got.dtype == np.float64
    assert np.all(ratio <= 1), f"max error / rope_error_bound = {ratio.max():.3g} at {np.unravel_index(ratio.argmax(), ratio.shape)}"


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seed", range(4))
def test_reencoded_cache_matches_keys_encoded_at_new_positions(style, seed):
    """Keys cached at positions p, moved by Δ with spec.reposition_keys, against keys encoded at p + Δ:
    per component within reencoding_error_bound, and the attention of a query at its new position
    within attention_shift_bound of the logit change those key errors allow."""
    rng = np.random.default_rng(100 + seed)
    dim, n = [(16, 7), (64, 33), (128, 20), (256, 9)][seed]
    k = rng.normal(size=(n, dim)) * 3
    v = rng.normal(size=(n, 4))
    q = rng.normal(size=dim) * 3
    p = rng.integers(0, 1 << 16, size=n).astype(np.float64)
    delta = float(rng.integers(-(1 << 15), 1 << 15))
    cached = spec.apply_rope(k, p, style=style)
    moved = spec.reposition_keys(cached, delta, style=style)
    fresh = spec.apply_rope(k, p + delta, style=style)
    kb = rope_proof.reencoding_error_bound(k, p, delta, style=style)  # proofs/rope.py: reencoding_error_bound
    assert np.all(np.abs(moved - fresh) <= kb), f"max key error / bound {np.max(np.abs(moved - fresh) / kb):.3g}"
    qpos = float(p.max() + delta + 1)
    qr = spec.apply_rope(q, qpos, style=style)
    scale = 1 / np.sqrt(dim)
    with mpmath.workdps(50):
        def attend(keys):
            logits = [mpmath.fsum(mpmath.mpf(float(a)) * mpmath.mpf(float(b)) for a, b in zip(qr, kk)) * scale
                      for kk in keys]
            mx = max(logits)
            w = [mpmath.exp(x - mx) for x in logits]
            z = mpmath.fsum(w)
            return np.array([float(mpmath.fsum(wi * mpmath.mpf(float(vi[c])) for wi, vi in zip(w, v)) / z)
                             for c in range(v.shape[1])])
        o_moved, o_fresh = attend(moved), attend(fresh)
    delta_logit = scale * np.max(np.abs(qr) @ kb.T)  # every logit moves by at most this
    bound = rope_proof.attention_shift_bound(delta_logit, np.ptp(v, axis=0))  # proofs/rope.py: attention_shift_bound
    assert np.all(np.abs(o_moved - o_fresh) <= bound), (np.abs(o_moved - o_fresh), bound)


def test_numpy_trig_within_the_model():
    """rope_error_bound assumes numpy's float64 cos/sin err by at most C_TRIG units of 2^-53 (absolute)."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-s, s, 400) for s in (1, 1e2, 1e4, 1e6)])
    c, s = np.cos(x), np.sin(x)
    with mpmath.workdps(40):
        err = max(max(abs(float(ci - mpmath.cos(mpmath.mpf(float(xi))))), abs(float(si - mpmath.sin(mpmath.mpf(float(xi))))))
                  for xi, ci, si in zip(x, c, s))
    assert err <= rope_proof.C_TRIG * rope_proof.U64, f"measured {err / rope_proof.U64:.3g} u > C_TRIG"


def test_styles_pair_differently_and_are_permutations_of_each_other():
    assert spec.rope_pairs(6, spec.INTERLEAVED) == [(0, 1), (2, 3), (4, 5)]
    assert spec.rope_pairs(6, spec.HALF) == [(0, 3), (1, 4), (2, 5)]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6))
    pos = np.arange(4.0) * 7
    half = spec.apply_rope(x, pos, style=spec.HALF)
    inter = spec.apply_rope(x, pos, style=spec.INTERLEAVED)
    assert not np.allclose(half, inter)
    perm = [c for ab in spec.rope_pairs(6, spec.HALF) for c in ab]
    np.testing.assert_array_equal(spec.apply_rope(x[:, perm], pos, style=spec.INTERLEAVED), half[:, perm])


def test_position_zero_is_identity_and_the_result_is_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8))
    np.testing.assert_array_equal(spec.apply_rope(x, 0.0), x)  # cos 0 = 1, sin 0 = 0 exactly
    y = spec.apply_rope(x.astype(np.float32), np.array([1.0, 50.0, 3000.0]))
    assert y.dtype == np.float64 and y.shape == x.shape


@pytest.mark.parametrize("kwargs,match", [
    (dict(x=np.zeros((2, 5))), "even head dim"),
    (dict(x=np.zeros((2, 4)), style="neox"), "style must be one of"),
    (dict(x=np.zeros((2, 4)), thetas=[1.0]), "1 frequencies for head dim 4"),
    (dict(x=np.zeros((2, 4)), positions=np.array([0.0, np.inf])), "finite"),
    (dict(x=np.zeros((2, 4)), base=1.0), "base must be > 1"),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    args = dict(positions=np.zeros(2))
    args.update(kwargs)
    x = args.pop("x")
    with pytest.raises(ValueError, match=match):
        spec.apply_rope(x, args.pop("positions"), **args)


def test_reencoding_bound_needs_integer_positions():
    with pytest.raises(ValueError, match="integer positions"):
        rope_proof.reencoding_error_bound(np.ones((1, 4)), np.array([0.5]), 1.0)


def test_attention_shift_bound_is_zero_for_one_value_and_never_nan():
    """A column with one distinct value cannot move, however far the logits do (found on the H200:
    one allowed key at logits of 1e5 gave inf * 0 = NaN, a false alarm)."""
    b = rope_proof.attention_shift_bound(np.array([0.0, 1e3, np.inf, 1e3]), np.array([0.0, 0.0, 0.0, 1.0]))
    assert not np.isnan(b).any()
    assert (b[:3] == 0).all() and b[3] == np.inf

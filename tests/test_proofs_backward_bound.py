"""Theorem 4b, numerically: running_backward_bound holds for a kernel-like FA2 backward (fp32
arithmetic through spec's merge for the forward, P recomputed from the base-2 LSE, dS and P rounded
to the storage dtype) against an fp64 backward, is violated by a precision-downgraded backward,
and its API follows running_forward_bound's conventions (masks, GQA, empty rows, NaN, dlse)."""
import numpy as np
import pytest
import torch

from flashproof.proofs import kernel_sim as ks
from flashproof.proofs import precision_for
from flashproof.proofs.bounds import Unbounded
from flashproof.proofs.bounds_backward import running_backward_bound

DTYPES = ("float16", "bfloat16", "float32")


def _case(rng, store, regime, lq=6, lk=23, e=16, ev=8, h=2, hk=1):
    q = rng.standard_normal((1, h, lq, e))
    k = rng.standard_normal((1, hk, lk, e))
    v = rng.standard_normal((1, hk, lk, ev))
    do = rng.standard_normal((1, h, lq, ev))
    if regime == "large logits":
        q, k = q * 4, k * 4
    elif regime == "offset v":
        v = 50 + v
    elif regime == "big dO":
        do = do * 100
    elif regime == "dominant key":
        k[0, 0, min(3, lk - 1)] = 4 * q[0, 0, 0]
    return [ks.round_to(x, store).astype(np.float64) for x in (q, k, v, do)]


@pytest.mark.parametrize("store", DTYPES)
@pytest.mark.parametrize("regime", ["random", "large logits", "offset v", "big dO", "dominant key"])
@pytest.mark.parametrize("causal", [False, "bottom_right"])
def test_simulated_backward_within_bound(store, regime, causal):
    rng = np.random.default_rng(abs(hash((store, regime, causal))) % 2 ** 32)
    for rep in range(2):
        q, k, v, do = _case(rng, store, regime, lq=int(rng.integers(1, 9)), lk=int(rng.integers(2, 40)))
        lk = k.shape[2]
        bn = int(rng.choice([1, 4, 16]))
        edges = list(range(0, lk, bn)) + [lk]
        got = ks.simulate_backward(q, k, v, do, store=store, boundaries=edges, causal=causal)
        ref = ks.exact_backward_fp64(q, k, v, do, causal=causal)
        bnd = running_backward_bound(q, k, v, do, precision=precision_for(store), n_tiles=len(edges) - 1,
                                     causal=causal, on_unbounded="raise")
        for name, g, r, b in zip(("dq", "dk", "dv"), got, ref, bnd):
            err = np.abs(g - r) + 1e-12 * np.abs(r)
            assert np.all(err <= b), f"{name} {store} {regime}: max error/bound {np.max(err / np.where(b > 0, b, 1)):.3g}"


def test_downgraded_backward_violates_the_bound():
    """An fp16 backward that rounds dS and P to bf16 (8x coarser) exceeds the fp16 bound, and stays
    within the bf16 one: the bound is not vacuous."""
    rng = np.random.default_rng(3)
    worst, worst_bf = 0.0, 0.0
    for _ in range(4):
        q, k, v, do = _case(rng, "float16", "random", lq=8, lk=48, e=32, ev=16)
        got = ks.simulate_backward(q, k, v, do, store="bfloat16", boundaries=[0, 16, 32, 48])
        ref = ks.exact_backward_fp64(q, k, v, do)
        b16 = running_backward_bound(q, k, v, do, precision=precision_for("float16"), n_tiles=3)
        bbf = running_backward_bound(q, k, v, do, precision=precision_for("bfloat16"), n_tiles=3)
        for g, r, b1, b2 in zip(got, ref, b16, bbf):
            worst = max(worst, float(np.max(np.abs(g - r) / b1)))
            worst_bf = max(worst_bf, float(np.max(np.abs(g - r) / b2)))
    assert worst > 1, f"a bf16-rounding backward stayed within the fp16 bound (ratio {worst:.3g})"
    assert worst_bf <= 1


def test_conventions_masks_gqa_empty_rows_nan():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 6, 8, generator=g).half()
    k = torch.randn(1, 2, 9, 8, generator=g).half()
    v = torch.randn(1, 2, 9, 5, generator=g).half()
    do = torch.randn(1, 4, 6, 5, generator=g).half()
    p = precision_for(torch.float16)
    dq, dk, dv = running_backward_bound(q, k, v, do, precision=p, causal="bottom_right", window=(2, 0))
    assert dq.shape == (1, 4, 6, 8) and dk.shape == (1, 2, 9, 8) and dv.shape == (1, 2, 9, 5)
    assert np.isfinite(dq).all() and (dq > 0).all()
    # keys 0..1 are attended by no row (window 2 back from the bottom-right diagonal): zero bound
    assert (dk[:, :, :1] == 0).all() and (dv[:, :, :1] == 0).all()
    # GQA: dK of a kv head sums over its query heads; repeating the kv heads splits it
    a = running_backward_bound(q, k, v, do, precision=p)
    b = running_backward_bound(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), do, precision=p)
    np.testing.assert_array_equal(a[0], b[0])  # dQ rows do not depend on the batch
    assert np.all(a[1][0, 0] >= b[1][0, 0]) and np.all(a[1][0, 0] >= b[1][0, 1])
    # empty rows: causal top-left with Lq > Lk has none; bottom-right with Lq > Lk has empty first rows
    q2 = torch.randn(1, 2, 12, 8, generator=g).half()
    do2 = torch.randn(1, 2, 12, 5, generator=g).half()
    dq2, _, _ = running_backward_bound(q2, k, v, do2, precision=p, causal="bottom_right")
    assert (dq2[:, :, :3] == 0).all() and (dq2[:, :, 3:] > 0).all()
    # NaN in an allowed dO row: no claim for that row's dq and for every key it attends
    do3 = do.clone()
    do3[0, 1, 2, 0] = float("nan")
    dq3, dk3, dv3 = running_backward_bound(q, k, v, do3, precision=p)
    assert np.isnan(dq3[0, 1, 2]).all() and np.isfinite(np.delete(dq3[0, 1], 2, axis=0)).all()
    assert np.isnan(dk3[0, 0]).all() and np.isfinite(dk3[0, 1]).all()


def test_validation_and_explicit_forward_errors():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 5, 8, generator=g) for _ in range(3))
    do = torch.randn(1, 1, 5, 8, generator=g)
    p = precision_for(torch.float32)
    with pytest.raises(ValueError, match="grad_out"):
        running_backward_bound(q, k, v, do[..., :3], precision=p)
    with pytest.raises(ValueError, match="dlse"):
        running_backward_bound(q, k, v, do, precision=p, dlse=torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="o_error"):
        running_backward_bound(q, k, v, do, precision=p, o_error=-np.ones((1, 1, 5, 8)), lse_error=np.zeros((1, 1, 5)))
    with pytest.raises(TypeError, match="precision"):
        running_backward_bound(q, k, v, do, precision="fp32")
    base = running_backward_bound(q, k, v, do, precision=p)
    more = running_backward_bound(q, k, v, do, precision=p, o_error=np.full((1, 1, 5, 8), 1e-3),
                                  lse_error=np.full((1, 1, 5), 1e-3))
    assert all(np.all(m >= b_) and np.any(m > b_) for m, b_ in zip(more, base))
    with pytest.raises(Unbounded):
        running_backward_bound(q, k, v, do, precision=p, lse_error=np.full((1, 1, 5), np.inf),
                               o_error=np.zeros((1, 1, 5, 8)), on_unbounded="raise")


def test_accumulation_model_widens_the_bound():
    from flashproof.proofs.accumulation import block_fma_name
    rng = np.random.default_rng(2)
    q, k, v, do = _case(rng, "float16", "random", lq=4, lk=40, e=64, ev=32)
    a = running_backward_bound(q, k, v, do, precision=precision_for("float16"))
    b = running_backward_bound(q, k, v, do, precision=precision_for("float16", accumulator=block_fma_name(8, 0, "rz")))
    assert all(np.all(y >= x) and np.any(y > x) for x, y in zip(a, b))

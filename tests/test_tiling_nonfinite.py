"""docs/findings.md F10: an allowed pair whose logit is -inf because k_j holds an inf was dropped in
masked tiles but kept in full ones, so the NaN pattern of dQ (and of O, with an inf in v_j) depended on
the tiling. The reference (spec/README.md "NaN and inf policy", strict): dS_ij = 0 there and
0 * inf = NaN reaches dQ (and O) of every row attending key j, and of no row an additive -inf drops it
from (the bias case: every tile masked, the kept set carried by blocks.signed_keep)."""
import numpy as np
import pytest
import torch

from flashproof import kernels
from test_kernels_util import backward_fp64


@pytest.mark.parametrize("blocks", [(16, 16), (32, 32)])
def test_dq_nonfinite_pattern_does_not_depend_on_the_tiling(blocks):
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 1, 32, 16, generator=g) + 0.5  # positive, so q_i . k_3 = -inf for every row
    k, v, do = (torch.randn(1, 1, 32, 16, generator=g) for _ in range(3))
    k[0, 0, 3, 0] = -float("inf")
    qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
    o = kernels.attention(qq, kk, vv, causal=True, block_m=blocks[0], block_n=blocks[1])
    dq, _, _ = torch.autograd.grad(o, (qq, kk, vv), do)
    want = np.isnan(backward_fp64(q, k, v, do, causal=True)[0][0, 0]).any(-1)  # rows 3..31
    got = torch.isnan(dq[0, 0]).any(-1).numpy()
    assert (got == want).all(), f"dq NaN rows {np.flatnonzero(got).tolist()}, reference {np.flatnonzero(want).tolist()}"


@pytest.mark.parametrize("blocks", [(16, 16), (32, 32)])
def test_output_nonfinite_pattern_does_not_depend_on_the_tiling(blocks):
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 1, 32, 16, generator=g) + 0.5
    k, v = (torch.randn(1, 1, 32, 16, generator=g) for _ in range(2))
    k[0, 0, 3, 0] = -float("inf")
    v[0, 0, 3, 5] = float("inf")  # P_i3 = 0 exactly, and 0 * inf = NaN in O_i for every row attending key 3
    o = kernels.attention(q, k, v, causal=True, block_m=blocks[0], block_n=blocks[1])
    got = np.flatnonzero(torch.isnan(o[0, 0]).any(-1).numpy()).tolist()
    assert got == list(range(3, 32)), f"o NaN rows {got}, reference rows 3..31"


def test_bias_drops_the_pair_and_the_mask_keeps_it():
    """sdpa's float attn_mask (every tile masked): rows 10..15 drop key 3 by an additive -inf, so no NaN
    reaches them; every other row attending key 3 gets 0 * inf = NaN in O and in dQ."""
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 1, 32, 16, generator=g) + 0.5
    k, v, do = (torch.randn(1, 1, 32, 16, generator=g) for _ in range(3))
    k[0, 0, 3, 0] = -float("inf")
    v[0, 0, 3, 5] = float("inf")
    bias = torch.zeros(32, 32).masked_fill(torch.ones(32, 32, dtype=torch.bool).triu(1), -float("inf"))
    bias[10:16, 3] = -float("inf")
    want = [i for i in range(3, 32) if not 10 <= i < 16]
    qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
    o = kernels.sdpa(qq, kk, vv, attn_mask=bias)
    dq, _, _ = torch.autograd.grad(o, (qq, kk, vv), do)
    for name, t in (("o", o), ("dq", dq)):
        got = np.flatnonzero(torch.isnan(t[0, 0]).any(-1).detach().numpy()).tolist()
        assert got == want, f"{name} NaN rows {got}, reference rows {want}"

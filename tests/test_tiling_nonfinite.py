"""docs/findings.md F10 (open): an allowed pair whose logit is -inf because k_j holds an inf is dropped
in masked tiles but kept in full ones, so the NaN pattern of dQ (and of O, with an inf in v_j) depends on
the tiling. The reference
(spec/README.md "NaN and inf policy", strict): dS_ij = 0 there and 0 * inf = NaN reaches dQ of every
row attending key j. Pinned as a strict xfail: the test starts passing (and so fails) when the fix lands."""
import numpy as np
import pytest
import torch

from flashproof import kernels
from test_kernels_util import backward_fp64


@pytest.mark.xfail(strict=True, reason="docs/findings.md F10: dQ drops allowed -inf-logit pairs in masked tiles only")
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


@pytest.mark.xfail(strict=True, reason="docs/findings.md F10: the forward drops allowed -inf-logit pairs in masked tiles only")
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

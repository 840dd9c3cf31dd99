"""docs/findings.md F10: an allowed pair whose logit is -inf because k_j holds an inf was dropped in masked
tiles (kept by `s != -inf`) but kept in full ones, so the NaN pattern depended on the tiling. The reference
(spec/README.md "NaN and inf policy", strict): P_ij = 0 and dS_ij = 0 there, and 0 * inf = NaN reaches dQ of
every row attending key j (and O of every such row when v_j holds an inf). Masked tiles now keep pairs by the
mask and the bias."""
import numpy as np
import pytest
import torch

from flashproof import kernels
from test_kernels_util import backward_fp64


def _inputs():
    g = torch.Generator().manual_seed(0)
    q = torch.rand(1, 1, 32, 16, generator=g) + 0.5  # positive, so q_i . k_3 = -inf for every row
    k, v, do = (torch.randn(1, 1, 32, 16, generator=g) for _ in range(3))
    k[0, 0, 3, 0] = -float("inf")
    return q, k, v, do


def _nan_rows(x):
    return np.flatnonzero(np.isnan(np.asarray(x)).any(-1)).tolist()


@pytest.mark.parametrize("blocks", [(16, 16), (32, 32)])
def test_dq_nonfinite_pattern_does_not_depend_on_the_tiling(blocks):
    q, k, v, do = _inputs()
    qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
    o = kernels.attention(qq, kk, vv, causal=True, block_m=blocks[0], block_n=blocks[1])
    dq, _, _ = torch.autograd.grad(o, (qq, kk, vv), do)
    want = _nan_rows(backward_fp64(q, k, v, do, causal=True)[0][0, 0])
    assert want == list(range(3, 32)), want
    assert _nan_rows(dq[0, 0]) == want, "dq: rows with a NaN differ from the fp64 reference"


@pytest.mark.parametrize("blocks", [(16, 16), (32, 32)])
def test_output_nonfinite_pattern_does_not_depend_on_the_tiling(blocks):
    q, k, v, _ = _inputs()
    v[0, 0, 3, 5] = float("inf")  # P_i3 = 0 exactly, and 0 * inf = NaN in O_i for every row attending key 3
    o = kernels.attention(q, k, v, causal=True, block_m=blocks[0], block_n=blocks[1])
    assert _nan_rows(o[0, 0]) == list(range(3, 32)), _nan_rows(o[0, 0])

"""The split dK/dV backward (tiles.backward_split, attention.SPLIT_DKDV): dV and dK from two
launches of _bwd_dkdv_kernel (COMPUTE_DV, then COMPUTE_DK) give bitwise the gradients of the
fused launch, under the interpreter: each accumulator sees the same operands and the same MMA
order, and each launch's two passes (blocks.rerun_flag) rewrite only what that launch stores.
The fused kernel itself is checked against fp64 in test_kernels_backward.py."""
import sys

import pytest
import torch

from flashproof import kernels
from flashproof.kernels import attention, sdpa
from flashproof.kernels.tiles import backward_split

from test_kernels_util import rand

A = sys.modules["flashproof.kernels.attention"]


def _spy(monkeypatch):
    """Records (COMPUTE_DK, COMPUTE_DV, EXACT, rerun flags after the launch) of each dK/dV launch."""
    real, seen = A._launch, []

    def spy(kernel, grid, *args, **meta):
        out = real(kernel, grid, *args, **meta)
        if getattr(kernel, "fn", None) is not None and kernel.fn.__name__ == "_bwd_dkdv_kernel":
            seen.append((meta["COMPUTE_DK"], meta["COMPUTE_DV"], meta["EXACT"], args[0].clone()))
        return out

    monkeypatch.setattr(A, "_launch", spy)
    return seen


def _bits(x):
    """The bit pattern (NaN payloads and signed zeros included): bitwise equality that NaN passes."""
    return x.contiguous().view({2: torch.int16, 4: torch.int32}[x.element_size()])


def _both(monkeypatch, fn):
    """fn() with the split forced off and on, its tensors as bit patterns; asserts that the dK/dV
    launches were the fused one, then the dV and the dK ones (else the comparison is vacuous)."""
    seen = _spy(monkeypatch)
    res = {}
    for split in (False, True):
        monkeypatch.setattr(A, "SPLIT_DKDV", split)
        seen.clear()
        res[split] = fn()
        variants = [(dk, dv) for dk, dv, exact, _ in seen if not exact]
        if variants:  # none when Lq = 0 (dK, dV are zeros, no launch)
            assert variants == ([(False, True), (True, False)] if split else [(True, True)]), variants
    return res[False], res[True], list(seen)


def _assert_same(off, on, names=("dq", "dk", "dv")):
    for name, a, b in zip(names, off, on):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        diff = (_bits(a) != _bits(b))
        assert not diff.any(), (f"{name}: split and fused differ at {diff.nonzero()[:5].tolist()} "
                                f"({int(diff.sum())} of {diff.numel()})")


def _grads(q, k, v, do, **kw):
    qq, kk, vv = (x.detach().clone().requires_grad_() for x in (q, k, v))
    o = attention(qq, kk, vv, **kw)
    return torch.autograd.grad(o, (qq, kk, vv), do)


CASES = [
    # dtype, b, h, hkv, lq, lk, e, ev, options; block_m = block_n = 16 unless the options say
    (torch.float16, 1, 2, 1, 33, 40, 40, 40, dict(causal=True)),                      # GQA 2:1, top-left, E=40
    (torch.bfloat16, 2, 2, 2, 37, 21, 32, 48, dict(causal="bottom_right")),          # empty rows (Lq > Lk), E != Ev
    (torch.float32, 1, 3, 1, 19, 35, 24, 16, dict(window=(4, 3), softcap=5.0)),      # Kahan path, window, softcap, GQA 3:1
    (torch.bfloat16, 1, 2, 1, 20, 20, 256, 256, dict(causal=True, softcap=8.0)),     # E=256 (the split's target)
    (torch.float16, 1, 2, 2, 5, 40, 40, 72, dict(causal="bottom_right", window=(-1, 0), block_m=32, block_n=32)),
    (torch.float32, 1, 2, 2, 17, 1, 16, 16, dict(causal="bottom_right")),            # Lk = 1
    (torch.float16, 1, 2, 1, 0, 9, 16, 16, dict()),                                  # Lq = 0
    (torch.bfloat16, 1, 1, 1, 3, 0, 16, 16, dict()),                                 # Lk = 0: every row empty
]


@pytest.mark.parametrize("dtype,b,h,hkv,lq,lk,e,ev,opts", CASES,
                         ids=[f"{str(c[0])[6:]}-L{c[4]}x{c[5]}-E{c[6]}x{c[7]}-{i}" for i, c in enumerate(CASES)])
def test_split_equals_fused_bitwise(monkeypatch, dtype, b, h, hkv, lq, lk, e, ev, opts):
    g = torch.Generator().manual_seed(lq * 100 + lk + e)
    q, k, v = rand(b, h, lq, e, dtype=dtype, gen=g), rand(b, hkv, lk, e, dtype=dtype, gen=g), \
        rand(b, hkv, lk, ev, dtype=dtype, gen=g)
    do = rand(b, h, lq, ev, dtype=dtype, gen=g)
    opts = dict(dict(block_m=16, block_n=16), **opts)
    off, on, _ = _both(monkeypatch, lambda: _grads(q, k, v, do, **opts))
    _assert_same(off, on)
    for x in on:
        assert torch.isfinite(x).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("where", ["v", "q", "do"])
def test_split_equals_fused_with_nan_and_inf(monkeypatch, where):
    """spec/README.md "NaN and inf policy": NaN/inf in an attended v or q (or in dO) reach the
    gradients the exact pass gives; the split launches flag and rewrite their own outputs and come
    out bitwise the fused ones (with their NaNs). NaN in V never reaches dV = P^T dO: the dV launch
    does not read V and flags nothing. NaN in dO: the fast pass' 0 * NaN at masked pairs of dV's
    MMA, which only the dV launch's own flags send to its exact pass."""
    g = torch.Generator().manual_seed(7)
    dt = torch.float16 if where == "v" else torch.bfloat16
    q, k, v = rand(1, 2, 32, 40, dtype=dt, gen=g), rand(1, 1, 32, 40, dtype=dt, gen=g), rand(1, 1, 32, 24, dtype=dt, gen=g)
    do = rand(1, 2, 32, 24, dtype=dt, gen=g)
    if where == "v":
        v[0, 0, 20, 3] = float("nan")   # key 20: attended by rows >= 20, a masked (diagonal) tile
        v[0, 0, 5, 7] = float("inf")
    elif where == "q":
        q[0, 1, 18, 0] = float("inf")   # row 18 of head 1: inf logits, NaN P
        q[0, 0, 9, 2] = float("nan")
    else:
        do[0, 0, 20, 3] = float("nan")  # row 20 meets keys 21..31 it does not attend in its tile
        do[0, 1, 4, 5] = float("-inf")
    off, on, seen = _both(monkeypatch, lambda: _grads(q, k, v, do, causal=True, window=(6, 1), block_m=16, block_n=16))
    _assert_same(off, on)
    assert any(torch.isnan(x).any() for x in on), "no NaN reached a gradient: the case is vacuous"
    assert all(torch.isfinite(x).any() for x in on), "every gradient entry non-finite: the case is vacuous"
    flags = {(dk, dv): f for dk, dv, exact, f in seen if not exact}
    assert int(flags[(True, False)].sum()) >= 1, "the dK launch must flag the programs the non-finite values reach"
    if where != "v":
        assert int(flags[(False, True)].sum()) >= 1, "the dV launch must flag the programs the non-finite values reach"
    if where == "v":
        assert int(flags[(False, True)].sum()) == 0, "the dV launch read V or flagged a finite dV"
        assert torch.isfinite(on[2]).all()


def test_split_equals_fused_through_lse(monkeypatch):
    """The dlse path (D = rowsum(dO O) - dlse, proofs/backward.py theorem 4): a loss of both o and lse."""
    for dt in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(3)
        q, k, v = (rand(1, 2, 23, 16, dtype=dt, gen=g) for _ in range(3))
        w = rand(1, 2, 23, dtype=torch.float32, gen=g)
        do = rand(1, 2, 23, 16, dtype=dt, gen=g)

        def run():
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
            o, lse = attention(qq, kk, vv, causal=True, return_lse=True, block_m=16, block_n=16)
            return torch.autograd.grad((o.float() * do.float()).sum() + (lse * w).sum(), (qq, kk, vv))

        off, on, _ = _both(monkeypatch, run)
        _assert_same(off, on)


def test_split_equals_fused_with_attn_mask(monkeypatch):
    """kernels.sdpa's additive bias (a bool mask with a fully masked row, then a float mask)."""
    g = torch.Generator().manual_seed(4)
    for dt in (torch.bfloat16, torch.float16):
        q, k, v = rand(2, 2, 17, 32, dtype=dt, gen=g), rand(2, 1, 21, 32, dtype=dt, gen=g), rand(2, 1, 21, 24, dtype=dt, gen=g)
        do = rand(2, 2, 17, 24, dtype=dt, gen=g)
        m = torch.rand(2, 1, 17, 21, generator=g) > 0.4
        m[0, 0, 5] = False  # an empty row: zero gradients, never NaN
        for mask in (m, torch.randn(2, 2, 17, 21, generator=g).to(dt)):
            def run():
                qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))
                o = sdpa(qq, kk, vv, attn_mask=mask, enable_gqa=True)
                return torch.autograd.grad(o, (qq, kk, vv), do)

            off, on, _ = _both(monkeypatch, run)
            _assert_same(off, on)
            assert all(torch.isfinite(x).all() for x in on)


def test_backward_split_rule_and_override(monkeypatch):
    """tiles.backward_split: fp16/bf16 with a head block above 128, never fp32 or the interpreter;
    _plan takes the rule unless SPLIT_DKDV forces it."""
    for dt in (torch.float16, torch.bfloat16):
        assert backward_split(head_dim=256, head_dim_v=256, dtype=dt, interpret=False)
        assert backward_split(head_dim=192, head_dim_v=64, dtype=dt, interpret=False)   # head block 256
        assert backward_split(head_dim=64, head_dim_v=129, dtype=dt, interpret=False)
        assert not backward_split(head_dim=128, head_dim_v=128, dtype=dt, interpret=False)
        assert not backward_split(head_dim=256, head_dim_v=256, dtype=dt, interpret=True)
    assert not backward_split(head_dim=256, head_dim_v=256, dtype=torch.float32, interpret=False)
    q = torch.zeros(1, 1, 8, 256, dtype=torch.bfloat16)

    def plan():
        return A._plan(q, q, q, mask=A.spec.make_mask(causal=False), scale=None, softcap=None, block_m=None,
                       block_n=None, num_warps=None, num_stages=None, allow_tf32=False)

    monkeypatch.setattr(A, "SPLIT_DKDV", None)
    assert plan().split_dkdv is False  # interpreted
    monkeypatch.setattr(A, "interpreting", lambda: False)  # the plan only: nothing is launched here
    assert plan().split_dkdv is True
    monkeypatch.setattr(A, "SPLIT_DKDV", False)
    assert plan().split_dkdv is False
    monkeypatch.setattr(A, "SPLIT_DKDV", True)
    monkeypatch.setattr(A, "interpreting", kernels.runtime.interpreting)
    assert plan().split_dkdv is True


def test_the_split_target_runs_the_split_kernels(monkeypatch):
    """tests/split_targets.py (the backward properties through the split kernels:
    ``cd tests && flashproof check split_targets:kernel_split_dkdv --select 'grad*'``) does split,
    and leaves the module's switch as it found it."""
    import split_targets

    target = split_targets.kernel_split_dkdv()
    seen = _spy(monkeypatch)
    g = torch.Generator().manual_seed(6)
    q, k, v = (rand(1, 2, 20, 16, dtype=torch.float16, gen=g).requires_grad_() for _ in range(3))
    target.forward(q, k, v, causal=True).sum().backward()
    assert {(dk, dv) for dk, dv, _, _ in seen} == {(False, True), (True, False)}
    assert A.SPLIT_DKDV is None


def test_split_backward_default_tiles_fit_and_are_the_measured_ones():
    """tiles.default_backward_config's split tiles above E=128 (the H200 sweep's fastest, session 7) pass
    the backward shared-memory estimate for every 16-bit dtype and E, Ev in (128, 256]."""
    from flashproof.kernels.tiles import TileConfig, check_tile_config, default_backward_config

    for dtype in (torch.float16, torch.bfloat16):
        for e, ev in ((256, 256), (192, 256), (256, 64), (136, 136)):
            c = default_backward_config(head_dim=e, head_dim_v=ev, dtype=dtype, interpret=False, split=True)
            assert c == TileConfig(32, 64, 4, 2), (dtype, e, ev, c)
            check_tile_config(*c, head_dim=e, head_dim_v=ev, dtype=dtype, backward=True)
    assert default_backward_config(head_dim=128, head_dim_v=128, dtype=torch.bfloat16, interpret=False,
                                   split=True) == default_backward_config(head_dim=128, head_dim_v=128,
                                                                          dtype=torch.bfloat16, interpret=False)

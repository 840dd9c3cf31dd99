"""The host path of ``attention`` (issue 17: at small shapes the host cost is the time): cached
plans and descriptors change no result and skip no check."""
import importlib

import pytest
import torch

from flashproof import kernels

A = importlib.import_module("flashproof.kernels.attention")


def _qkv(dtype=torch.float16, lq=20, lk=24, e=16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, n, e, generator=g).to(dtype) for n in (lq, lk, lk)]


def test_cached_plan_still_refuses_what_the_first_call_accepted():
    q, k, v = _qkv()
    kernels.attention(q, k, v, allow_tf32=True)
    with pytest.raises(TypeError, match="allow_tf32"):
        kernels.attention(q, k, v, allow_tf32=1)  # 1 == True, but an int is refused
    kernels.attention(q, k, v, block_m=32, block_n=32)
    with pytest.raises(ValueError, match="block_m"):
        kernels.attention(q, k, v, block_m=48, block_n=32)


def test_plan_key_separates_values_that_compare_equal():
    q, k, v = _qkv()
    key = lambda **kw: A._plan_key(q, k, v, None, tuple(kw.values()))
    assert key(scale=0.0) != key(scale=-0.0)
    assert key(x=True) != key(x=1)
    assert key(scale=torch.tensor(0.5)) is None, "a tensor option is never cached (its value can change in place)"
    assert A._plan_key(q, k, v, [1, 2], ()) is None, "an unhashable mask is not cached"


def test_cached_plan_follows_the_load_switches(monkeypatch):
    q, k, v = _qkv(torch.bfloat16)
    mask = A.spec.make_mask()
    p1 = A._plan(q, k, v, mask=mask, scale=None, softcap=None, block_m=None, block_n=None, num_warps=None,
                 num_stages=None, allow_tf32=False)
    monkeypatch.setattr(A, "TMA_FORWARD", not A.TMA_FORWARD)
    p2 = A._plan(q, k, v, mask=mask, scale=None, softcap=None, block_m=None, block_n=None, num_warps=None,
                 num_stages=None, allow_tf32=False)
    assert p1.tma_fwd != p2.tma_fwd


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_repeated_and_no_grad_calls_equal_the_autograd_call(dtype):
    q, k, v = _qkv(dtype)
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    o_ref, lse_ref = kernels.attention(qg, kg, vg, causal=True, return_lse=True)
    assert o_ref.requires_grad
    for _ in range(2):  # the second call takes the cached plan and descriptor template
        o, lse = kernels.attention(q, k, v, causal=True, return_lse=True)
        assert not o.requires_grad
        assert torch.equal(o, o_ref.detach()) and torch.equal(lse, lse_ref.detach())
    with torch.no_grad():
        o2 = kernels.attention(qg, kg, vg, causal=True)
    assert torch.equal(o2, o_ref.detach())


def test_descriptor_template_keeps_no_tensor_alive():
    q, k, v = _qkv(torch.bfloat16, lk=32)
    d = A._tma_descriptor(k, 16)
    assert d is not None and d.base is k
    assert all(t.base is None for t in A._DESCRIPTORS.values())


class _Compiled:
    """A compiled kernel as triton returns it: kernel[grid](*every argument in signature order)."""

    def __init__(self, log, exact):
        self.log, self.exact = log, exact

    def __getitem__(self, grid):
        return lambda *values: self.log.append(("direct", self.exact, grid, values))


class _Jit:
    """A @triton.jit kernel of signature (RERUN, X, n, E, EXACT) that compiles one build per EXACT."""
    arg_names = ["RERUN", "X", "n", "E", "EXACT"]

    def __init__(self, log, compiled=True):
        self.log, self.builds = log, {}
        self.compiled = compiled

    def __getitem__(self, grid):
        def launch(*args, num_warps, num_stages, enable_fp_fusion, **meta):
            self.log.append(("jit", meta["EXACT"], grid, args))
            if not self.compiled:  # the interpreter returns no compiled kernel
                return None
            return self.builds.setdefault(meta["EXACT"], _Compiled(self.log, meta["EXACT"]))
        return launch


def test_exact_pass_launches_the_fast_pass_build_twin_directly():
    """attention._launch_passes: the exact pass' build is the fast pass' twin (same arguments, so the
    same specialization); from the second call on it is launched directly, with every argument in
    signature order and EXACT=True, skipping triton's binding. The interpreter (no compiled kernel)
    always goes through triton."""
    x = torch.zeros(4)
    for compiled in (True, False):
        log = []
        jit = _Jit(log, compiled)
        for _ in range(2):
            A._launch_passes(jit, (2, 1, 1), x, 7, E=16, num_warps=4, num_stages=2)
        kinds = [(kind, exact) for kind, exact, _, _ in log]
        if compiled:
            assert kinds == [("jit", False), ("jit", True), ("jit", False), ("direct", True)], kinds
            _, _, grid, values = log[-1]
            rerun = log[2][3][0]
            assert grid == (2, 1, 1) and values[0] is rerun and values[1:] == (x, 7, 16, True), values
        else:
            assert kinds == [("jit", False), ("jit", True)] * 2, kinds

"""Triton forward kernel (attention, sdpa) under the interpreter, against forward_fp64.

Small shapes, ragged lengths, every feature; the error criterion is FlashAttention's (see
test_kernels_util.fa_check). Special values: empty rows, extreme logits, fp16 overflow of q.k,
NaN garbage in masked/padded memory, NaN/inf propagation, determinism.
"""
import random

import pytest
import torch

from flashproof import spec
from flashproof.kernels import TILE_CONFIGS, accepts_tile_config, attention, sdpa
from flashproof.kernels.runtime import interpreting

from test_kernels_util import (UNIT, assert_same_nonfinite, check_forward, fa_check, naive_forward,
                               ref_forward, rand)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cases(n, seed):
    """Pairwise-ish mixes of every factor (a full product would take hours interpreted)."""
    r = random.Random(seed)
    heads = [(1, 1), (2, 2), (3, 1), (4, 2), (6, 3), (5, 5)]
    lens = [(1, 1), (1, 17), (17, 1), (17, 33), (33, 17), (40, 40), (7, 50), (50, 7), (64, 64)]
    dims = [(16, 16), (40, 40), (72, 72), (32, 24), (80, 48), (96, 96), (64, 128)]
    masks = [(False, None), (True, None), ("bottom_right", None), (False, (3, 5)), (True, (4, -1)),
             ("bottom_right", (6, 0)), (False, (-1, 2)), ("bottom_right", (0, 0))]
    tiles = [(16, 16), (32, 16), (16, 32), (32, 32), (64, 16), (16, 64)]
    out = []
    for i in range(n):
        dt = DTYPES[i % 3]
        (h, hkv), (lq, lk) = heads[i % len(heads)], lens[(i * 5) % len(lens)]
        e, ev = dims[(i * 3) % len(dims)]
        causal, window = masks[(i * 7) % len(masks)]
        bm, bn = tiles[r.randrange(len(tiles))]
        softcap = 5.0 if i % 5 == 4 else None
        out.append(pytest.param(dt, 2 if i % 4 == 0 else 1, h, hkv, lq, lk, e, ev, causal, window,
                                softcap, bm, bn, id=f"{i}-{str(dt)[6:]}-h{h}/{hkv}-L{lq}x{lk}-E{e}/{ev}-"
                                f"c{causal}-w{window}-sc{softcap}-t{bm}x{bn}"))
    return out


@pytest.mark.parametrize("dtype,b,h,hkv,lq,lk,e,ev,causal,window,softcap,bm,bn", _cases(36, 1))
def test_forward_matches_fp64(dtype, b, h, hkv, lq, lk, e, ev, causal, window, softcap, bm, bn):
    g = torch.Generator().manual_seed(lq * 1000 + lk * 10 + e)
    q, k, v = rand(b, h, lq, e, dtype=dtype, gen=g), rand(b, hkv, lk, e, dtype=dtype, gen=g), \
        rand(b, hkv, lk, ev, dtype=dtype, gen=g)
    o, lse = attention(q, k, v, causal=causal, window=window, softcap=softcap, return_lse=True,
                       block_m=bm, block_n=bn)
    assert o.shape == (b, h, lq, ev) and o.dtype == dtype
    assert lse.shape == (b, h, lq) and lse.dtype == torch.float32
    check_forward(o, lse, q, k, v, causal=causal, window=window, softcap=softcap)


@pytest.mark.parametrize("e", [40, 72, 80, 96, 192, 256])
def test_head_dims_not_power_of_two(e):
    g = torch.Generator().manual_seed(e)
    q, k, v = (rand(1, 2, 19, e, dtype=torch.bfloat16, gen=g) for _ in range(3))
    o, lse = attention(q, k, v, causal="bottom_right", return_lse=True, block_m=16, block_n=16)
    check_forward(o, lse, q, k, v, causal="bottom_right")


def test_every_tile_config_at_a_ragged_shape():
    """Bug class 19: every accepted config, not just the default, is correct (and the refused
    ones are refused with ValueError before any launch)."""
    g = torch.Generator().manual_seed(19)
    dt = torch.float16
    q, k, v = rand(1, 2, 37, 40, dtype=dt, gen=g), rand(1, 1, 45, 40, dtype=dt, gen=g), rand(1, 1, 45, 24, dtype=dt, gen=g)
    ro, _ = ref_forward(q, k, v, causal="bottom_right", window=(20, -1))
    first = None
    for cfg in TILE_CONFIGS:
        assert accepts_tile_config(cfg, head_dim=40, head_dim_v=24, dtype=dt)
        o = attention(q, k, v, causal="bottom_right", window=(20, -1), block_m=cfg.block_m,
                      block_n=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        if first is None:
            first = o
            check_forward(o, None, q, k, v, causal="bottom_right", window=(20, -1))
        else:
            # Every tiling computes the same exact merge (proofs/merge_algebra.py); in fp32
            # accumulation the difference is rounding only: within 2 fp16 ulps of |o|.
            assert (o.double() - ro).abs().max() <= (first.double() - ro).abs().max() + 4 * UNIT[dt] * ro.abs().max(), cfg


def test_refused_config_raises_before_launch():
    q = torch.zeros(1, 1, 4, 256, dtype=torch.float32)
    with pytest.raises(ValueError, match="shared memory"):
        attention(q, q, q, block_m=256, block_n=256, num_stages=4)
    with pytest.raises(ValueError, match="block_m"):
        attention(q, q, q, block_m=48)
    with pytest.raises(ValueError, match="num_warps"):
        attention(q, q, q, num_warps=3)


def test_fully_masked_rows_give_zero_and_neg_inf_lse():
    """Bug class 1: bottom_right with Lq > Lk leaves the first Lq - Lk rows empty; a window can
    empty rows in the middle of a tile too."""
    g = torch.Generator().manual_seed(1)
    for dt in DTYPES:
        q, k, v = rand(1, 2, 40, 16, dtype=dt, gen=g), rand(1, 2, 9, 16, dtype=dt, gen=g), rand(1, 2, 9, 16, dtype=dt, gen=g)
        o, lse = attention(q, k, v, causal="bottom_right", return_lse=True, block_m=16, block_n=16)
        assert torch.isfinite(o).all()
        assert (o[:, :, :31] == 0).all() and torch.isneginf(lse[:, :, :31]).all()
        assert torch.isfinite(lse[:, :, 31:]).all()
        check_forward(o, lse, q, k, v, causal="bottom_right")


def test_sdpa_all_false_mask_row_is_zero():
    g = torch.Generator().manual_seed(2)
    q, k, v = (rand(2, 2, 20, 32, dtype=torch.float16, gen=g) for _ in range(3))
    m = torch.rand(20, 20, generator=g) > 0.5
    m[3] = False
    m[17] = False
    o = sdpa(q, k, v, attn_mask=m)
    assert torch.isfinite(o).all() and (o[:, :, 3] == 0).all() and (o[:, :, 17] == 0).all()
    check_forward(o, None, q, k, v, attn_mask=m)


@pytest.mark.parametrize("dt", [torch.bfloat16, torch.float32])
def test_extreme_logits_pm_1e4(dt):
    """Logits of +-1e4 (bf16 inputs): no overflow, no NaN; shift invariance holds (class 2)."""
    g = torch.Generator().manual_seed(3)
    e = 16
    q = rand(1, 1, 33, e, dtype=torch.float32, gen=g)
    k = rand(1, 1, 33, e, dtype=torch.float32, gen=g)
    q = (q / q.norm(dim=-1, keepdim=True) * 100).to(dt)
    k = (k / k.norm(dim=-1, keepdim=True) * 100).to(dt)
    v = rand(1, 1, 33, e, dtype=dt, gen=g)
    # scale 1 and |q||k| = 1e4: logits span about [-1e4, 1e4]
    o, lse = attention(q, k, v, scale=1.0, return_lse=True, block_m=16, block_n=16, causal=True)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    check_forward(o, lse, q, k, v, scale=1.0, causal=True)


def test_all_logits_below_minus_1e4_first_tile_masked():
    """Bug class 2: a row whose first visited tile is fully masked and whose real logits are all
    about -2e4 must not underflow (the running max starts at -inf, not at a guard 0)."""
    e = 16
    q = torch.full((1, 1, 32, e), -1.0)
    k = torch.full((1, 1, 48, e), 1250.0)  # q.k = -2e4 with scale 1
    v = torch.randn(1, 1, 48, e, generator=torch.Generator().manual_seed(4))
    o, lse = attention(q, k, v, scale=1.0, window=(4, 20), return_lse=True, block_m=16, block_n=16)
    assert torch.isfinite(o).all()
    ro, rl = check_forward(o, lse, q, k, v, scale=1.0, window=(4, 20))
    assert (rl < -1.9e4).all()


def test_single_key_with_logit_minus_1e6_is_exactly_its_value():
    """Bug class 3: no finite mask sentinel; the one allowed key wins even at logit -1e6."""
    e = 16
    q = torch.full((1, 1, 20, e), -250.0)
    k = torch.full((1, 1, 20, e), 250.0)  # q.k = -1e6, scale 1
    v = torch.randn(1, 1, 20, e, generator=torch.Generator().manual_seed(5))
    o, lse = attention(q, k, v, scale=1.0, window=(0, 0), return_lse=True, block_m=16, block_n=16)
    assert torch.equal(o, v)
    assert (lse == -1e6).all()


def test_fp16_dot_beyond_65504_is_finite():
    """Bug class 9: unscaled q.k = 102400 > fp16 max; fp32 accumulation keeps it finite."""
    q = torch.full((1, 2, 17, 64), 40.0, dtype=torch.float16)
    k = torch.full((1, 2, 17, 64), 40.0, dtype=torch.float16)
    k[:, :, ::3] = -40.0
    v = torch.randn(1, 2, 17, 64, generator=torch.Generator().manual_seed(6)).half()
    o, lse = attention(q, k, v, return_lse=True, block_m=16, block_n=16)
    assert torch.isfinite(o).all() and torch.isfinite(lse).all()
    ro, rl = ref_forward(q, k, v)
    assert (o.double() - ro).abs().max() <= 2 * UNIT[torch.float16] * ro.abs().max()  # one rounding of o
    assert (lse.double() - rl).abs().max() <= 4 * UNIT[torch.float32] * rl.abs().max()


def _garbage_views(q, k, v, fill, lq, lk, e, ev):
    """Views of q/k/v inside larger buffers whose extra rows/columns hold ``fill``."""
    def big(x, l, d):
        out = torch.full((x.shape[0], x.shape[1], l + 7, d + 9), float(fill), dtype=torch.float32).to(x.dtype)
        out[:, :, :l, :d] = x
        return out[:, :, :l, :d]
    return big(q, lq, e), big(k, lk, e), big(v, lk, ev)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # q.k of inf garbage
@pytest.mark.parametrize("fill", [float("nan"), 1e30, float("inf")])
def test_masked_and_padded_garbage_never_leaks(fill):
    """Bug classes 4/5: NaN/huge values in masked keys and in memory past Lq/Lk/E give a result
    bitwise equal to the clean run."""
    g = torch.Generator().manual_seed(7)
    for dt, (causal, window) in ((torch.bfloat16, ("bottom_right", (5, -1))), (torch.float16, (True, None)),
                                 (torch.float32, (False, (3, 4)))):
        lq, lk, e, ev = 21, 37, 40, 24
        q, k, v = rand(1, 2, lq, e, dtype=dt, gen=g), rand(1, 1, lk, e, dtype=dt, gen=g), rand(1, 1, lk, ev, dtype=dt, gen=g)
        o0, l0 = attention(q, k, v, causal=causal, window=window, return_lse=True, block_m=16, block_n=16)
        allowed = torch.from_numpy(spec.make_mask(causal=causal, window=window).matrix(lq, lk))
        used = allowed.any(0)  # keys some row attends
        kq, vq = k.clone(), v.clone()
        fillv = torch.tensor(fill).to(dt)  # 1e30 is inf in fp16/bf16 storage
        kq[:, :, ~used], vq[:, :, ~used] = fillv, fillv
        qg, kg, vg = _garbage_views(q, kq, vq, fill, lq, lk, e, ev)
        o1, l1 = attention(qg, kg, vg, causal=causal, window=window, return_lse=True, block_m=16, block_n=16)
        assert torch.equal(o0, o1) and torch.equal(l0, l1), (dt, causal, window)
        # keys that some rows attend but others do not (boundary tiles): NaN only where attended
        j = int(used.nonzero()[len(used.nonzero()) // 2])
        vn = v.clone()
        vn[:, :, j, 3] = float("nan")
        o2 = attention(q, k, vn, causal=causal, window=window, block_m=16, block_n=16)
        rows = allowed[:, j]
        assert torch.isnan(o2[:, :, rows, 3]).all()
        assert torch.equal(o2[:, :, ~rows], o0[:, :, ~rows])
        assert torch.equal(o2[:, :, :, :3], o0[:, :, :, :3]) and torch.equal(o2[:, :, :, 4:], o0[:, :, :, 4:])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy's IEEE NaN
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_values_propagate_like_ieee(bad):
    """spec NaN policy: a non-finite v_j reaches exactly the rows attending j, with the IEEE
    value (NaN, or +-inf with the sign of p * v), in boundary and interior tiles alike."""
    g = torch.Generator().manual_seed(8)
    q, k, v = rand(1, 1, 40, 16, dtype=torch.float32, gen=g), rand(1, 1, 40, 16, dtype=torch.float32, gen=g), \
        rand(1, 1, 40, 16, dtype=torch.float32, gen=g)
    v[0, 0, 5, 2] = bad
    v[0, 0, 30, 7] = bad
    for causal, window in ((True, None), (False, (2, 2)), (False, None)):
        o = attention(q, k, v, causal=causal, window=window, block_m=16, block_n=16)
        ro, _ = ref_forward(q, k, v, causal=causal, window=window)
        assert_same_nonfinite("o", o, ro)
    # q and k: a NaN q_i poisons row i only; a NaN k_j every row attending j
    qn, kn = q.clone(), k.clone()
    qn[0, 0, 11, 0] = float("nan")
    kn[0, 0, 20, 0] = float("nan")
    o = attention(qn, kn, v.nan_to_num(), causal=True, block_m=16, block_n=16)
    ro, _ = ref_forward(qn, kn, v.nan_to_num(), causal=True)
    assert_same_nonfinite("o", o, ro)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_exact_pass_reruns_only_the_flagged_programs(monkeypatch):
    """blocks.rerun_flag: finite inputs flag no program, so the exact pass does no work; NaN in a
    key that only some rows of a tile attend poisons the fast pass' output there (0 * NaN in
    the masked product), flags exactly the programs it poisoned, and the exact pass restores
    the IEEE result. Forward, dK/dV and dQ kernels alike."""
    import sys
    A = sys.modules["flashproof.kernels.attention"]
    real = A._launch
    flags, fast_only = {}, [False]

    def spy(kernel, grid, *args, **meta):
        if meta.get("EXACT") is True and fast_only[0]:
            return None
        out = real(kernel, grid, *args, **meta)
        if meta.get("EXACT") is False:
            flags[kernel.fn.__name__ if hasattr(kernel, "fn") else str(kernel)] = args[0].clone()
        return out

    monkeypatch.setattr(A, "_launch", spy)
    g = torch.Generator().manual_seed(11)
    q, k, v = (rand(1, 1, 32, 16, dtype=torch.float32, gen=g) for _ in range(3))
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)

    def run(vv):
        o = attention(q, k, vv, causal=True, block_m=16, block_n=16)
        return o, torch.autograd.grad(o, (q, k, vv), torch.ones_like(o))

    o0, g0 = run(v)
    assert set(flags) == {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}
    assert all(int(f.sum()) == 0 for f in flags.values()), flags
    vn = v.detach().clone()
    vn[0, 0, 20, 3] = float("nan")  # key 20: attended by rows >= 20 only (the tile 16..31 is masked)
    vn.requires_grad_(True)
    fast_only[0] = True
    o_fast, _ = run(vn)
    assert torch.isnan(o_fast[0, 0, 16:20]).any(), "the fast pass alone leaks 0 * NaN (else this test is vacuous)"
    # one of the two row blocks (causal launches the rows 16..31 first)
    assert sorted(flags["_fwd_kernel"].tolist()) == [0, 1]
    fast_only[0] = False
    o1, g1 = run(vn)
    assert sorted(flags["_fwd_kernel"].tolist()) == [0, 1]
    assert int(flags["_bwd_dkdv_kernel"].sum()) >= 1 and int(flags["_bwd_dq_kernel"].sum()) == 1
    assert torch.equal(o1[0, 0, :20], o0[0, 0, :20]) and torch.equal(o1[0, 0, :, :3], o0[0, 0, :, :3])
    assert torch.isnan(o1[0, 0, 20:, 3]).all()
    assert torch.equal(g1[0][0, 0, :20], g0[0][0, 0, :20]), "dQ of rows that never see the NaN"


def test_tma_descriptor_only_where_the_copy_engine_can_read():
    """attention._tma_descriptor: a (B, H, L, D) descriptor of [1, 1, rows, head block] blocks for
    16-bit tensors whose base and strides are 16-byte aligned with a unit last stride; None (the
    pointer loads) for everything else, never an error."""
    import sys
    A = sys.modules["flashproof.kernels.attention"]
    t = torch.zeros(2, 3, 40, 64, dtype=torch.bfloat16)
    d = A._tma_descriptor(t, 32)
    assert d is not None and list(d.shape) == [2, 3, 40, 64] and list(d.block_shape) == [1, 1, 32, 64]
    assert A._tma_descriptor(t.half(), 16) is not None
    assert A._tma_descriptor(t[:, :, :, :40], 32) is not None, "E=40 inside a 64-wide row: 128-byte stride"
    flat = torch.zeros(2 * 3 * 40 * 64 + 8, dtype=torch.bfloat16)
    for bad in (t.float(),                                       # fp32 keeps the pointer loads
                t.transpose(2, 3),                               # last stride not 1
                torch.zeros(2, 3, 40, 20, dtype=torch.bfloat16),  # 40-byte row stride
                flat[1:1 + t.numel()].view(2, 3, 40, 64),        # base 2 bytes off alignment
                t[:, :1].expand(2, 3, 40, 64),                   # stride 0 (broadcast heads)
                torch.zeros(2, 3, 0, 64, dtype=torch.bfloat16)):  # no keys
        assert A._tma_descriptor(bad, 32) is None, (bad.shape, bad.stride(), bad.dtype)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal,window", [(True, None), ("bottom_right", None), (False, (5, 2))])
def test_descriptor_and_pointer_loads_agree_bitwise(monkeypatch, dtype, causal, window):
    """The same kernels reading K/V (Q/dO in dK/dV) through tensor descriptors or through masked
    pointer loads give bitwise the same output, LSE and gradients, with NaN in the memory past Lk
    and past E that the copy engine's zero fill and the pointer masks must both keep out."""
    import sys
    A = sys.modules["flashproof.kernels.attention"]
    real, used = A._launch, set()

    def spy(kernel, grid, *args, **meta):
        if meta.get("TMA"):
            used.add(kernel.fn.__name__)
        return real(kernel, grid, *args, **meta)

    monkeypatch.setattr(A, "_launch", spy)
    g = torch.Generator().manual_seed(5)

    def padded(b, h, n, e):  # NaN past n rows and past e columns of each head
        x = torch.full((b, h, n + 16, 64), float("nan"), dtype=dtype)
        x[:, :, :n, :e] = torch.randn(b, h, n, e, generator=g).to(dtype)
        return x[:, :, :n, :e]

    q, k, v, do = padded(2, 4, 21, 40), padded(2, 2, 37, 40), padded(2, 2, 37, 40), padded(2, 4, 21, 40)
    res = {}
    for tma in (True, False):
        monkeypatch.setattr(A, "TMA_FORWARD", tma)
        monkeypatch.setattr(A, "TMA_BACKWARD", tma)
        qq, kk, vv = (x.detach().requires_grad_(True) for x in (q, k, v))
        o, lse = attention(qq, kk, vv, causal=causal, window=window, return_lse=True, block_m=16, block_n=16)
        res[tma] = (o, lse) + torch.autograd.grad(o, (qq, kk, vv), do)
        if tma:
            assert used == {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"}, used
    for name, a, b in zip(("o", "lse", "dq", "dk", "dv"), res[True], res[False]):
        assert torch.equal(a, b), name
        assert not torch.isnan(a).any(), f"{name}: NaN from memory that is never attended"


def test_deterministic_bitwise():
    g = torch.Generator().manual_seed(9)
    q, k, v = rand(2, 4, 33, 40, dtype=torch.bfloat16, gen=g), rand(2, 2, 29, 40, dtype=torch.bfloat16, gen=g), \
        rand(2, 2, 29, 40, dtype=torch.bfloat16, gen=g)
    a = attention(q, k, v, causal=True, return_lse=True, block_m=16, block_n=16)
    b = attention(q, k, v, causal=True, return_lse=True, block_m=16, block_n=16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a row's output does not depend on the batch it runs in
    c = attention(q[1:], k[1:], v[1:], causal=True, return_lse=True, block_m=16, block_n=16)
    assert torch.equal(a[0][1:], c[0]) and torch.equal(a[1][1:], c[1])


@pytest.mark.parametrize("h,hkv", [(3, 1), (5, 1), (6, 2), (7, 1), (6, 3), (4, 2)])
def test_gqa_equals_repeated_kv_bitwise(h, hkv):
    """Bug class 15: query head h reads KV head h // (H/Hkv): same bits as MHA with repeat."""
    g = torch.Generator().manual_seed(h * 10 + hkv)
    q, k, v = rand(2, h, 9, 16, dtype=torch.float16, gen=g), rand(2, hkv, 11, 16, dtype=torch.float16, gen=g), \
        rand(2, hkv, 11, 16, dtype=torch.float16, gen=g)
    a = attention(q, k, v, causal="bottom_right", block_m=16, block_n=16)
    rep = h // hkv
    b = attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal="bottom_right",
                  block_m=16, block_n=16)
    assert torch.equal(a, b)


def test_zero_padded_head_dim_with_explicit_scale_is_bitwise_equal():
    """Bug class 18: E = 40 zero-padded to 64 (same 64-wide tile) with scale 1/sqrt(40)."""
    g = torch.Generator().manual_seed(10)
    q, k, v = (rand(1, 2, 17, 40, dtype=torch.bfloat16, gen=g) for _ in range(3))
    pad = lambda x: torch.nn.functional.pad(x, (0, 24))  # noqa: E731
    a = attention(q, k, v, causal=True, block_m=16, block_n=16)
    b = attention(pad(q), pad(k), v, causal=True, scale=40 ** -0.5, block_m=16, block_n=16)
    assert torch.equal(a, b)


def test_softcap_limits():
    g = torch.Generator().manual_seed(11)
    q, k, v = (rand(1, 2, 17, 32, dtype=torch.float32, gen=g, scale=3.0) for _ in range(3))
    base = attention(q, k, v)
    for off in (None, 0, float("inf")):
        assert torch.equal(attention(q, k, v, softcap=off), base)
    o, lse = attention(q, k, v, softcap=2.0, return_lse=True)
    check_forward(o, lse, q, k, v, softcap=2.0)
    assert (lse - attention(q, k, v, return_lse=True)[1]).abs().max() > 0.1  # the cap acts


def test_any_strides():
    """Transposed (B, L, H, E) storage and a last-dim stride of 2."""
    g = torch.Generator().manual_seed(12)
    base = rand(2, 23, 4, 80, dtype=torch.float16, gen=g)
    q = base.transpose(1, 2)[..., ::2]  # (2, 4, 23, 40), strides everywhere
    k = rand(2, 31, 2, 40, dtype=torch.float16, gen=g).transpose(1, 2)
    v = rand(2, 2, 24, 31, dtype=torch.float16, gen=g).transpose(2, 3)
    o, lse = attention(q, k, v, causal="bottom_right", return_lse=True, block_m=16, block_n=32)
    check_forward(o, lse, q, k, v, causal="bottom_right")
    o2 = attention(q.contiguous(), k.contiguous(), v.contiguous(), causal="bottom_right", block_m=16, block_n=32)
    assert torch.equal(o, o2)


def test_fp32_ieee_vs_tf32_switch():
    g = torch.Generator().manual_seed(13)
    q, k, v = (rand(1, 1, 20, 32, dtype=torch.float32, gen=g) for _ in range(3))
    o = attention(q, k, v)
    check_forward(o, None, q, k, v)
    o32 = attention(q, k, v, allow_tf32=True)  # interpreter: same numbers; GPU: TF32 MMA
    assert torch.isfinite(o32).all()


def test_validation_errors():
    q = torch.zeros(1, 2, 4, 16)
    with pytest.raises(ValueError, match="rank 4"):
        attention(q[0], q[0], q[0])
    with pytest.raises(TypeError, match="dtype"):
        attention(q.double(), q.double(), q.double())
    with pytest.raises(TypeError, match="share a dtype"):
        attention(q, q.half(), q)
    with pytest.raises(ValueError, match="at most 256"):
        z = torch.zeros(1, 1, 2, 300)
        attention(z, z, z)
    with pytest.raises(ValueError, match="multiple"):
        attention(torch.zeros(1, 3, 4, 16), q, q)
    with pytest.raises(ValueError, match="window"):
        attention(q, q, q, window=(-2, 0))
    with pytest.raises(ValueError, match="causal"):
        attention(q, q, q, causal="diagonal")
    with pytest.raises(ValueError, match="softcap"):
        attention(q, q, q, softcap=-1.0)
    with pytest.raises(TypeError, match="query"):
        attention("q", q, q)
    with pytest.raises(TypeError, match="return_lse"):
        attention(q, q, q, return_lse=1)


def test_empty_lengths():
    q = torch.zeros(1, 2, 0, 16)
    k = torch.zeros(1, 2, 5, 16)
    assert attention(q, k, k).shape == (1, 2, 0, 16)
    q = torch.randn(1, 2, 3, 16)
    k = torch.zeros(1, 2, 0, 16)
    o, lse = attention(q, k, k, return_lse=True)
    assert (o == 0).all() and torch.isneginf(lse).all()


# ----------------------------------------------------------------------------- sdpa

@pytest.mark.parametrize("dt", DTYPES)
def test_sdpa_matches_torch_semantics(dt):
    g = torch.Generator().manual_seed(14)
    q, k, v = rand(2, 4, 19, 40, dtype=dt, gen=g), rand(2, 2, 23, 40, dtype=dt, gen=g), rand(2, 2, 23, 40, dtype=dt, gen=g)
    bool_mask = torch.rand(1, 4, 19, 23, generator=g) > 0.3
    add_mask = (torch.randn(19, 23, generator=g) * 2).to(dt)
    add_mask[2, 5] = -float("inf")
    for kw in ({}, {"is_causal": True}, {"attn_mask": bool_mask}, {"attn_mask": add_mask}, {"scale": 0.3}):
        o = sdpa(q, k, v, enable_gqa=True, **kw)
        opts = {"attn_mask": kw.get("attn_mask"), "causal": kw.get("is_causal", False), "scale": kw.get("scale")}
        ro, _ = ref_forward(q, k, v, **opts)
        tq = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        fa_check("sdpa o", o, ro, tq.double(), dt)  # naive baseline: torch's own SDPA in dt
    # rank-3 inputs
    q3, k3 = q[:, 0], k[:, 0]
    o3 = sdpa(q3, k3, k3, is_causal=True)
    assert o3.shape == (2, 19, 40)
    ro, _ = ref_forward(q3[:, None], k3[:, None], k3[:, None], causal=True)
    fa_check("sdpa rank3", o3[:, None], ro, naive_forward(q3[:, None], k3[:, None], k3[:, None], causal=True)[0], dt)


def test_sdpa_is_a_valid_drop_in_for_errors():
    q = torch.zeros(1, 4, 8, 16)
    kv = torch.zeros(1, 2, 8, 16)
    with pytest.raises(NotImplementedError, match="dropout"):
        sdpa(q, q, q, dropout_p=0.1)
    with pytest.raises(ValueError, match="enable_gqa"):
        sdpa(q, kv, kv)
    with pytest.raises(ValueError, match="is_causal"):
        sdpa(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="broadcast"):
        sdpa(q, q, q, attn_mask=torch.ones(7, 8, dtype=torch.bool))
    assert sdpa(q, kv, kv, enable_gqa=True).shape == (1, 4, 8, 16)


def test_interpreter_is_on_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the kernels run compiled")
    assert interpreting()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # q.k of the garbage key
def test_sdpa_masked_key_garbage_is_dropped():
    """A key masked by attn_mask (bool False or additive -inf) is dropped even when q.k is NaN
    or inf there: -inf + NaN must not become a NaN logit."""
    g = torch.Generator().manual_seed(15)
    q = rand(1, 2, 9, 16, dtype=torch.float32, gen=g)
    m = torch.ones(9, 12, dtype=torch.bool)
    k, v = rand(1, 2, 12, 16, dtype=torch.float32, gen=g), rand(1, 2, 12, 16, dtype=torch.float32, gen=g)
    m[:, 3] = False
    for mask in (m, torch.zeros(9, 12).masked_fill(~m, -float("inf"))):
        clean = sdpa(q, k, v, attn_mask=mask)
        for bad in (float("nan"), float("inf")):
            kb, vb = k.clone(), v.clone()
            kb[:, :, 3] = bad
            vb[:, :, 3] = bad
            assert torch.equal(sdpa(q, kb, vb, attn_mask=mask), clean)
            qq, kk = q.clone().requires_grad_(), kb.clone().requires_grad_()
            sdpa(qq, kk, vb, attn_mask=mask).sum().backward()
            assert torch.isfinite(qq.grad).all() and (kk.grad[:, :, 3] == 0).all()


def test_scale_beyond_float32_is_refused():
    q = torch.randn(1, 1, 3, 16)
    with pytest.raises(ValueError, match="scale"):
        attention(q, q, q, scale=1e300)
    with pytest.raises(ValueError, match="scale"):
        sdpa(q, q, q, scale=-1e39)
    with pytest.raises(ValueError, match="softcap"):
        attention(q, q, q, softcap=1e39)
    assert torch.isfinite(attention(q, q, q, scale=1e30)).all()  # huge but representable


def test_numpy_integer_tile_arguments():
    np = pytest.importorskip("numpy")
    q = torch.randn(1, 2, 20, 16)
    a = attention(q, q, q, block_m=np.int64(32), block_n=np.int32(16), num_warps=np.int64(4))
    assert torch.equal(a, attention(q, q, q, block_m=32, block_n=16, num_warps=4))
    with pytest.raises(TypeError, match="block_m"):
        attention(q, q, q, block_m=32.0)

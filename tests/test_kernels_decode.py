"""Split-KV decode (contiguous and paged caches) under the interpreter, against forward_fp64.

Each sequence b is checked against the reference on its own first seqlens[b] keys; garbage
(NaN) fills everything the kernel must not read: the cache tail, unused pages, unused block
table entries.
"""
import pytest
import torch

from flashproof.kernels import SPLIT_RANGE, attention, decode

from test_kernels_util import UNIT, check_forward, rand

NAN = float("nan")


def _cache(b, hkv, lmax, e, ev, lens, dtype, gen):
    k = rand(b, hkv, lmax, e, dtype=dtype, gen=gen)
    v = rand(b, hkv, lmax, ev, dtype=dtype, gen=gen)
    for i, n in enumerate(lens):
        k[i, :, n:] = NAN
        v[i, :, n:] = NAN
    return k, v


def _paginate(k, v, lens, page_size, gen, extra_pages=3):
    """Scatter each sequence's keys over shuffled physical pages; unused pages and table
    entries are garbage (NaN pages, out-of-range page ids)."""
    b, hkv, _, e = k.shape
    ev = v.shape[-1]
    n_pages = [-(-n // page_size) for n in lens]
    total = sum(n_pages) + extra_pages
    perm = torch.randperm(total, generator=gen)
    kp = torch.full((total, hkv, page_size, e), NAN, dtype=k.dtype)
    vp = torch.full((total, hkv, page_size, ev), NAN, dtype=v.dtype)
    max_pages = max(n_pages) + 2
    table = torch.full((b, max_pages), 2**30, dtype=torch.int32)  # unused entries: never read
    c = 0
    for i, n in enumerate(lens):
        for p in range(n_pages[i]):
            pid = int(perm[c])
            c += 1
            table[i, p] = pid
            m = min(page_size, n - p * page_size)
            kp[pid, :, :m] = k[i, :, p * page_size:p * page_size + m]
            vp[pid, :, :m] = v[i, :, p * page_size:p * page_size + m]
    return kp, vp, table


def _check_per_sequence(o, lse, q, k, v, lens, **opts):
    for i, n in enumerate(lens):
        if n == 0:
            assert (o[i] == 0).all() and torch.isneginf(lse[i]).all()
            continue
        check_forward(o[i:i + 1], lse[i:i + 1], q[i:i + 1], k[i:i + 1, :, :n], v[i:i + 1, :, :n], **opts)


CASES = [
    # dtype, h, hkv, lq, e, ev, lens, causal, window, splits, block_n
    (torch.float16, 4, 2, 1, 64, 64, [0, 17, 45], "bottom_right", None, 3, 16),
    (torch.bfloat16, 6, 1, 1, 40, 40, [33, 1, 64], "bottom_right", None, 5, 16),
    (torch.float32, 2, 2, 3, 32, 24, [20, 3, 50], "bottom_right", (7, -1), 2, 16),
    (torch.float16, 3, 3, 4, 72, 72, [40, 40], False, None, 1, 32),
    (torch.bfloat16, 8, 2, 2, 16, 32, [9, 0, 27, 31], "bottom_right", (4, 0), 9, 16),
    (torch.float32, 5, 1, 1, 96, 96, [63, 64], "bottom_right", None, 7, 32),
]


@pytest.mark.parametrize("dtype,h,hkv,lq,e,ev,lens,causal,window,splits,bn", CASES,
                         ids=[f"{i}-{str(c[0])[6:]}-g{c[1]}/{c[2]}-lq{c[3]}-E{c[4]}-s{c[9]}" for i, c in enumerate(CASES)])
def test_decode_contiguous_and_paged(dtype, h, hkv, lq, e, ev, lens, causal, window, splits, bn):
    g = torch.Generator().manual_seed(sum(lens) + h)
    b, lmax = len(lens), max(lens) + 5
    q = rand(b, h, lq, e, dtype=dtype, gen=g)
    k, v = _cache(b, hkv, lmax, e, ev, lens, dtype, g)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    o, lse = decode(q, k, v, seqlens=seqlens, num_splits=splits, causal=causal, window=window,
                    return_lse=True, block_n=bn)
    assert torch.isfinite(o).all()
    _check_per_sequence(o, lse, q, k, v, lens, causal=causal, window=window)
    for ps in (1, 7, bn, 2 * bn):  # pages of whole tiles read one table entry per tile (PAGE_TILES)
        kp, vp, table = _paginate(k, v, lens, ps, g)
        o2, lse2 = decode(q, kp, vp, seqlens=seqlens, block_table=table, page_size=ps,
                          num_splits=splits, causal=causal, window=window, return_lse=True, block_n=bn)
        # Same keys, same tiles, same merge: paging changes addresses only (bug class 16).
        assert torch.equal(o, o2) and torch.equal(lse, lse2), ps


def test_every_split_count_agrees_at_batch_gt_1():
    """Bug class 13: splits 1..16 (many of them empty for the short sequence) at batch 3."""
    g = torch.Generator().manual_seed(1)
    lens = [0, 5, 70]
    q = rand(3, 2, 1, 32, dtype=torch.float32, gen=g)
    k, v = _cache(3, 1, 72, 32, 32, lens, torch.float32, g)
    seqlens = torch.tensor(lens)
    ref, ref_lse = decode(q, k, v, seqlens=seqlens, num_splits=1, return_lse=True, block_n=16)
    _check_per_sequence(ref, ref_lse, q, k, v, lens, causal="bottom_right")
    for s in range(2, 17):
        o, lse = decode(q, k, v, seqlens=seqlens, num_splits=s, return_lse=True, block_n=16)
        assert torch.isfinite(o).all() and not torch.isnan(lse).any()
        # the merge is exact (proofs/merge_algebra.py); fp32 rounding of a few rescales only
        assert (o - ref).abs().max() <= 8 * UNIT[torch.float32] * ref.abs().max(), s
        assert (torch.nan_to_num(lse - ref_lse)).abs().max() <= 8 * UNIT[torch.float32] * (1 + ref_lse.nan_to_num(neginf=0).abs().max())
        assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))


def test_prefill_then_decode_equals_full_prefill():
    """Bug class 6: the last rows of a bottom-right causal prefill equal decoding them."""
    g = torch.Generator().manual_seed(2)
    q, k, v = rand(2, 4, 30, 40, dtype=torch.float16, gen=g), rand(2, 2, 30, 40, dtype=torch.float16, gen=g), \
        rand(2, 2, 30, 40, dtype=torch.float16, gen=g)
    full, full_lse = attention(q, k, v, causal="bottom_right", return_lse=True, block_m=16, block_n=16)
    for t in (1, 2):
        o, lse = decode(q[:, :, -t:], k, v, num_splits=3, return_lse=True, block_n=16)
        assert (o.double() - full[:, :, -t:].double()).abs().max() <= 2 * UNIT[torch.float16] * full.abs().max()
        assert (lse - full_lse[:, :, -t:]).abs().max() <= 8 * UNIT[torch.float32] * full_lse.abs().max()


def test_decode_softcap_and_scale():
    g = torch.Generator().manual_seed(3)
    lens = [12, 30]
    q = rand(2, 2, 1, 16, dtype=torch.bfloat16, gen=g, scale=4.0)
    k, v = _cache(2, 2, 32, 16, 16, lens, torch.bfloat16, g)
    o, lse = decode(q, k, v, seqlens=torch.tensor(lens), softcap=3.0, scale=0.5, num_splits=2,
                    return_lse=True, block_n=16)
    _check_per_sequence(o, lse, q, k, v, lens, causal="bottom_right", softcap=3.0, scale=0.5)


def test_decode_large_page_ids_and_int64_table():
    """Page ids near the end of a big pool, int64 table: offsets are int64 in the kernel."""
    g = torch.Generator().manual_seed(4)
    lens = [7, 13]
    q = rand(2, 2, 1, 16, dtype=torch.float16, gen=g)
    k, v = _cache(2, 1, 16, 16, 16, lens, torch.float16, g)
    ps = 4
    n_pool = 3000
    kp = torch.full((n_pool, 1, ps, 16), NAN, dtype=torch.float16)
    vp = torch.full((n_pool, 1, ps, 16), NAN, dtype=torch.float16)
    table = torch.full((2, 5), -1, dtype=torch.int64)
    for i, n in enumerate(lens):
        for p in range(-(-n // ps)):
            pid = n_pool - 1 - (i * 5 + p) * 97
            table[i, p] = pid
            m = min(ps, n - p * ps)
            kp[pid, :, :m], vp[pid, :, :m] = k[i, :, p * ps:p * ps + m], v[i, :, p * ps:p * ps + m]
    o = decode(q, kp, vp, seqlens=torch.tensor(lens), block_table=table, num_splits=2, block_n=16)
    o_ref = decode(q, k, v, seqlens=torch.tensor(lens), num_splits=2, block_n=16)
    assert torch.equal(o, o_ref)


def test_decode_validation():
    q = torch.zeros(2, 2, 1, 16)
    k = torch.zeros(2, 2, 8, 16)
    with pytest.raises(ValueError, match="seqlens"):
        decode(q, k, k, seqlens=torch.tensor([3, 9]))
    with pytest.raises(ValueError, match="num_splits"):
        decode(q, k, k, num_splits=SPLIT_RANGE.stop)
    with pytest.raises(ValueError, match="page_size"):
        decode(q, k, k, page_size=4)
    kp = torch.zeros(4, 2, 4, 16)
    table = torch.tensor([[0, 1], [2, 7]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"block_table\[1, 1\]"):
        decode(q, kp, kp, block_table=table, seqlens=torch.tensor([8, 8]))
    # the same bad entry is fine when the sequence does not use that page
    assert decode(q, kp, kp, block_table=table, seqlens=torch.tensor([8, 4])).shape == (2, 2, 1, 16)
    with pytest.raises(ValueError, match="page_size"):
        decode(q, kp, kp, block_table=table, page_size=3, seqlens=torch.tensor([8, 4]))
    with pytest.raises(TypeError, match="block_table"):
        decode(q, kp, kp, block_table=table.float())


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter reducing the NaN state
@pytest.mark.parametrize("splits", [1, 3])
def test_decode_unvalidated_never_reads_out_of_range_and_poisons_only_bad_sequences(splits):
    """validate=False (no host sync, CUDA-graph capturable): on valid input it is bitwise the
    validated call; a used page outside k_cache or a seqlen outside [0, capacity] gives NaN
    output and LSE for that sequence only (the kernel reads page 0 / clamps instead), never a
    plausible number."""
    g = torch.Generator().manual_seed(21)
    lens = [37, 50, 9]
    q = rand(3, 4, 1, 32, dtype=torch.float16, gen=g)
    k, v = _cache(3, 2, 64, 32, 32, lens, torch.float16, g)
    kp, vp, table = _paginate(k, v, lens, 16, g)
    seqlens = torch.tensor(lens, dtype=torch.int32)
    kw = dict(seqlens=seqlens, block_table=table, num_splits=splits, block_n=16, return_lse=True)
    o0, l0 = decode(q, kp, vp, **kw)
    o1, l1 = decode(q, kp, vp, validate=False, **kw)
    assert torch.equal(o0, o1) and torch.equal(l0, l1)
    bad_table = table.clone()
    bad_table[1, 2] = kp.shape[0]  # sequence 1 uses slot 2 (keys 32..47): one past the last page
    bad_table[2, 0] = -1           # sequence 2 uses slot 0
    kw["block_table"] = bad_table
    with pytest.raises(ValueError, match=r"block_table\[1, 2\]"):
        decode(q, kp, vp, **kw)
    o2, l2 = decode(q, kp, vp, validate=False, **kw)
    assert torch.equal(o2[0], o0[0]) and torch.equal(l2[0], l0[0])
    assert torch.isnan(o2[1:]).all() and torch.isnan(l2[1:]).all()
    # seqlens beyond the capacity (max_pages * page_size) or negative
    cap = table.shape[1] * 16
    kw.update(block_table=table, seqlens=torch.tensor([37, cap + 1, -1], dtype=torch.int32))
    with pytest.raises(ValueError, match="seqlens"):
        decode(q, kp, vp, **kw)
    o3, l3 = decode(q, kp, vp, validate=False, **kw)
    assert torch.equal(o3[0], o0[0]) and torch.isnan(o3[1:]).all() and torch.isnan(l3[1:]).all()
    # contiguous cache: the same seqlens contract
    o4, _ = decode(q, k, v, seqlens=torch.tensor([37, 65, 9], dtype=torch.int32), num_splits=splits,
                   block_n=16, return_lse=True, validate=False)
    o5, _ = decode(q, k, v, seqlens=seqlens, num_splits=splits, block_n=16, return_lse=True)
    assert torch.equal(o4[0], o5[0]) and torch.equal(o4[2], o5[2]) and torch.isnan(o4[1]).all()
    with pytest.raises(TypeError, match="validate"):
        decode(q, k, v, validate=1)

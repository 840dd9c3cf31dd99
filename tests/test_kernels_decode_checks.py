"""decode(validate=True) without device-to-host syncs (issue 17): where each check runs.

Metadata (seqlens, block_table) on the CPU are checked on the host (a ValueError, the messages of
tests/test_validation.py); metadata on q's device by decode._check_kernel, with device-side
asserts. Under the interpreter q is on the CPU, so decode always takes the host path; these tests
force the device path by monkeypatching decode._host_resident, the one place that chooses.

Triton's interpreter ignores ``@triton.jit(debug=True)`` (3.6.0 and 3.9.0: its InterpreterOptions
keep debug=False, so tl.device_assert is a no-op there); ``interpreter_debug`` turns it on so that
the kernel's asserts run as they do compiled. benchmarks/gpu_kernel_checks.py (group decode)
checks the compiled path on a GPU: no sync under torch.cuda.set_sync_debug_mode("error"), and
the assert message from a child process.
"""
import dataclasses
import re
import sys

import pytest
import torch

from flashproof.kernels import decode

from test_kernels_decode import _cache, _paginate
from test_kernels_util import rand

D = sys.modules["flashproof.kernels.decode"]
SEQLENS_RULE = re.escape(D._seqlens_rule())  # the assert's text: the names, not the numbers
PAGE_RULE = re.escape(f"block_table[b, p] {D._page_rule()}")

# Tensor -> Python conversions: each waits for the device (a sync) when the tensor is on a GPU.
SYNCING = ("item", "tolist", "nonzero", "cpu", "numpy", "__bool__", "__int__", "__index__", "__float__")


@pytest.fixture
def device_path(monkeypatch):
    """Every metadata tensor counts as device-resident: decode checks it with _check_kernel."""
    monkeypatch.setattr(D, "_host_resident", lambda t: False)


@pytest.fixture
def interpreter_debug(monkeypatch):
    """The interpreter honouring debug=True: tl.device_assert raises (InterpreterError)."""
    from triton.runtime import interpreter
    b = interpreter.interpreter_builder
    monkeypatch.setattr(b, "options", dataclasses.replace(b.options, debug=True))


@pytest.fixture
def launches(monkeypatch):
    """The names of the kernels decode launches, in order."""
    seen = []
    launch = D._launch

    def record(kernel, *a, **kw):
        seen.append(kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__)
        return launch(kernel, *a, **kw)
    monkeypatch.setattr(D, "_launch", record)
    return seen


def _forbid_syncs(monkeypatch):
    """Flashproof code calling a syncing Tensor method raises AssertionError. The direct caller's
    module decides, so the interpreter (triton's frames, standing in for the device) may still
    read; a sync inside a torch Python function that flashproof calls is not seen here (the GPU
    check under torch.cuda.set_sync_debug_mode sees every one)."""
    for name in SYNCING:
        orig = getattr(torch.Tensor, name)

        def guard(self, *a, _orig=orig, _name=name, **kw):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("flashproof"):
                raise AssertionError(f"Tensor.{_name} (a device-to-host sync) called from {caller}")
            return _orig(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, guard)


@pytest.fixture
def no_sync(monkeypatch):
    _forbid_syncs(monkeypatch)


def _problem(seed=5, lens=(37, 0, 48)):
    g = torch.Generator().manual_seed(seed)
    lens = list(lens)
    q = rand(len(lens), 4, 1, 32, dtype=torch.float16, gen=g)
    k, v = _cache(len(lens), 2, 48, 32, 32, lens, torch.float16, g)
    kp, vp, table = _paginate(k, v, lens, 16, g)  # unused entries are 2**30: never checked, never read
    return q, k, v, kp, vp, table, torch.tensor(lens, dtype=torch.int32)


def test_check_kernel_is_compiled_with_device_asserts():
    """Without debug=True, Triton drops tl.device_assert from the compiled kernel (the check would
    silently vanish). tests/test_kernels_compile.py builds it for sm_90 and finds the assert."""
    assert getattr(D._check_kernel, "debug", None) or D._check_kernel.kwargs.get("debug")


def test_the_guard_catches_a_sync(no_sync):
    """The no_sync fixture can fail: a host read of seqlens in flashproof code is caught."""
    with pytest.raises(AssertionError, match=r"Tensor.__int__ .* flashproof.kernels.decode"):
        D._check_seqlens_on_host(torch.tensor([1, 2]), 8)


@pytest.mark.parametrize("splits", [None, 3])
def test_device_path_has_no_sync_and_matches_the_host_path(splits, monkeypatch, launches):
    q, k, v, kp, vp, table, seqlens = _problem()
    kw = dict(num_splits=splits, block_n=16, return_lse=True)
    full = table[[2, 2, 2], :3]  # no seqlens: every slot is used; sequence 2's 48 keys fill 3 pages
    host = [decode(q, k, v, seqlens=seqlens, **kw), decode(q, kp, vp, seqlens=seqlens, block_table=table, **kw),
            decode(q, kp, vp, block_table=full, **kw)]
    assert "_check_kernel" not in launches
    monkeypatch.setattr(D, "_host_resident", lambda t: False)
    _forbid_syncs(monkeypatch)  # after the host-path calls: they read host values, as they may
    del launches[:]
    dev = [decode(q, k, v, seqlens=seqlens, **kw), decode(q, kp, vp, seqlens=seqlens, block_table=table, **kw),
           decode(q, kp, vp, block_table=full, **kw)]
    assert launches.count("_check_kernel") == 3 and launches[0] == "_check_kernel", launches
    for (oh, lh), (od, ld) in zip(host, dev):
        assert torch.equal(oh, od) and torch.equal(lh, ld)


@pytest.mark.parametrize("bad", [49, -1])
def test_device_check_fails_on_a_bad_seqlen(bad, device_path, interpreter_debug):
    from triton.runtime.errors import InterpreterError
    q, k, v, kp, vp, table, seqlens = _problem()
    seqlens[2] = bad
    with pytest.raises(InterpreterError, match=SEQLENS_RULE):
        decode(q, k, v, seqlens=seqlens)
    seqlens[2] = table.shape[1] * 16 + 1 if bad > 0 else bad  # paged: the capacity is max_pages * page_size
    with pytest.raises(InterpreterError, match=SEQLENS_RULE):
        decode(q, kp, vp, seqlens=seqlens, block_table=table)


@pytest.mark.parametrize("entry", ["past", "negative"])
@pytest.mark.parametrize("used", [(0, 2), (2, 2), (2, 0)], ids=["partial-last", "full-last", "first"])
def test_device_check_fails_on_a_used_page_only(entry, used, device_path, interpreter_debug):
    from triton.runtime.errors import InterpreterError
    q, k, v, kp, vp, table, seqlens = _problem()
    bad = kp.shape[0] if entry == "past" else -1
    t = table.clone()
    t[1, 0] = bad  # sequence 1 is empty: it uses no page
    t[0, 3] = bad  # sequence 0 (37 keys) uses slots 0..2, the last one for 5 keys
    t[2, 3] = bad  # sequence 2 (48 keys) uses slots 0..2, all full
    assert torch.equal(decode(q, kp, vp, seqlens=seqlens, block_table=t), decode(q, kp, vp, seqlens=seqlens,
                                                                                  block_table=table))
    t[used] = bad
    with pytest.raises(InterpreterError, match=PAGE_RULE):
        decode(q, kp, vp, seqlens=seqlens, block_table=t)
    with pytest.raises(InterpreterError, match=PAGE_RULE):  # no seqlens: every slot is used
        decode(q, kp, vp, block_table=table)


def test_mixed_residency(monkeypatch, interpreter_debug):
    """seqlens on the host (checked there, a ValueError first), block_table on the device (its
    entries need the lengths: checked by the kernel with the copied seqlens)."""
    from triton.runtime.errors import InterpreterError
    q, k, v, kp, vp, table, seqlens = _problem()
    t = table.clone()
    monkeypatch.setattr(D, "_host_resident", lambda x: x is not t)
    with pytest.raises(ValueError, match=re.escape(D._seqlens_rule(t.shape[1] * 16))):
        decode(q, kp, vp, seqlens=torch.tensor([37, 0, 1000], dtype=torch.int32), block_table=t)
    t[2, 1] = -5
    with pytest.raises(InterpreterError, match=PAGE_RULE):
        decode(q, kp, vp, seqlens=seqlens, block_table=t)
    t[2, 1], t[1, 0] = table[2, 1], -5  # an entry no sequence uses
    assert torch.equal(decode(q, kp, vp, seqlens=seqlens, block_table=t),
                       decode(q, kp, vp, seqlens=seqlens, block_table=table))


def test_host_path_messages_and_the_device_rules_share_their_text():
    q, k, v, kp, vp, table, seqlens = _problem()
    with pytest.raises(ValueError, match=re.escape(f"{D._seqlens_rule(48)}, got [0, 49]")):
        decode(q, k, v, seqlens=torch.tensor([37, 0, 49], dtype=torch.int32))
    t = table.clone()
    t[2, 2] = kp.shape[0]
    with pytest.raises(ValueError, match=re.escape(f"block_table[2, 2] = {kp.shape[0]} "
                                                   f"{D._page_rule(kp.shape[0] - 1)}")):
        decode(q, kp, vp, seqlens=seqlens, block_table=t)
    assert D._seqlens_rule() in D._SEQLENS_ASSERT.value and D._page_rule() in D._PAGE_ASSERT.value


def test_metadata_device_rule():
    """On q's device or on the CPU; any other device is refused, naming both. A CUDA q is stood
    in for by its torch.device (no GPU here): the rule reads only devices."""
    cuda = torch.device("cuda", 0)
    D._check_metadata(torch.zeros(2, dtype=torch.int32), "seqlens", cuda)  # host-resident: accepted
    assert D._host_resident(torch.zeros(2, dtype=torch.int32))
    meta = torch.empty(2, 3, dtype=torch.int32, device="meta")
    assert not D._host_resident(meta)
    D._check_metadata(meta, "block_table", torch.device("meta"))  # on q's device: accepted
    with pytest.raises(ValueError, match=r"block_table is on meta, q on cuda:0: pass it on q's device, or on"):
        D._check_metadata(meta, "block_table", cuda)
    with pytest.raises(ValueError, match=r"seqlens is on meta, q on cpu"):  # end to end: q on the CPU
        decode(torch.zeros(2, 2, 1, 16), torch.zeros(2, 2, 8, 16), torch.zeros(2, 2, 8, 16),
               seqlens=torch.empty(2, dtype=torch.int32, device="meta"))
    with pytest.raises(TypeError, match="seqlens has dtype torch.float32"):
        D._check_metadata(torch.zeros(2), "seqlens", cuda)


@pytest.mark.parametrize("validate", [True, False])
def test_no_pages_refused_unless_checked_on_the_host(validate, device_path):
    """An out-of-range page is read as page 0: an empty pool is refused where the table is not
    checked on the host (validate=False, or device-resident)."""
    q = torch.zeros(2, 2, 1, 16)
    kp = torch.zeros(0, 2, 4, 16)
    with pytest.raises(ValueError, match="k_cache has no pages"):
        decode(q, kp, kp, block_table=torch.zeros(2, 0, dtype=torch.int32), validate=validate)

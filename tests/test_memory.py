"""Device memory: the accounting around every property (peak, retained, what is released between
properties), the fit check of a large-tensor property, and the long-context property's sizing.

There is no GPU here: the accounting runs against a fake device (FakeMemory) whose allocated
bytes are the live FakeBuffer objects, so a leak, a reference cycle or an exception that keeps an
example's frames alive shows up exactly as it would in torch.cuda's counters. The same checks on
a real GPU: tests/test_kernels_gpu.py::test_suite_retains_no_device_memory.
"""
from __future__ import annotations

import gc
import warnings
import weakref

import pytest
from hypothesis import strategies as st

from flashproof.properties import memory
from flashproof.properties.cases import Case, Problem
from flashproof.properties.context import make_context
from flashproof.properties.loading import load_target
from flashproof.properties.oracle import Violation
from flashproof.properties.outcomes import FAILED, PASSED, SKIPPED
from flashproof.properties.registry import Property, Skip
from flashproof.properties.suite import run_property

GB = 10 ** 9


class _Buffer:
    """Stands for a device tensor of some bytes."""


class FakeMemory(memory.DeviceMemory):
    """A device whose allocator caches freed blocks until release(), like torch's."""

    def __init__(self, total=80 * GB, others=0):
        self.total, self.others = total, others
        self.live = self.cached = self.top = 0
        self.releases = 0

    def buffer(self, n):
        b = _Buffer()
        self.live += n
        self.top = max(self.top, self.live)
        weakref.finalize(b, self._free, n)
        return b

    def _free(self, n):
        self.live -= n
        self.cached += n

    def free_and_total(self):
        return self.total - self.others - self.live - self.cached, self.total

    def allocated(self):
        return self.live

    def peak(self):
        return self.top

    def reset_peak(self):
        self.top = self.live

    def reserved(self):
        return self.live + self.cached

    def release(self):
        self.cached = 0
        self.releases += 1


@pytest.fixture
def no_auto_gc():
    """Reference cycles then live until someone collects them (as when CPython's thresholds, counted
    in objects and not bytes, do not fire for a few large tensors)."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_a_reference_cycle_is_collected_and_the_cache_released(no_auto_gc):
    mem = FakeMemory()
    with memory.track(mem) as use:
        a = {"tensor": mem.buffer(100)}
        a["self"] = a  # a cycle: refcounting alone never frees it
        del a
    assert (use.peak, use.retained, use.reserved) == (100, 0, 0)
    assert mem.free_and_total()[0] == mem.total  # nothing cached for the next property
    with memory.track(mem) as use:
        pass
    assert (use.peak, use.retained) == (0, 0)


def test_a_leak_is_reported_as_retained():
    mem = FakeMemory()
    kept = []
    with memory.track(mem) as use:
        kept.append(mem.buffer(300))
        mem.buffer(50)  # dropped at once: a peak, not retained
    assert use.retained == 300 and use.peak == 350
    kept.clear()


def test_no_counters_no_measurement():
    with memory.track(None) as use:
        pass
    assert (use.peak, use.retained) == (0, 0)
    assert memory.memory_api("cpu") is None
    assert memory.fits(None, 10 ** 15)  # nothing to check on the CPU


def _property(check, *, strategy=None):
    return Property(name="fake_memory_property", asserts="-", classes=(), check=check,
                    strategy=strategy or (lambda ctx: st.integers(0, 50).map(lambda s: Case(problem=Problem(seed=s)))))


def _ctx(mem):
    ctx = make_context(load_target("torch.nn.functional:scaled_dot_product_attention"), "ci", example_timeout=10)
    ctx.memory = mem
    return ctx


def test_a_failing_examples_tensors_die_with_the_example(no_auto_gc):
    """Hypothesis keeps a failing example's exception (and shrinks: many failing examples): the
    frames' locals are cleared, so the example's buffers do not pile up (peak = one example's)."""
    mem = FakeMemory()
    seen = []

    def check(ctx, case):
        x = mem.buffer(1000)  # noqa: F841 - held by this frame only
        seen.append(case.problem.seed)
        raise Violation(f"planted failure at seed {case.problem.seed}")

    ctx = _ctx(mem)
    out = run_property(_property(check), ctx.target, profile="ci", ctx=ctx)
    assert out.status == FAILED and len(seen) > 1
    assert out.peak_bytes == 1000, f"examples' buffers piled up: peak {out.peak_bytes} over {len(seen)} examples"
    assert out.retained_bytes == 0


def test_a_property_that_leaks_reports_it():
    mem = FakeMemory()
    kept = []

    def check(ctx, case):
        kept.append(mem.buffer(7))

    ctx = _ctx(mem)
    out = run_property(_property(check), ctx.target, profile="ci", ctx=ctx)
    assert out.status == PASSED and out.examples >= 3
    assert out.retained_bytes == 7 * out.examples and out.peak_bytes == 7 * out.examples
    kept.clear()


def test_require_skips_with_need_and_free():
    mem = FakeMemory(total=80 * GB, others=70 * GB)
    with pytest.raises(Skip, match=r"^needs 17\.2 GB, 10\.0 free \(of 80\.0 GB\)"):
        memory.require(mem, 17_200_000_000, what="the long-context inputs")
    assert memory.require(mem, 8 * GB, what="-") == 10 * GB
    # the margin: 10% of the need plus 1 GiB
    assert not memory.fits(mem, 8_200_000_000)  # 8.2 + 0.82 + 1.07 > 10
    assert memory.fits(mem, 8_000_000_000)


def test_workspace_estimate():
    lin = [(512, 512 * 100 + 7), (1024, 1024 * 100 + 7), (2048, 2048 * 100 + 7)]
    assert memory.workspace_estimate(lin, 131072) == 131072 * 100 + 7
    quad = [(n, 3 * n * n + 5 * n + 11) for n in (512, 1024, 2048)]
    assert memory.workspace_estimate(quad, 131072) == 3 * 131072 ** 2 + 5 * 131072 + 11
    flat = [(512, 900), (1024, 1000), (2048, 990)]  # a dip: never below the largest measured
    assert memory.workspace_estimate(flat, 4096) >= 1000
    with pytest.raises(ValueError):
        memory.workspace_estimate([(1, 1)], 2)


def test_is_out_of_memory():
    class OutOfMemoryError(RuntimeError):
        pass

    try:
        try:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        except OutOfMemoryError as inner:
            raise Violation("target raised") from inner
    except Violation as exc:
        assert memory.is_out_of_memory(exc)
    assert not memory.is_out_of_memory(ValueError("shape"))
    assert memory.is_out_of_memory(RuntimeError("CUDA error: out of memory"))


def test_fmt_bytes():
    assert memory.fmt_bytes(None) == "-" and memory.fmt_bytes(12) == "12 B"
    assert memory.fmt_bytes(3_400_000) == "3.4 MB" and memory.fmt_bytes(17_200_000_000) == "17.2 GB"


# ----------------------------------------------------------------------------- long context sizing
def _long_ctx(mem, *, gqa):
    from flashproof.properties.targets import from_sdpa
    import torch

    t = from_sdpa(torch.nn.functional.scaled_dot_product_attention, name="fake-gpu", backward=False)
    t.gqa = gqa
    ctx = make_context(t, "gpu", example_timeout=10)
    ctx.device, ctx.memory = "cuda", mem  # its probes cannot run here: the need is the inputs and outputs
    return ctx


def test_long_context_skips_with_its_need_when_it_cannot_fit():
    from flashproof.properties.props_forward import LONG_SIZE, _long_strategy, long_context_bytes

    b, h, n, e = LONG_SIZE
    need = long_context_bytes((b, h, h, n, e), 2)
    assert need == 4 * b * h * n * e * 2 + b * h * n * 4  # q, k, v, O in fp16 and an fp32 LSE: 17.2 GB
    mem = FakeMemory(total=80 * GB, others=75 * GB)
    with pytest.raises(Skip, match=rf"^needs {need / GB:.1f} GB, 5\.0 free"):
        _long_strategy(_long_ctx(mem, gqa=False))


def test_long_context_sizes_itself_to_the_free_memory():
    from flashproof.properties.props_forward import LONG_SIZE, _long_strategy, long_context_bytes

    b, h, n, e = LONG_SIZE
    full, one_kv = long_context_bytes((b, h, h, n, e), 2), long_context_bytes((b, h, 1, n, e), 2)
    for free, gqa, want in ((80 * GB, True, h), (one_kv * 1.1 + 2 * GB, True, 1), (80 * GB, False, h)):
        mem = FakeMemory(total=80 * GB, others=80 * GB - int(free))
        strat = _long_strategy(_long_ctx(mem, gqa=gqa))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # .example() outside a test: fine for one draw
            case = strat.example()
        assert case.get("kv_heads") == want and case.get("size") == LONG_SIZE
    mem = FakeMemory(total=80 * GB, others=80 * GB - int(one_kv * 1.1 + 2 * GB))
    with pytest.raises(Skip, match="needs"):
        _long_strategy(_long_ctx(mem, gqa=False))  # no GQA: one KV head is not an option
    assert full > one_kv


def test_long_context_check_skips_on_out_of_memory():
    """An OOM during the example (other processes took the memory) is a skip with its reason, not a
    violation of the target."""
    from flashproof.properties import PROPERTIES
    from flashproof.properties.targets import from_sdpa

    def oom(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        raise RuntimeError("CUDA out of memory. Tried to allocate 4.00 GiB")

    ctx = make_context(from_sdpa(oom, name="oom", backward=False), "gpu")
    with pytest.raises(Skip, match="ran out of device memory at B, H, Hkv, L, E = \\(1, 2, 2, 19, 8\\)"):
        PROPERTIES["long_context_sampled_rows"].check(ctx, Case(problem=Problem(dtype="float16", seed=1),
                                                                 extra=(("size", (1, 2, 19, 8)), ("causal", False))))

"""Device memory: what a large-tensor property may allocate, and what each property leaves behind.

- :func:`require`: a large-tensor property sizes itself from the device's free memory
  (``torch.cuda.mem_get_info``, after the caching allocator has returned its free blocks) and is
  skipped with ``needs N GB, M free`` when it cannot fit, rather than ending in an out-of-memory
  error or an ERROR row.
- :func:`track`: around every property the suite collects garbage (a failing example's traceback
  keeps its frames, and with them the example's tensors, alive in a reference cycle) and empties
  torch's caching allocator, then measures the property's peak (``max_memory_allocated`` over it)
  and retained bytes (``memory_allocated`` after it and the collection, minus before it).
- :func:`workspace_estimate`: the memory a target needs beyond its inputs and outputs at a length
  too large to try, extrapolated from measured peaks at three smaller lengths.

Memory is read through a :class:`DeviceMemory` (:class:`CudaMemory` for a CUDA device; None on the
CPU, where nothing is measured), so the accounting is tested on CPU with a fake (tests/).
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass

from .registry import skip

__all__ = ["DeviceMemory", "CudaMemory", "MemoryUse", "memory_api", "release", "track", "fits", "require", "gb",
           "fmt_bytes", "is_out_of_memory", "workspace_estimate", "SAFETY_FRACTION", "SAFETY_BYTES"]

#: What a fit check keeps free beyond the estimated need: 10% of the need (the caching allocator
#: rounds requests up to its block sizes and can fragment) plus 1 GiB (CUDA context growth, cuBLAS
#: workspaces, and the reference rows the property copies out). A stated margin, not a measurement.
SAFETY_FRACTION = 0.10
SAFETY_BYTES = 1 << 30


class DeviceMemory:
    """The memory counters of one device (every method in bytes)."""

    def free_and_total(self) -> tuple:
        raise NotImplementedError

    def allocated(self) -> int:
        raise NotImplementedError

    def peak(self) -> int:
        """The most allocated at once since the last :meth:`reset_peak`."""
        raise NotImplementedError

    def reset_peak(self) -> None:
        raise NotImplementedError

    def reserved(self) -> int:
        """Held by this process's allocator (allocated or cached)."""
        return self.allocated()

    def release(self) -> None:
        """Return cached, unallocated blocks to the device."""

    def describe(self) -> str:
        return type(self).__name__


class CudaMemory(DeviceMemory):
    """torch.cuda's counters for ``device``."""

    def __init__(self, device="cuda"):
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def free_and_total(self):
        free, total = self.torch.cuda.mem_get_info(self.device)
        return int(free), int(total)

    def allocated(self):
        return int(self.torch.cuda.memory_allocated(self.device))

    def peak(self):
        return int(self.torch.cuda.max_memory_allocated(self.device))

    def reset_peak(self):
        self.torch.cuda.reset_peak_memory_stats(self.device)

    def reserved(self):
        return int(self.torch.cuda.memory_reserved(self.device))

    def release(self):
        self.torch.cuda.empty_cache()

    def describe(self):
        return describe_cuda(self.device)


def describe_cuda(device="cuda") -> str:
    """``cuda:I <name> <uuid>`` of ``device`` (I: the index this process sees)."""
    import torch

    dev = torch.device(device)
    i = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(i)
    uuid = getattr(props, "uuid", None)
    return f"cuda:{i} {props.name}" + (f" GPU-{uuid}" if uuid is not None else "")


def memory_api(device) -> DeviceMemory | None:
    """The DeviceMemory of ``device`` (a CUDA device), or None (nothing to measure)."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return CudaMemory(device)


def release(mem: DeviceMemory | None) -> None:
    """Collect garbage, then return the allocator's free blocks to the device."""
    gc.collect()
    if mem is not None:
        mem.release()


@dataclass
class MemoryUse:
    """What one property did to device memory (bytes): ``peak`` above what was allocated before it,
    ``retained`` still allocated after it (and a garbage collection), ``reserved`` what the process
    holds afterwards (allocated plus what the allocator could not return)."""

    peak: int = 0
    retained: int = 0
    reserved: int = 0


@contextlib.contextmanager
def track(mem: DeviceMemory | None):
    """Measure the block's device memory into the yielded MemoryUse (left at zeros when ``mem`` is
    None); releases garbage and cached blocks before and after it, so one property's leftovers
    never count against the next one's free memory."""
    use = MemoryUse()
    if mem is None:  # CPU: nothing measured, and a full collection costs ~0.15 s with sympy loaded
        yield use
        return
    release(mem)
    mem.reset_peak()
    base = mem.allocated()
    try:
        yield use
    finally:
        release(mem)
        use.peak = max(0, mem.peak() - base)
        use.retained = mem.allocated() - base
        use.reserved = mem.reserved()


def gb(n) -> str:
    return f"{n / 1e9:.1f}"


def fmt_bytes(n) -> str:
    """A byte count for reports: B, KB, MB or GB (decimal)."""
    if n is None:
        return "-"
    a = abs(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if a >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _margin(need) -> int:
    return int(SAFETY_FRACTION * need) + SAFETY_BYTES


def fits(mem: DeviceMemory | None, need: int) -> bool:
    """Whether ``need`` bytes plus the safety margin fit the free memory after a release (True
    without counters: nothing to check)."""
    if mem is None:
        return True
    release(mem)
    return need + _margin(need) <= mem.free_and_total()[0]


def require(mem: DeviceMemory | None, need: int, *, what: str) -> int:
    """Skip (``needs N GB, M free``) unless ``need`` bytes plus the safety margin fit the device's
    free memory after a release; returns the free bytes. ``mem`` None: nothing is checked (CPU)."""
    if mem is None:
        return 0
    release(mem)
    free, total = mem.free_and_total()
    margin = _margin(need)
    if need + margin > free:
        skip(f"needs {gb(need)} GB, {gb(free)} free (of {gb(total)} GB): {what}; the margin kept free is "
             f"{gb(margin)} GB (memory.SAFETY_FRACTION of the need + SAFETY_BYTES)")
    return free


def is_out_of_memory(exc) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a device out-of-memory error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def workspace_estimate(points, length) -> int:
    """Workspace bytes at ``length`` from measured ``points`` [(length, bytes)] (three or more,
    increasing lengths): the larger of the quadratic through the last three points and the line
    through the last two, never below the largest measurement (a + b L + c L^2 covers what
    attention kernels allocate: O(L) statistics, O(L^2) score matrices)."""
    pts = sorted((int(x), max(0, int(y))) for x, y in points)
    if len(pts) < 2:
        raise ValueError(f"workspace_estimate needs at least two points, got {pts}")
    (x1, y1), (x2, y2) = pts[-2], pts[-1]
    slope = (y2 - y1) / (x2 - x1)
    est = y2 + slope * (length - x2)
    if len(pts) >= 3:
        (x0, y0) = pts[-3]
        # Newton's divided differences through the three points
        d01, d12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        c = (d12 - d01) / (x2 - x0)
        quad = y0 + d01 * (length - x0) + c * (length - x0) * (length - x1)
        est = max(est, quad)
    return int(max(est, max(y for _, y in pts)))

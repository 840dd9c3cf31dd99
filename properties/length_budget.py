"""The length budget: at ``ci`` and ``deep`` a fast target is tested at longer sequences than the
profile's base ``max_len``, so a kernel with fixed 32- to 64-key tiles runs many tiles.

The rule (``Limits.length_levels``, ``Limits.call_seconds``; ci: 40 -> 128, 256, 512 within
0.3 s per call; deep: 96 -> 256, 512 within 1 s):

1. Time the target on the probe problem at the current length L: B = 1, H = Hkv = 4, Lq = Lk = L,
   E = 64 (or the nearest head dim the run draws), float32 if declared (else the first declared
   dtype), no mask, moved into the target's domain (``domain.conform``). One warm-up call (a
   compile, a cache), then the fastest of REPEATS calls: contention only ever adds time, so the
   minimum is the least noisy estimate of what the call costs. On the CPU the clock is the
   process's CPU time, not the wall clock: other processes on a shared machine (another CI job,
   the other pytest-xdist worker) then barely move it, and a target computing on several threads
   counts each thread's time (an overestimate: conservative). On a GPU it is the wall clock
   around the call and a synchronize.
2. Predict the next level L' as t(L) (L'/L)^2: attention costs O(Lq Lk); for a target whose calls
   are dominated by per-call overhead the prediction is high, never low.
3. If the prediction is within ``call_seconds``, take L' and go to 1 at L'; otherwise stop. The
   run's ``max_len`` is the last level taken: the profile's base when the first prediction is over
   budget, never above the last level (the cap) or the target's declared ``max_len``.

``call_seconds`` is the suite's budget per call: at ci about twice what flashproof's own kernel
costs under the Triton interpreter at the base length (measured 0.14 s at the probe shape), so a
fast target at the raised level costs per call about what the default target costs at the base.
Measured on this project's 2-core machine (CPU time): the zoo's numpy kernels predict 0.07-0.13 s
at 512 (2.3x or more under the budget), torch's SDPA 0.006 s; flashproof's kernel predicts
1.5-1.8 s at 128 (5x over); the torch tiled peer stops at 128 (256 predicts 0.38 s).

Determinism. The choice depends on timing, so it is made once per run and everything after it is
deterministic: ci's examples are derandomized given ``max_len``, and the level is a few values far
apart (each step multiplies the predicted cost by 4 to 10), so a target changes level between runs
only when its measured cost sits within timing noise of a threshold. The level is printed in the
report header (pytest and ``flashproof check``), written to the JSON report and to every
reproducer file, and a reproducer replays its Case, whose lengths are explicit: a changed level
never changes what a reproducer runs. To fix the level (a CI that must draw the same examples
every run), pin it: ``--flashproof-max-len=N``, ``flashproof check --max-len N``,
``run_suite(max_len=N)``. Under pytest-xdist one worker decides and the others read its decision
(plugin.py), so every worker draws from the same level.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .cases import Problem, Shape
from .context import Context, limits_for
from .domain import conform, in_domain
from .profiles import get_profile

__all__ = ["LengthChoice", "choose_max_len", "apply_length_budget", "ladder", "predicted", "REPEATS",
           "PROBE_HEADS", "PROBE_HEAD_DIM"]

#: timed calls per level after the warm-up (the fastest counts)
REPEATS = 3
PROBE_HEADS = 4
PROBE_HEAD_DIM = 64


@dataclass(frozen=True)
class LengthChoice:
    """How a run's max_len was chosen: ``max_len`` (after the target's declared limit), ``base``
    (the profile's), ``how`` ("budget", "pinned" or "profile"), the measured ``timings``
    [(L, seconds per call)], ``levels`` and ``call_seconds`` of the rule, and why it stopped."""

    max_len: int
    base: int
    how: str = "profile"
    timings: tuple = ()
    levels: tuple = ()
    call_seconds: float | None = None
    stopped: str = ""
    notes: tuple = field(default=())

    def note(self) -> str:
        """One line for reports and reproducer headers."""
        if self.how == "pinned":
            return f"max_len {self.max_len} (pinned; the profile's is {self.base})"
        if self.how == "profile":
            return f"max_len {self.max_len} (the profile's{'; ' + self.stopped if self.stopped else ''})"
        t = ", ".join(f"{_ms(s)} at L={n}" for n, s in self.timings) or "no timing"
        return (f"max_len {self.max_len} (length budget: {t} per call; levels "
                f"{'/'.join(map(str, (self.base,) + tuple(self.levels)))}, next taken while its predicted call is "
                f"<= {self.call_seconds:g} s; {self.stopped})")

    def as_dict(self) -> dict:
        return {"max_len": self.max_len, "base": self.base, "how": self.how,
                "timings": [[n, s] for n, s in self.timings], "levels": list(self.levels),
                "call_seconds": self.call_seconds, "stopped": self.stopped, "note": self.note()}

    @classmethod
    def from_dict(cls, d) -> "LengthChoice":
        return cls(max_len=int(d["max_len"]), base=int(d["base"]), how=d.get("how", "budget"),
                   timings=tuple((int(n), float(s)) for n, s in d.get("timings", ())),
                   levels=tuple(d.get("levels", ())), call_seconds=d.get("call_seconds"),
                   stopped=d.get("stopped", ""))


def _ms(s) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def predicted(seconds, length, to) -> float:
    """The quadratic prediction of one call's cost at length ``to`` from ``seconds`` at ``length``."""
    return seconds * (to / length) ** 2


def ladder(measure, base, levels, call_seconds):
    """The rule's steps 1-3 over ``measure(L) -> (seconds, L actually run)`` or (None, reason): the
    chosen length, the timings [(L, seconds)] and why it stopped."""
    timings, cur = [], base
    for nxt in levels:
        secs, ran = measure(cur)
        if secs is None:
            return cur, tuple(timings), f"stopped: {ran}"
        timings.append((ran, secs))
        guess = predicted(secs, ran, nxt)
        if guess > call_seconds:
            return cur, tuple(timings), f"stopped: {nxt} predicts {_ms(guess)} per call"
        cur = nxt
    return cur, tuple(timings), "the cap"


def _probe_problem(ctx, length):
    t = ctx.target
    dtype = "float32" if "float32" in t.dtypes else t.dtypes[0]
    dims = ctx.limits.head_dims
    e = PROBE_HEAD_DIM if PROBE_HEAD_DIM in dims else min(dims, key=lambda d: (abs(d - PROBE_HEAD_DIM), d))
    p = Problem(shape=Shape(1, PROBE_HEADS, PROBE_HEADS, length, length, e, e), dtype=dtype, seed=0)
    return conform(t, p)


def _measurer(ctx: Context, clock):
    import dataclasses

    from .inputs import build
    from .timeouts import TimedOut, run_example

    cuda = str(ctx.device).startswith("cuda")
    # A copy: a timing call that hangs and cannot be stopped is left behind without marking the run's
    # target hung, so the first property calls it again and reports the hang as its TIMEOUT.
    ctx = dataclasses.replace(ctx, abandoned=[], in_target=0)

    def one(c, inp):
        c.call(inp)
        if cuda:
            import torch

            torch.cuda.synchronize()

    def measure(length):
        p = _probe_problem(ctx, length)
        if not in_domain(ctx.target, p):
            return None, f"the probe problem at L={length} is outside the target's domain"
        inp = build(p, device=ctx.device)
        best = None
        try:
            for i in range(REPEATS + 1):
                t0 = clock()
                run_example(ctx, one, inp, "length budget")
                dt = clock() - t0
                if i:  # the first call warms up
                    best = dt if best is None else min(best, dt)
        except TimedOut as exc:
            return None, (f"a timing call at L={p.shape.lk} ran past the {exc.limit:g} s example limit"
                          + ("" if exc.stopped else " and could not be stopped"))
        except Exception as exc:  # noqa: BLE001 - the properties report a raising target; the budget stops
            err = exc.__cause__ if exc.__cause__ is not None else exc  # ctx.call's TargetError: the target's own
            line = (str(err).strip().splitlines() or [""])[0][:120]
            return None, f"a timing call at L={p.shape.lk} raised {type(err).__name__}: {line}"
        return best, p.shape.lk
    return measure


def choose_max_len(ctx: Context, *, max_len=None, clock=None) -> LengthChoice:
    """The run's max_len for ``ctx`` (built with the profile's base limits): ``max_len`` an int pins
    it; None applies the rule (the profile's own when it has no levels). ``clock``: seconds now
    (default: the process's CPU time on the CPU, the wall clock on a GPU)."""
    if clock is None:
        clock = time.perf_counter if str(ctx.device).startswith("cuda") else time.process_time
    lim = get_profile(ctx.profile).limits
    base = lim.max_len
    declared = ctx.target.max_len
    if max_len is not None:
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive int (or None: the length budget), got {max_len!r}")
        chosen = max_len if declared is None else min(max_len, declared)
        return LengthChoice(max_len=chosen, base=base, how="pinned")
    levels = tuple(x for x in lim.length_levels if declared is None or x <= declared)
    if not levels:
        why = "no length budget at this profile" if not lim.length_levels else \
            f"the target declares max_len {declared}"
        return LengthChoice(max_len=ctx.limits.max_len, base=base, how="profile", stopped=why)
    if ctx.hung:
        return LengthChoice(max_len=ctx.limits.max_len, base=base, how="profile", stopped=ctx.hung)
    chosen, timings, stopped = ladder(_measurer(ctx, clock), base, levels, lim.call_seconds)
    return LengthChoice(max_len=chosen, base=base, how="budget", timings=timings, levels=levels,
                        call_seconds=lim.call_seconds, stopped=stopped)


def apply_length_budget(ctx: Context, choice: LengthChoice | None = None, *, max_len=None) -> LengthChoice:
    """Choose (or take ``choice``, decided elsewhere: another pytest-xdist worker) and set
    ``ctx.limits`` and ``ctx.length``; returns the choice."""
    if choice is None:
        choice = choose_max_len(ctx, max_len=max_len)
    ctx.limits = limits_for(ctx.target, ctx.profile, max_len=choice.max_len)
    ctx.length = choice
    return choice

"""The per-example time limit, and the time limit of loading a target.

Each example runs in a daemon worker thread that the caller joins with a timeout: unlike
signal.alarm, this returns even when the target blocks in C code that releases the GIL (a CUDA
synchronize, a sleep, a lock) and works off the main thread; a thread cannot be killed, so a
pure-Python loop is stopped with an asynchronous exception and anything else is abandoned.
"""
from __future__ import annotations

import math
import numbers
import threading
import traceback

from .profiles import get_profile
from .registry import TargetTimeout
from .loading import load_target

__all__ = ["resolve_example_timeout", "run_example", "TimedOut", "timeout_message", "load_target_within",
           "LOAD_TIMEOUT_FLOOR"]


def resolve_example_timeout(value, profile="ci"):
    """The per-example limit in seconds for ``value`` (None: the profile's default; 0 or inf:
    no limit, returned as None). Raises TypeError/ValueError naming ``example_timeout``."""
    if value is None:
        return float(get_profile(profile).example_timeout)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"example_timeout must be a number of seconds or None, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"example_timeout must be >= 0 seconds (0: no limit), got {value}")
    return None if value == 0 or math.isinf(value) else value


class _Abandon(BaseException):
    """Raised inside a timed-out example's thread to stop it (a BaseException, so a target's
    ``except Exception`` does not swallow it)."""


class _Flush(BaseException):
    """Delivered to the caller's own thread to clear CPython's pending-async-exception flag."""


class TimedOut(BaseException):
    """An example ran past its limit. A BaseException, so Hypothesis lets it through at once
    instead of shrinking (every shrink step would wait out the limit again)."""

    def __init__(self, limit, stopped, where):
        super().__init__(f"example ran past {limit} s")
        self.limit, self.stopped, self.where = limit, stopped, where


class _Worker(threading.Thread):
    def __init__(self, fn, args, name):
        # named after the property, so a stack dump (or a test target) can tell which one hangs
        super().__init__(name=f"flashproof-example:{name}", daemon=True)
        self.fn, self.args, self.exc = fn, args, None
        torch = __import__("sys").modules.get("torch")
        # grad mode and the CUDA device are per thread in torch: carry the caller's over
        self.grad = torch.is_grad_enabled() if torch is not None else None
        self.cuda = torch.cuda.current_device() if torch is not None and torch.cuda.is_initialized() else None

    def run(self):
        try:
            torch = __import__("sys").modules.get("torch")
            if torch is None:
                self.fn(*self.args)
                return
            if self.cuda is not None:
                torch.cuda.set_device(self.cuda)
            with torch.set_grad_enabled(self.grad):
                self.fn(*self.args)
        except BaseException as exc:  # handed to the caller, which raises it in its own thread
            self.exc = exc


def _stop(worker, grace=1.0) -> bool:
    """Ask a timed-out worker to stop (works in Python code, not in a blocking C call); whether it did."""
    import ctypes

    try:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), ctypes.py_object(_Abandon))
    except Exception:  # not CPython: the worker is abandoned
        pass
    worker.join(grace)
    if not worker.is_alive():
        return True
    # Stuck in C: withdraw the exception. CPython 3.11 keeps an interpreter-wide "async exception
    # pending" flag that only a thread consuming one clears, and while it stays set the caller's
    # eval loop can spin (measured: Hypothesis's shrinker never returned), so consume one here.
    try:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(worker.ident), None)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(threading.get_ident()), ctypes.py_object(_Flush))
        for _ in range(10 ** 6):  # delivered at this loop's first eval-breaker check
            pass
    except _Flush:
        pass
    except Exception:
        pass
    return False


def run_example(ctx, fn, case, name):
    """``fn(ctx, case)`` (property ``name``) under ``ctx.example_timeout``: its exception is
    re-raised here; past the limit, TimedOut (and a worker that could not be stopped is recorded
    in ctx.abandoned). The worker thread is named ``flashproof-example:<property>``."""
    try:
        _run_example(ctx, fn, case, name)
    except BaseException as exc:
        _drop_locals(exc)
        raise


def _drop_locals(exc):
    """Clear the locals of the finished frames in ``exc``'s traceback (and its causes'): the
    example's tensors then die with the example, although Hypothesis keeps a failing example's
    exception until the property ends (its message and traceback text are unchanged)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _run_example(ctx, fn, case, name):
    limit = ctx.example_timeout
    if not limit:
        fn(ctx, case)
        return
    w = _Worker(fn, (ctx, case), name)
    w.start()
    try:
        w.join(limit)
    except BaseException:  # Ctrl-C (or SIGTERM) while waiting: stop the example too, then let it through
        if w.is_alive() and not _stop(w, grace=0.2):
            ctx.abandoned.append(("interrupted example", w))
        raise
    if w.is_alive():
        where = ("inside a call of the target" if ctx.in_target else
                 "outside the target's forward call: in its decode or backward, or in flashproof's own checks")
        stopped = _stop(w)
        if not stopped:
            ctx.abandoned.append((name, w))
        raise TimedOut(limit, stopped, where)
    exc, w.exc = w.exc, None
    if exc is not None:
        raise exc


#: Loading a target (its import, and the call load_target makes to probe an SDPA callable for
#: gradients) gets at least this long: a cold ``import torch, triton`` alone takes seconds.
LOAD_TIMEOUT_FLOOR = 60.0


def load_target_within(target, example_timeout):
    """load_target, stopped after max(example_timeout, LOAD_TIMEOUT_FLOOR) seconds with
    TargetTimeout (a SIGALRM timer: only in the main thread, and only where the hang runs Python
    code or a call that a signal interrupts, e.g. a sleep). No limit when example_timeout is None."""
    import signal

    if (not example_timeout or threading.current_thread() is not threading.main_thread()
            or not hasattr(signal, "setitimer")):
        return load_target(target)
    limit = max(float(example_timeout), LOAD_TIMEOUT_FLOOR)

    def on_alarm(signum, frame):
        raise TimedOut(limit, True, "while loading the target: its import, or the one call load_target makes "
                                     "to probe an SDPA callable for gradients")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return load_target(target)
    except TimedOut as exc:
        raise TargetTimeout(f"TIMEOUT: the target did not load within {limit:g} s ({exc.where}). A hang is a "
                            f"violation.") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def timeout_message(name, limit, t) -> str:
    """What a TIMEOUT outcome says: the limit, where the example hung, whether it was stopped."""
    what = ("its call was stopped" if t.stopped else
            "its call could not be stopped and still runs in a background thread: the target is not called "
            "again in this run")
    return (f"TIMEOUT: an example of {name!r} did not finish within the per-example time limit of {limit:g} s "
            f"(it was {t.where}); {what}. A hang is a violation: raise the limit with --example-timeout / "
            f"--flashproof-example-timeout / example_timeout= if the target is merely slow.")

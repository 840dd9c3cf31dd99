"""The property registry and the runner shared by pytest and ``flashproof check``.

A property is a check ``check(ctx, case)`` (raises :class:`oracle.Violation`), a strategy of
:class:`strategies.Case` built from the target's declared capabilities, deterministic corner
cases run first as explicit examples, and the capability it needs. :func:`run_suite` runs each
property the target's capabilities allow under a Hypothesis profile; the others are reported
"not declared", never silently passed.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import threading
import time
import traceback
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Callable

from . import oracle
from .oracle import Violation
from .strategies import Case, Limits
from .targets import Target, load_target

__all__ = [
    "Property", "PROPERTIES", "prop", "Context", "Outcome", "SuiteResult", "TargetError", "TargetTimeout",
    "SuiteInterrupted", "run_suite", "run_property", "replay", "reproducer", "PINNED", "pin",
    "PASSED", "FAILED", "SKIPPED", "NOT_DECLARED", "ERROR", "XFAIL", "XPASS", "TIMEOUT", "NOT_RUN",
    "STATE_DIR", "LOAD_TIMEOUT_FLOOR", "resolve_example_timeout", "load_target_within", "prepare_state_dir",
    "save_reproducer",
]

PASSED, FAILED, SKIPPED, NOT_DECLARED, ERROR, XFAIL, XPASS = (
    "passed", "failed", "skipped", "not declared", "error", "xfail", "xpass")
#: an example did not finish within the per-example time limit (a violation: exit 1)
TIMEOUT = "timeout"
#: the property did not run: the run was interrupted, or the target hung in an earlier property
NOT_RUN = "not run"
#: where ``flashproof check`` and the pytest plugin keep their state by default (relative to the cwd)
STATE_DIR = ".flashproof"


class TargetError(Violation):
    """The target raised on a valid input (a violation: the input is in its declared domain)."""


class TargetTimeout(Violation):
    """An example did not finish within the per-example time limit (a hang is the target's fault)."""


class SuiteInterrupted(KeyboardInterrupt):
    """run_suite was interrupted (Ctrl-C, or SIGTERM under ``flashproof check``): ``result`` holds
    the properties that finished (the others are "not run"); ``result.exit_code`` is 128 + signal."""

    def __init__(self, result, signum):
        done = sum(o.status != NOT_RUN for o in result.outcomes)
        super().__init__(f"interrupted by signal {signum} after {done} of {len(result.outcomes)} properties")
        self.result = result
        self.signum = signum


@dataclass(frozen=True)
class Property:
    name: str
    asserts: str
    classes: tuple
    check: Callable
    strategy: Callable
    corners: Callable | None = None
    needs: Callable | None = None
    bound: str = ""
    calls_target: bool = True
    #: multiplier on the profile's max_examples (expensive properties generate fewer)
    examples: float = 1.0

    def reason_not_declared(self, target: Target):
        return self.needs(target) if self.needs is not None else None


PROPERTIES: dict = {}
#: Counterexamples found against real targets, pinned as explicit examples: name -> [Case].
PINNED: dict = {}


def prop(name, *, asserts, classes=(), strategy, corners=None, needs=None, bound="", calls_target=True,
         examples=1.0):
    """Register ``check`` as a property (decorator)."""
    def deco(check):
        if name in PROPERTIES:
            raise ValueError(f"property {name!r} registered twice")
        PROPERTIES[name] = Property(name, asserts, tuple(classes), check, strategy, corners, needs, bound,
                                    calls_target, examples)
        return check
    return deco


def pin(name, *cases, found=""):
    """Pin counterexamples (Cases) for property ``name``: they always run first (as explicit
    examples) on every target whose declared capabilities can express them."""
    PINNED.setdefault(name, []).extend((c, found) for c in cases)


def _applicable(case: Case, target: Target):
    """The pinned case adapted to the target (undeclared tiles dropped), or None if it needs a
    capability the target does not declare."""
    p = case.problem
    m = p.mask
    if p.dtype not in target.dtypes:
        return None
    if m.causal and m.causal not in target.alignments:
        return None
    if (m.window is not None and not target.window) or (m.attn_mask and not target.attn_mask):
        return None
    if (p.softcap is not None and not target.softcap) or (p.shape.heads != p.shape.kv_heads and not target.gqa):
        return None
    if target.head_dims is not None and (p.shape.e not in target.head_dims or p.shape.ev not in target.head_dims):
        return None
    tile = case.tile
    if tile is not None and dict(tile) not in [dict(c) for c in target.tile_configs]:
        tile = None
    return Case(problem=p, tile=tile, extra=case.extra)


# ----------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a property check sees: the target, the profile's limits, and helpers."""

    target: Target
    limits: Limits
    profile: str
    device: str
    calls: int = 0
    #: per-example time limit in seconds (None: none; each example then runs in the caller's thread)
    example_timeout: float | None = None
    #: Hypothesis database: a directory, None (the profile's own setting) or False (none)
    database: object = None
    #: folder for reproducer files, each written as soon as its failure is known (None: no files)
    reproducer_dir: str | None = None
    #: [(property, thread)] of timed-out examples whose call could not be stopped
    abandoned: list = field(default_factory=list)
    #: target calls under way in Context.call (tells a hang in the target from one elsewhere)
    in_target: int = 0

    @property
    def hung(self) -> str:
        """Why the target cannot be called now ("" if it can): an abandoned call still runs."""
        alive = [name for name, th in self.abandoned if th.is_alive()]
        if not alive:
            return ""
        return (f"the target hung in {alive[0]!r} (its call is still running in a background thread, so the target "
                f"is not called again in this run)")

    def call(self, inp, *, tile=None, return_lse=None, **override):
        """Run the target on ``inp`` (spec's options, overridable); returns (o, lse or None).

        An exception from the target on a valid input is a violation (TargetError)."""
        t = self.target
        opts = inp.opts()
        opts.update(override)
        q, k, v = opts.pop("q", inp.q), opts.pop("k", inp.k), opts.pop("v", inp.v)
        want_lse = t.lse if return_lse is None else return_lse
        if tile and not self.tile_fits(tile, q, v):
            tile = None  # this config does not fit these dims (declared by the target): its default
        self.calls += 1
        self.in_target += 1
        try:
            o, lse = t(q, k, v, return_lse=want_lse, tile=tile, **opts)
        except Exception as exc:
            raise TargetError(f"target {t.name!r} raised {type(exc).__name__} on a valid input: {exc}") from exc
        finally:
            self.in_target -= 1
        b, h, lq = q.shape[0], q.shape[1], q.shape[2]
        ev = v.shape[-1]
        if not isinstance(o, type(q)):  # the contract: O is a tensor like the inputs
            raise Violation(f"O must be a torch.Tensor, got {type(o).__name__}")
        if tuple(o.shape) != (b, h, lq, ev):
            raise Violation(f"O has shape {tuple(o.shape)}, expected (B, H, Lq, Ev) = {(b, h, lq, ev)}")
        if o.dtype != q.dtype:
            raise Violation(f"O has dtype {o.dtype}, expected the input dtype {q.dtype}")
        if want_lse:
            if lse is None or tuple(lse.shape) != (b, h, lq):
                raise Violation(f"LSE has shape {None if lse is None else tuple(lse.shape)}, expected (B, H, Lq) = "
                                f"{(b, h, lq)}")
        return o, lse

    def tile_fits(self, tile, q, v) -> bool:
        acc = self.target.accepts_tile
        if acc is None or not tile:
            return True
        return bool(acc(dict(tile), head_dim=int(q.shape[-1]), head_dim_v=int(v.shape[-1]), dtype=q.dtype))

    def n_tiles(self, tile, lk):
        """Key tiles of a call (for the bound), or None when the target does not say."""
        bn = dict(tile or {}).get("block_n")
        return max(1, -(-lk // int(bn))) if bn else None

    def toward_zero(self, inp) -> bool:
        return inp.dtype_name in self.target.round_toward_zero

    def u_in(self, inp) -> float:
        return oracle.U_IN[inp.dtype_name] * (2 if self.toward_zero(inp) else 1)

    def bound(self, inp, *, tile=None):
        return oracle.bound(inp, accumulator=self.target.accumulator, c_exp=self.target.c_exp,
                            n_tiles=self.n_tiles(tile, inp.k.shape[2]), toward_zero=self.toward_zero(inp))

    def judge(self, inp, o, lse, *, tile=None, label="", fa=True, ex=None, bounds=None):
        """Assert O (and LSE) within the running bound of the exact values, and the FA criterion."""
        o_b, l_b = bounds if bounds is not None else self.bound(inp, tile=tile)
        if ex is None:
            ex = oracle.exact(inp, need_o=o_b, need_lse=l_b if lse is not None else None)
        src = oracle.bound_source()
        ctx = f" ({label})" if label else ""
        oracle.assert_within(f"O{ctx}", oracle.to_np(o), ex.o, o_b + ex.o_rad,
                             what=f"the running error bound [{src} bound, {ex.source} reference]")
        if lse is not None:
            lse_np = oracle.to_np(lse)
            lb = l_b + _lse_store(lse, ex.lse)
            oracle.assert_within(f"LSE{ctx}", lse_np, ex.lse, lb + ex.lse_rad,
                                 what=f"the running LSE bound [{src} bound, {ex.source} reference]",
                                 dims="(b, h, i)")
        if fa:
            nerr = oracle.naive_error(inp, ex)
            eps = oracle.fa_eps(inp, ex, u_acc=oracle.precision(inp.dtype_name, accumulator=self.target.accumulator).u_acc,
                                c_exp=self.target.c_exp or 4.0, n_tiles=self.n_tiles(tile, inp.k.shape[2]),
                                u_in=self.u_in(inp))
            oracle.assert_fa_criterion(f"O{ctx}", oracle.to_np(o), ex, nerr, eps)
        return ex, (o_b, l_b)

    def tiles(self):
        return list(self.target.tile_configs) or [None]


def _lse_store(lse, want):
    """Extra LSE error when the target stores LSE below fp32 (the bound assumes fp32)."""
    import numpy as np

    name = str(lse.dtype).replace("torch.", "")
    u = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}.get(name, 0.0)
    return u * np.where(np.isfinite(want), np.abs(want), 0.0) * 1.01


# ----------------------------------------------------------------------------- outcomes
@dataclass
class Outcome:
    name: str
    status: str
    examples: int = 0
    seconds: float = 0.0
    message: str = ""
    reproducer: str = ""
    case: Case | None = None
    #: seconds of the slowest example (what the per-example time limit is measured against)
    slowest: float = 0.0
    #: the reproducer file written for this failure ("" if none)
    reproducer_file: str = ""
    #: recorded by an earlier, interrupted run and taken from its journal (``resume=True``)
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, SKIPPED, NOT_DECLARED, XFAIL, XPASS)


@dataclass
class SuiteResult:
    target: str
    profile: str
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0
    bound_source: str = ""
    #: the run was interrupted (then ``signum`` says by which signal; the rest is "not run")
    interrupted: bool = False
    signum: int = 0
    #: what the run said about its state files (journal resumed or not, and why)
    notes: list = field(default_factory=list)
    #: threads of timed-out examples that could not be stopped (a caller may exit without them)
    abandoned: list = field(default_factory=list, repr=False)

    @property
    def failures(self):
        """Violations: failed properties and timed-out examples (a hang is the target's fault)."""
        return [o for o in self.outcomes if o.status in (FAILED, TIMEOUT)]

    @property
    def errors(self):
        return [o for o in self.outcomes if o.status == ERROR]

    @property
    def not_run(self):
        return [o for o in self.outcomes if o.status == NOT_RUN]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors and not self.interrupted

    @property
    def exit_code(self) -> int:
        from flashproof.cli import EXIT_ERROR, EXIT_OK, EXIT_VIOLATION

        if self.interrupted:  # the shell's convention: 128 + the signal (130 for Ctrl-C)
            return 128 + (self.signum or 2)
        if self.failures:
            return EXIT_VIOLATION
        if self.errors:
            return EXIT_ERROR
        return EXIT_OK

    def __getitem__(self, name) -> Outcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def table(self) -> str:
        w = max([len("property")] + [len(o.name) for o in self.outcomes])
        lines = [f"{'property':<{w}}  {'outcome':<12}  {'examples':>8}  {'time':>8}",
                 f"{'-' * w}  {'-' * 12}  {'-' * 8}  {'-' * 8}"]
        for o in self.outcomes:
            mark = "  (resumed)" if o.resumed else ""
            lines.append(f"{o.name:<{w}}  {o.status:<12}  {o.examples:>8}  {o.seconds:>7.2f}s{mark}")
        counts = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        resumed = sum(o.resumed for o in self.outcomes)
        lines.append("")
        lines.append(f"target {self.target}, profile {self.profile}, bound: {self.bound_source}; "
                     + ", ".join(f"{n} {s}" for s, n in counts.items())
                     + (f" ({resumed} resumed from the journal)" if resumed else "") + f"; {self.seconds:.1f}s"
                     + ("; INTERRUPTED" if self.interrupted else ""))
        return "\n".join(lines)

    def details(self) -> str:
        out = []
        not_run: dict = {}
        for o in self.outcomes:
            if o.status in (FAILED, ERROR, XFAIL, TIMEOUT):
                saved = f"\nreproducer file: {o.reproducer_file}" if o.reproducer_file else ""
                out.append(f"=== {o.name}: {o.status}{' (resumed)' if o.resumed else ''} ===\n{o.message}\n"
                           f"{o.reproducer}{saved}".rstrip())
            elif o.status in (NOT_DECLARED, SKIPPED, XPASS) and o.message:
                out.append(f"--- {o.name}: {o.status}: {o.message}")
            elif o.status == NOT_RUN:
                not_run.setdefault(o.message, []).append(o.name)
        for why, names in not_run.items():  # one line per reason: an interrupted run leaves many
            out.append(f"--- {len(names)} not run ({why}): {', '.join(names)}")
        return "\n\n".join(out)


# ----------------------------------------------------------------------------- reproducers
def reproducer(name, case: Case, target: Target, profile: str) -> str:
    tgt = repr(target.spec) if target.spec else "None  # the Target object you ran (no module:attr known)"
    return (f"Falsifying example of {name!r} against {target.name} (profile {profile}):\n"
            + "\n".join("  " + line for line in case.describe().splitlines())
            + "\nRe-run it with:\n"
            f"  from flashproof.properties import replay\n"
            f"  from flashproof.properties.strategies import Case, MaskSpec, Problem, Regime, Shape\n"
            f"  replay({name!r}, {case!r},\n         target={tgt})\n")


def replay(name, case, *, target=None, profile="ci", example_timeout=None):
    """Re-run one property on one Case; raises Violation (with the message) if it fails, and
    TargetTimeout if it does not finish within ``example_timeout`` seconds (None: the profile's
    default, 0: no limit)."""
    _load_properties()
    if name not in PROPERTIES:
        raise ValueError(f"unknown property {name!r}; known: {sorted(PROPERTIES)}")
    if not isinstance(case, Case):
        raise TypeError(f"case must be a strategies.Case, got {type(case).__name__}")
    limit = resolve_example_timeout(example_timeout, profile)
    t = load_target(target)
    ctx = _context(t, profile, example_timeout=limit)
    try:
        _run_example(ctx, PROPERTIES[name].check, case, name)
    except _TimedOut as exc:
        raise TargetTimeout(_timeout_message(name, limit, exc)) from None
    return True


def _context(target, profile, *, example_timeout=None, database=None, reproducer_dir=None) -> Context:
    from .profiles import limits_for

    lim = limits_for(profile)
    if target.max_len is not None:
        lim = Limits(**{**lim.__dict__, "max_len": min(lim.max_len, target.max_len)})
    if target.head_dims is not None:
        hd = tuple(e for e in lim.head_dims if e in target.head_dims) or tuple(sorted(target.head_dims))[:4]
        lim = Limits(**{**lim.__dict__, "head_dims": hd})
    return Context(target=target, limits=lim, profile=profile, device=target.device(),
                   example_timeout=example_timeout, database=database, reproducer_dir=reproducer_dir)


# ----------------------------------------------------------------------------- per-example time limit
# Each example runs in a daemon worker thread that the caller joins with a timeout: unlike
# signal.alarm, this returns even when the target blocks in C code that releases the GIL (a CUDA
# synchronize, a sleep, a lock) and works off the main thread; a thread cannot be killed, so a
# pure-Python loop is stopped with an asynchronous exception and anything else is abandoned.

def resolve_example_timeout(value, profile="ci"):
    """The per-example limit in seconds for ``value`` (None: the profile's default; 0 or inf:
    no limit, returned as None). Raises TypeError/ValueError naming ``example_timeout``."""
    import math
    import numbers

    from .profiles import EXAMPLE_TIMEOUT, _base

    if value is None:
        return float(EXAMPLE_TIMEOUT[_base(profile)])
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


class _TimedOut(BaseException):
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


def _run_example(ctx, fn, case, name):
    """``fn(ctx, case)`` (property ``name``) under ``ctx.example_timeout``: its exception is
    re-raised here; past the limit, _TimedOut (and a worker that could not be stopped is recorded
    in ctx.abandoned). The worker thread is named ``flashproof-example:<property>``."""
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
        raise _TimedOut(limit, stopped, where)
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
        raise _TimedOut(limit, True, "while loading the target: its import, or the one call load_target makes "
                                     "to probe an SDPA callable for gradients")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return load_target(target)
    except _TimedOut as exc:
        raise TargetTimeout(f"TIMEOUT: the target did not load within {limit:g} s ({exc.where}). A hang is a "
                            f"violation.") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _timeout_message(name, limit, t) -> str:
    what = ("its call was stopped" if t.stopped else
            "its call could not be stopped and still runs in a background thread: the target is not called "
            "again in this run")
    return (f"TIMEOUT: an example of {name!r} did not finish within the per-example time limit of {limit:g} s "
            f"(it was {t.where}); {what}. A hang is a violation: raise the limit with --example-timeout / "
            f"--flashproof-example-timeout / example_timeout= if the target is merely slow.")


# ----------------------------------------------------------------------------- state files
def _key_text(target, profile) -> str:
    from .profiles import _base

    return f"{target.spec or target.name}|{_base(profile)}"


def _db_key(name, target, profile) -> bytes:
    """Hypothesis database key of one property against one target and profile (Hypothesis's own
    key hashes the test function's source, which is the same closure for every property)."""
    return hashlib.sha384(f"flashproof|{name}|{_key_text(target, profile)}".encode()).digest()


def _fsync_write(path, text, *, mode="w"):
    """Write (mode "w": atomically, through a temporary file) and fsync, so a kill keeps it."""
    path = os.fspath(path)
    if mode == "a":
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # the rename itself survives a crash only once the folder is synced
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def prepare_state_dir(path) -> str:
    """Create the state folder (with a ``.gitignore`` of ``*`` when flashproof creates it, so its
    files never show up in a checkout). Raises ValueError naming the path if it cannot be written."""
    path = os.fspath(path)
    existed = os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"state directory {path!r}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"state directory {path!r} is not writable")
    if not existed:
        _fsync_write(os.path.join(path, ".gitignore"), "# flashproof's state (Hypothesis database, reproducers, "
                     "journal): not source\n*\n")
    return path


def _jsonable(x):
    import math

    if is_dataclass(x) and not isinstance(x, type):
        return {"type": type(x).__name__, **{f.name: _jsonable(getattr(x, f.name)) for f in fields(x)}}
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)  # "nan", "inf", "-inf": JSON has no literal for them
    if isinstance(x, (list, tuple)):
        return [_jsonable(y) for y in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return repr(x)


def _case_from_repr(text):
    """The Case a reproducer printed (``repr(case)``), or None."""
    from . import strategies

    names = {n: getattr(strategies, n) for n in ("Case", "Problem", "Shape", "MaskSpec", "Regime")}
    try:
        case = eval(text, {"__builtins__": {"float": float}}, names)  # our own journal's text
    except Exception:
        return None
    return case if isinstance(case, Case) else None


def save_reproducer(ctx, name, case, *, status, message, minimal=True) -> str:
    """Write ``<reproducer_dir>/<property>-<hash>.py`` (runnable: exits 1 when it reproduces) and
    its ``.json`` (the case, structured) at once, fsynced; returns the .py path ("" if none).

    One pair per (property, target, profile): a later failure, or the shrunk example replacing
    the first one found, overwrites it."""
    if not ctx.reproducer_dir or case is None:
        return ""
    from flashproof import __version__

    target, profile = ctx.target, ctx.profile
    os.makedirs(ctx.reproducer_dir, exist_ok=True)
    stem = f"{name}-{hashlib.sha1(_key_text(target, profile).encode()).hexdigest()[:8]}"
    base = os.path.join(ctx.reproducer_dir, stem)
    found = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    which = "the shrunk (minimal) example" if minimal else "the first failing example (before shrinking)"
    head = "\n".join("# " + line for line in (
        [f"flashproof reproducer: {status} of property {name!r} against {target.name} (profile {profile})",
         f"{which}; found {found}; flashproof {__version__}", ""]
        + case.describe().splitlines() + [""] + message.splitlines()[:40]))
    if target.spec:
        tgt = repr(target.spec)
        missing = ""
    else:
        tgt = "None"
        missing = ("if TARGET is None:\n    sys.exit('set TARGET to the Target object you ran (it had no "
                   "module:attr)')\n")
    code = (f"{head}\n#\n# Run it: python {stem}.py  -- exit 1: reproduced; exit 0: the property holds on this case.\n"
            f"import sys\n\n"
            f"from flashproof.properties import replay\n"
            f"from flashproof.properties.oracle import Violation\n"
            f"from flashproof.properties.strategies import Case, MaskSpec, Problem, Regime, Shape\n\n"
            f"TARGET = {tgt}\n"
            f"CASE = {case!r}\n\n"
            f"if __name__ == '__main__':\n"
            + "".join("    " + line + "\n" for line in missing.splitlines())
            + f"    try:\n"
            f"        replay({name!r}, CASE, target=TARGET, profile={profile!r},\n"
            f"               example_timeout={ctx.example_timeout or 0!r})\n"
            f"    except Violation as exc:\n"
            f"        print(f'reproduced: {{type(exc).__name__}}: {{exc}}')\n"
            f"        sys.exit(1)\n"
            f"    print('not reproduced: the property holds on this case')\n")
    doc = {"property": name, "status": status, "target": target.spec, "target_name": target.name,
           "profile": profile, "minimal": minimal, "found": found, "flashproof": __version__,
           "message": message, "case_repr": repr(case), "case": _jsonable(case)}
    _fsync_write(base + ".json", json.dumps(doc, indent=2) + "\n")
    _fsync_write(base + ".py", code)
    return base + ".py"


class _Journal:
    """``journal.jsonl``: a header with the run's key, then one line per finished property,
    appended and fsynced as each finishes. ``resume`` takes the finished ones of a journal with
    the same key; any other journal is replaced (and the reason is returned as a note)."""

    def __init__(self, path, key):
        self.path, self.key = os.fspath(path), key

    def start(self, *, resume):
        done, note = {}, None
        if resume:
            header, entries = self._read()
            if header is None:
                note = f"resume: no journal at {self.path}; starting fresh"
            elif header.get("key") != self.key:
                diff = [f"{k} {header.get('key', {}).get(k)!r} -> {v!r}" for k, v in self.key.items()
                        if header.get("key", {}).get(k) != v]
                note = (f"resume: the journal {self.path} is from another run ({'; '.join(diff)}): not resumed, "
                        f"starting fresh")
            else:
                for e in entries:
                    done[e["name"]] = Outcome(e["name"], e["status"], e.get("examples", 0), e.get("seconds", 0.0),
                                              e.get("message", ""), e.get("reproducer", ""),
                                              _case_from_repr(e["case"]) if e.get("case") else None,
                                              e.get("slowest", 0.0), e.get("reproducer_file", ""), resumed=True)
                note = (f"resume: {len(done)} properties already finished in {self.path} (started "
                        f"{header.get('started', '?')}) are reported from it, not run again")
                _fsync_write(self.path, json.dumps({"resumed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n",
                             mode="a")
                return done, note
        _fsync_write(self.path, json.dumps({"journal": 1, "key": self.key,
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        return done, note

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            return None, []
        header, entries = None, []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a kill: everything before it stands
                continue
            if i == 0:
                if not isinstance(rec, dict) or "key" not in rec:
                    return None, []
                header = rec
            elif isinstance(rec, dict) and "name" in rec and "status" in rec:
                entries.append(rec)
        return header, entries

    def record(self, o: Outcome):
        rec = {"name": o.name, "status": o.status, "examples": o.examples, "seconds": round(o.seconds, 3),
               "slowest": round(o.slowest, 3), "message": o.message, "reproducer": o.reproducer,
               "reproducer_file": o.reproducer_file, "case": repr(o.case) if o.case is not None else None}
        _fsync_write(self.path, json.dumps(rec) + "\n", mode="a")


def _file_digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except (OSError, TypeError):
        return None


def _run_key(target, profile) -> dict:
    """What a journal must match to be resumed: the target (and the source file of its module),
    the profile, flashproof's version and a digest of the property suite's source."""
    import sys

    from flashproof import __version__

    from .profiles import _base

    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for fn in sorted(os.listdir(here)):
        if fn.endswith(".py"):
            h.update(fn.encode() + b"\0" + (open(os.path.join(here, fn), "rb").read()))
    mod = sys.modules.get((target.spec or "").split(":")[0]) if target.spec else None
    return {"target": target.spec or target.name, "target_source": _file_digest(getattr(mod, "__file__", None)),
            "profile": _base(profile), "flashproof": __version__, "suite": h.hexdigest()[:16]}


# ----------------------------------------------------------------------------- running
@contextlib.contextmanager
def _shrink_budget(seconds):
    """Cap Hypothesis's shrinking time (its engine reads this module constant per run)."""
    try:
        from hypothesis.internal.conjecture import engine
    except Exception:  # internal layout changed: keep Hypothesis's default
        yield
        return
    old = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if old is not None:
        engine.MAX_SHRINKING_SECONDS = seconds
    try:
        yield
    finally:
        if old is not None:
            engine.MAX_SHRINKING_SECONDS = old


def run_property(p: Property, target: Target, *, profile="ci", ctx: Context | None = None) -> Outcome:
    """Run one property; its options for time limit, database and reproducer files come from
    ``ctx`` (built with the profile's default time limit when not given)."""
    from hypothesis import example, given, settings
    from hypothesis.errors import HypothesisException

    from .profiles import SHRINK_SECONDS, settings_for

    t0 = time.perf_counter()
    reason = p.reason_not_declared(target)
    if reason:
        return Outcome(p.name, NOT_DECLARED, message=reason)
    ctx = ctx or _context(target, profile, example_timeout=resolve_example_timeout(None, profile))
    if ctx.hung:
        return Outcome(p.name, NOT_RUN, message=ctx.hung)
    state = {"n": 0, "case": None, "slowest": 0.0, "file": ""}
    try:
        strategy = p.strategy(ctx)
        corners = list(p.corners(ctx)) if p.corners else []
    except _Skip as s:
        return Outcome(p.name, SKIPPED, message=str(s), seconds=time.perf_counter() - t0)
    for c, _found in PINNED.get(p.name, []):
        c = _applicable(c, target)
        if c is not None and c not in corners:
            corners.append(c)
    known = target.known_deviations.get(p.name)

    def test(case):
        state["n"] += 1
        state["case"] = case
        t = time.perf_counter()
        try:
            _run_example(ctx, p.check, case, p.name)
        except Violation as exc:
            if not state["file"] and not known:  # on disk before shrinking starts: a kill keeps it
                state["file"] = _save(ctx, p.name, case, FAILED, str(exc), minimal=False)
            raise
        finally:
            state["slowest"] = max(state["slowest"], time.perf_counter() - t)

    fn = given(strategy)(test)
    for c in reversed(corners):
        fn = example(c)(fn)
    base_settings = settings_for(profile)
    db = {}
    if ctx.database is False:
        db = {"database": None}
    elif ctx.database:
        from hypothesis.database import DirectoryBasedExampleDatabase

        db = {"database": DirectoryBasedExampleDatabase(os.fspath(ctx.database))}
    fn = settings(base_settings, max_examples=max(1, round(base_settings.max_examples * p.examples)), **db)(fn)
    fn._hypothesis_internal_database_key = _db_key(p.name, target, profile)
    if base_settings.derandomize:  # what @seed sets, without the database=None that @seed adds (--db must work)
        from .profiles import DERANDOMIZED_SEED

        fn._hypothesis_internal_use_seed = DERANDOMIZED_SEED
    base = profile.replace("flashproof-", "")
    from hypothesis.reporting import with_reporter

    reports = []
    budget = SHRINK_SECONDS.get(base, 300)

    def done(status, message="", *, reproduce=False):
        case = state["case"] if reproduce else None
        out = Outcome(p.name, status, state["n"], time.perf_counter() - t0, message,
                      reproducer(p.name, case, target, profile) if case is not None else "", case, state["slowest"])
        if case is not None and status in (FAILED, TIMEOUT):
            out.reproducer_file = _save(ctx, p.name, case, status, message, minimal=status == FAILED) or state["file"]
        return out

    try:
        # Hypothesis's own reports (its shrink-deadline warning) are collected: ours say it all.
        with _shrink_budget(budget), with_reporter(reports.append):
            fn()
    except _TimedOut as exc:
        return done(TIMEOUT, _timeout_message(p.name, exc.limit, exc), reproduce=True)
    except Violation as exc:
        status = XFAIL if known else FAILED
        msg = str(exc) + (f"\nKnown deviation of {target.name}: {known}" if known else "")
        if any("shrink" in r for r in reports):
            msg += f"\n(shrinking stopped at the {profile} profile's {budget} s budget: the example may not be minimal)"
        if isinstance(exc, TargetError) and exc.__cause__ is not None:
            msg += "\n" + "".join(traceback.format_exception_only(type(exc.__cause__), exc.__cause__)).rstrip()
        return done(status, msg, reproduce=True)
    except _Skip as s:
        return done(SKIPPED, str(s))
    except (HypothesisException, Exception) as exc:
        tb = traceback.format_exc()
        return done(ERROR, f"flashproof could not run this property: {type(exc).__name__}: {exc}\n{tb}", reproduce=True)
    status = XPASS if known else PASSED
    return done(status, f"known deviation not reproduced: {known}" if known else "")


def _save(ctx, name, case, status, message, *, minimal):
    """save_reproducer, but a full disk or a read-only folder never costs the run its verdict."""
    try:
        return save_reproducer(ctx, name, case, status=status, message=message, minimal=minimal)
    except OSError as exc:
        import sys

        print(f"flashproof: could not write the reproducer of {name!r}: {exc}", file=sys.stderr)
        return ""


class _Skip(Exception):
    """Raised by a strategy or check when the property cannot apply (the reason is reported)."""


def skip(reason):
    raise _Skip(reason)


def _load_properties():
    from . import props_forward, props_masks, props_decode, props_backward, pins  # noqa: F401  (register)


def select_properties(select=None):
    _load_properties()
    names = list(PROPERTIES)
    if select is None:
        return names
    if isinstance(select, str):
        select = [select]
    chosen = []
    for pat in select:
        hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hit:
            raise ValueError(f"select: {pat!r} matches no property; known: {names}")
        chosen += [n for n in hit if n not in chosen]
    return [n for n in names if n in chosen]


def run_suite(target, *, profile="ci", select=None, fail_fast=False, progress=None, example_timeout=None,
              state_dir=None, db=None, resume=False, notify=None) -> SuiteResult:
    """Run every property the target's capabilities allow; returns per-property outcomes.

    ``target``: a Target, an SDPA callable, or a "module:attr" string. ``select``: property
    names or fnmatch patterns. ``fail_fast``: stop after the first failed (or timed-out) property.
    ``progress``: optional callable(Outcome) called after each property.
    ``example_timeout``: seconds one example may take (None: the profile's default, 0: no limit);
    past it the property is a TIMEOUT violation.
    ``state_dir``: a folder for the run's state (None: none): the Hypothesis database
    (``<state_dir>/hypothesis``, or ``db``), a reproducer file per failure (``reproducers/``,
    written as soon as the failure is known) and ``journal.jsonl`` (one line per finished property).
    ``db``: the Hypothesis database folder (None: ``<state_dir>/hypothesis``, or the profile's own
    setting without a state_dir; False: none). ``resume``: skip the properties a journal of the same
    target, profile and suite already finished, reporting their recorded outcomes (``resumed``).
    ``notify``: optional callable(str) for what the run says about its state files.

    Ctrl-C raises SuiteInterrupted, whose ``result`` holds what finished.
    """
    from .profiles import register_profiles

    register_profiles()
    limit = resolve_example_timeout(example_timeout, profile)
    if db is not None and db is not False and not isinstance(db, (str, os.PathLike)):
        raise TypeError(f"db must be a folder path, None or False, got {type(db).__name__}")
    if state_dir is not None and not isinstance(state_dir, (str, os.PathLike)):
        raise TypeError(f"state_dir must be a folder path or None, got {type(state_dir).__name__}")
    if resume and state_dir is None:
        raise ValueError("resume=True needs state_dir (the journal lives there)")
    names = select_properties(select)
    t = load_target_within(target, limit)
    t0 = time.perf_counter()
    res = SuiteResult(target=t.name, profile=profile, bound_source=oracle.bound_source())
    journal, done = None, {}
    if state_dir is not None:
        state_dir = prepare_state_dir(state_dir)
        if db is None:
            db = os.path.join(state_dir, "hypothesis")
        journal = _Journal(os.path.join(state_dir, "journal.jsonl"), _run_key(t, profile))
        done, note = journal.start(resume=resume)
        if note:
            res.notes.append(note)
            if notify is not None:
                notify(note)
    ctx = _context(t, profile, example_timeout=limit, database=db,
                   reproducer_dir=os.path.join(state_dir, "reproducers") if state_dir is not None else None)
    try:
        for n in names:
            out = done.get(n)
            if out is None:
                out = run_property(PROPERTIES[n], t, profile=profile, ctx=ctx)
                if journal is not None and out.status != NOT_RUN:
                    journal.record(out)
            res.outcomes.append(out)
            if progress is not None:
                progress(out)
            if fail_fast and out.status in (FAILED, TIMEOUT):
                break
    except KeyboardInterrupt as exc:  # Ctrl-C (SIGTERM under flashproof check): report what finished
        import signal

        finished = {o.name for o in res.outcomes}
        res.outcomes += [Outcome(n, NOT_RUN, message="the run was interrupted")
                         for n in names if n not in finished]
        res.interrupted = True
        res.signum = int(getattr(exc, "signum", signal.SIGINT))
        res.seconds = time.perf_counter() - t0
        res.abandoned = [th for _, th in ctx.abandoned]
        raise SuiteInterrupted(res, res.signum) from None
    res.seconds = time.perf_counter() - t0
    res.abandoned = [th for _, th in ctx.abandoned]
    return res

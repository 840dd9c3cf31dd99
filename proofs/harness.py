"""Evaluate ANY merge operator on the cases the max creates, and never crash doing it.

A merge under test may branch with plain Python ``if``/``max()`` on its inputs (as kernels are
written), raise, hang, return the wrong type or length, or mutate its inputs. :func:`guard` turns
each of those into an :class:`OperatorFailure` naming what happened. The domain of a merge of k
states is split into exhaustive cases: which states are empty (the identity ``(-inf, 0, 0)``) and
the weak order of the maxima of the others (ties are their own cases). Each case is evaluated

* at symbolic values that satisfy it: ``m = mu + d_1 + ... + d_r`` with ``d_i > 0`` (rank r), so
  every order comparison SymPy is asked is decidable, ``l > 0``, ``acc`` real;
* at exact rational representatives (degenerate ones included: ``m = 0``, ``l = 1``, equal ``l``,
  zero and equal accumulators), which also catch ``==`` special cases: Python ``==`` on SymPy
  symbols is structural, so an ``if l == 1:`` branch is never taken at a symbol.

An operator SymPy cannot evaluate at the symbolic values (it converts a state to float, or
branches on the sign of an accumulator) raises :class:`Undecidable`: such a check is NOT PROVED,
whatever the representatives say.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import signal
import threading
import time
from dataclasses import dataclass

import sympy as sp

from flashproof.spec import State

from .core import SYMPY, SymbolicWidth, SympyOps, SymVec, exact_equal, is_zero

__all__ = [
    "OperatorFailure",
    "Undecidable",
    "Timeout",
    "deadline",
    "guard",
    "Case",
    "cases",
    "case_m",
    "case_states",
    "REPRESENTATIVES",
    "WIDTHS",
    "merge_errors",
    "componentwise",
    "by_cases",
    "attempt",
    "record",
    "why",
]

#: Accumulator widths at which every component is checked: all of 1..9, the powers of two 16..512
#: (chunk sizes), one past each (a partial last chunk), and the head dims in use 40..192.
WIDTHS = tuple(range(1, 10)) + (16, 17, 32, 33, 40, 48, 64, 65, 72, 80, 96, 112, 128, 129, 160, 192, 256,
                                 257, 512, 513)
#: Exact representatives evaluated in every case besides the symbolic values.
REPRESENTATIVES = 3
#: Seconds an operator call (or one check) may take before it counts as a failure.
CALL_SECONDS = 20.0

_UNDECIDABLE = ("cannot determine truth value", "Cannot convert expression to float",
                "Cannot convert complex to float", "Invalid comparison of non-real")


class OperatorFailure(Exception):
    """The operator raised, hung, returned something that is not a state, or mutated an input."""


class Undecidable(OperatorFailure):
    """The operator branched on (or converted) a value SymPy cannot decide at the symbolic values."""


class Timeout(BaseException):
    """A deadline passed (BaseException: an operator's ``except Exception`` cannot swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise :class:`Timeout` in the main thread after ``seconds`` (no-op elsewhere); nests."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:
        yield  # an enclosing deadline fires first
        return
    t0 = time.monotonic()

    def fire(signum, frame):
        raise Timeout(f"no result within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer_left:
            signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - t0), 1e-3))


def _copy_acc(acc):
    if isinstance(acc, SymVec):
        return acc
    try:
        return acc.copy() if hasattr(acc, "copy") else list(acc)
    except Exception:  # noqa: BLE001 -- an exotic container: deep copy it
        return copy.deepcopy(acc)


def _same(x, y) -> bool:
    if x is y:
        return True
    try:
        if hasattr(x, "shape") and hasattr(y, "shape"):
            return x.shape == y.shape and x.tobytes() == y.tobytes()
        eq = x == y
        if isinstance(eq, bool) and eq:
            return True
        return x != x and y != y  # NaN stays NaN
    except Exception:  # noqa: BLE001
        return False


def _snapshot(st: State):
    acc = st.acc if isinstance(st.acc, SymVec) or hasattr(st.acc, "shape") else tuple(st.acc)
    return (st.m, st.l, acc)


def _unchanged(before, after) -> bool:
    if not (_same(before[0], after[0]) and _same(before[1], after[1])):
        return False
    a, b = before[2], after[2]
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return _same(a, b)


def _as_state(out, width, ops) -> State:
    if all(hasattr(out, f) for f in ("m", "l", "acc")):
        m, l, acc = out.m, out.l, out.acc
    elif isinstance(out, (tuple, list)) and len(out) == 3:
        m, l, acc = out
    else:
        raise OperatorFailure(f"returned {type(out).__name__} {_short(out)}, not a state (m, l, acc)")
    if isinstance(width, SymVec):
        if not isinstance(acc, SymVec):
            raise OperatorFailure(f"returned acc of type {type(acc).__name__} for a symbolic-width accumulator")
    else:
        try:
            acc = list(acc)
        except Exception as exc:  # noqa: BLE001
            raise OperatorFailure(f"returned acc {_short(acc)} that is not a sequence ({exc})") from None
        if len(acc) != width:
            raise OperatorFailure(f"returned acc of length {len(acc)} for inputs of width {width}")
    if isinstance(ops, SympyOps):
        try:
            m, l = sp.sympify(m, strict=True), sp.sympify(l, strict=True)
            if not isinstance(acc, SymVec):
                acc = [sp.sympify(x, strict=True) for x in acc]
        except Exception as exc:  # noqa: BLE001
            raise OperatorFailure(f"returned a non-numeric value ({type(exc).__name__}: {exc})") from None
        for name, x in (("m", m), ("l", l)):
            if not isinstance(x, sp.Expr):
                raise OperatorFailure(f"returned {name} = {_short(x)}, not a number")
    return State(m, l, acc)


def _short(x, n: int = 60) -> str:
    try:
        r = " ".join(repr(x).split())  # one line
    except Exception:  # noqa: BLE001
        r = f"<{type(x).__name__}>"
    return r if len(r) <= n else r[:n] + "..."


def guard(merge, *, seconds: float | None = None):
    """``merge`` as a callable ``(a, b, ops) -> State`` that raises :class:`OperatorFailure` (or
    :class:`Undecidable`) instead of anything else. The operator gets its own copies of the inputs;
    a change to them is reported as a mutation. ``seconds``: per call (default :data:`CALL_SECONDS`)."""
    if hasattr(merge, "__wrapped_operator__"):
        return merge  # already guarded

    def call(a: State, b: State, ops=SYMPY) -> State:
        ins = [State(st.m, st.l, _copy_acc(st.acc)) for st in (a, b)]
        before = [_snapshot(st) for st in ins]
        width = a.acc if isinstance(a.acc, SymVec) else len(a.acc)
        own_ops = copy.copy(ops)  # an operator that reassigns ops.exp changes only its own copy
        try:
            with deadline(seconds or CALL_SECONDS):
                out = merge(ins[0], ins[1], own_ops)
                changed = [not _unchanged(x, _snapshot(st)) for x, st in zip(before, ins)]
                if any(changed):
                    which = " and ".join(n for n, c in zip("ab", changed) if c)
                    raise OperatorFailure(f"mutated its input state {which}")
                return _as_state(out, width, ops)
        except OperatorFailure:
            raise
        except Timeout as exc:
            raise OperatorFailure(f"did not return: {exc}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 -- SystemExit too: the harness never exits
            msg = f"raised {type(exc).__name__}: {_short(str(exc), 160)}"
            if isinstance(exc, SymbolicWidth) or (isinstance(exc, TypeError) and any(u in str(exc) for u in _UNDECIDABLE)):
                raise Undecidable(msg) from None
            raise OperatorFailure(msg) from None

    call.__wrapped_operator__ = merge
    call.__name__ = getattr(merge, "__name__", type(merge).__name__)
    return call


# --- cases -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One cell of the case split of k states: ``ranks[i]`` is None (state i empty) or the rank of
    its maximum (equal ranks: a tie)."""

    ranks: tuple

    @property
    def name(self) -> str:
        letters = "abcdefgh"
        live = sorted((r, letters[i]) for i, r in enumerate(self.ranks) if r is not None)
        empty = [letters[i] for i, r in enumerate(self.ranks) if r is None]
        parts = []
        if len(live) > 1:
            out = f"m_{live[0][1]}"
            for (r0, _), (r1, x) in zip(live, live[1:]):
                out += (" = " if r0 == r1 else " < ") + f"m_{x}"
            parts.append(out + (" (tie)" if len({r for r, _ in live}) < len(live) else ""))
        if len(empty) == len(self.ranks) and len(empty) > 1:
            parts.append("both empty" if len(empty) == 2 else "all empty")
        elif empty:
            parts.append(" and ".join(empty) + " empty")
        if len(live) == 1:
            parts.append(f"{live[0][1]} non-empty")
        return ", ".join(parts)

    @property
    def live(self) -> list:
        return [i for i, r in enumerate(self.ranks) if r is not None]


def _weak_orders(n: int):
    """Every weak order of n items as ranks 0..k-1 (ordered set partitions)."""
    for ranks in itertools.product(range(n), repeat=n):
        used = sorted(set(ranks))
        if used == list(range(len(used))):
            yield ranks


def cases(k: int) -> list:
    """Exhaustive cases for k states: each subset of non-empty states times each weak order of
    their maxima (k = 2: 6 cases; k = 3: 26). Strict orders come first (most wrong operators show
    there, so a failing check stops early), then ties, then empty states."""
    out = []
    for live in itertools.product((True, False), repeat=k):
        idx = [i for i in range(k) if live[i]]
        for ranks in _weak_orders(len(idx)) if idx else [()]:
            r = [None] * k
            for i, rk in zip(idx, ranks):
                r[i] = rk
            out.append(Case(tuple(r)))
    return sorted(out, key=lambda c: (sum(r is None for r in c.ranks),
                                      len(c.live) - len({c.ranks[i] for i in c.live})))


MU = sp.Symbol("mu", real=True)
DELTAS = sp.symbols("d1:8", positive=True)

# exact representatives: (mu, gaps); m = 0 with unit gaps; negative mu with a small gap; positive
_REP_M = [(sp.Integer(0), [sp.Integer(1)] * 7),
          (sp.Rational(-5, 2), [sp.Rational(1, 3), sp.Integer(2)] * 4),
          (sp.Rational(7, 2), [sp.Integer(2), sp.Rational(5, 7)] * 4)]


def case_m(case: Case, rep=None) -> list:
    """The maxima of the states in ``case``: -oo for an empty state, ``mu + d_1 + ... + d_rank``."""
    mu, gaps = (MU, DELTAS) if rep is None else _REP_M[rep]
    return [-sp.oo if r is None else mu + sum(gaps[:r], sp.Integer(0)) for r in case.ranks]


def _rep_l(rep, i):
    return [sp.Integer(1), sp.Integer(2), [sp.Rational(3, 2), sp.Rational(5, 3), sp.Rational(7, 5)][i % 3]][rep]


def _rep_acc(rep, i, c):
    if rep == 0:
        return sp.Integer(1)  # every component and state equal
    if rep == 1:
        return sp.Rational((-1) ** c * (c % 3), 2)  # zeros and negatives, equal across states
    return sp.Rational(((7 * c + 3 * i) % 11) - 5, 3)


def case_states(case: Case, width, *, rep=None, names="abcdefgh", l_values=None) -> list:
    """States satisfying ``case``: symbolic (rep None) or the exact representative ``rep``.

    ``width``: an int, or ``"symbolic"`` for a :class:`SymVec` accumulator with component a_i.
    ``l_values``: override the (symbolic) l of the non-empty states (e.g. ``1 + p`` with p >= 0)."""
    ms = case_m(case, rep)
    out = []
    i_idx = sp.Symbol("i", integer=True, nonnegative=True)
    for k, (r, m) in enumerate(zip(case.ranks, ms)):
        nm = names[k]
        if r is None:
            acc = SymVec(0) if width == "symbolic" else [sp.Integer(0)] * width
            out.append(State(-sp.oo, sp.Integer(0), acc))
            continue
        if rep is None:
            l = l_values[k] if l_values is not None else sp.Symbol(f"l_{nm}", positive=True)
            if width == "symbolic":
                acc = SymVec(sp.IndexedBase(f"acc_{nm}", real=True)[i_idx])
            else:
                acc = list(sp.symbols(f"{nm}0:{width}", real=True))
        else:
            l = _rep_l(rep, k)
            acc = SymVec(_rep_acc(rep, k, 0)) if width == "symbolic" else [_rep_acc(rep, k, c) for c in range(width)]
        out.append(State(m, l, acc))
    return out


# --- what a merge must return --------------------------------------------------------------------

def _template(out_acc, ins_acc):
    """The one function of its own input components that every output component is, or a reason.

    Output component c must contain no input component other than those at c; after replacing
    those by placeholders, all components must be the same expression. Input components must be
    distinct non-numeric expressions (symbols, or sums of symbolic length); numbers are constants."""
    holders = [sp.Dummy(f"P{k}", real=True) for k in range(len(ins_acc))]  # no operator can name these
    comps = [{acc[c] for acc in ins_acc if not acc[c].is_number} for c in range(len(out_acc))]
    every = set().union(*comps) if comps else set()
    first = None
    for c, y in enumerate(out_acc):
        bad = [x for x in sp.preorder_traversal(y) if x in every and x not in comps[c]]
        if bad:
            return None, f"acc[{c}] depends on other components ({_short(bad[0], 40)})"
        t = y.xreplace({acc[c]: holders[k] for k, acc in enumerate(ins_acc) if not acc[c].is_number})
        if first is None:
            first = t
        elif t != first and not exact_equal(t, first):
            return None, f"acc[{c}] = {_short(t, 50)} is not the function acc[0] = {_short(first, 50)} of its inputs"
    return first, holders


def componentwise(out_acc, ins_acc):
    """(template, placeholders) if every output component is one function of its own input
    components (then proving it for the template proves it for every component), else (None, why)."""
    ins_acc = [[sp.sympify(x) for x in acc] for acc in ins_acc]
    distinct = all(len({acc[c] for acc in ins_acc if not acc[c].is_number}) ==
                   sum(not acc[c].is_number for acc in ins_acc) for c in range(len(out_acc)))
    if not distinct:
        return None, "input components are not distinct expressions"
    return _template(out_acc, ins_acc)


def merge_errors(out: State, ins, ms) -> list:
    """Why ``out`` is not the merge of the states ``ins`` (maxima ``ms``); [] when it is.

    The merge is defined by what the state represents: with ``m = max(m_i)``,
    ``e^m l = sum_i e^{m_i} l_i`` and ``e^m acc = sum_i e^{m_i} acc_i`` (component-wise), and the
    empty set's state is exactly (-inf, 0, 0)."""
    live = [k for k, m in enumerate(ms) if m != -sp.oo]
    errs = []
    if not live:
        if not exact_equal(out.m, -sp.oo):
            errs.append(f"m = {_short(out.m)}, expected -oo (the empty set)")
        if not exact_equal(out.l, 0):
            errs.append(f"l = {_short(out.l)}, expected 0 (the empty set)")
        acc = [out.acc.expr] if isinstance(out.acc, SymVec) else out.acc
        bad = [c for c, x in enumerate(acc) if not exact_equal(x, 0)]
        if bad:
            errs.append(f"acc[{bad[0]}] = {_short(acc[bad[0]])}, expected 0 (the empty set)")
        return errs
    m = sp.Max(*[ms[k] for k in live])
    if not exact_equal(out.m, m):
        errs.append(f"m = {_short(out.m)}, expected max = {m}")
        return errs
    em = sp.exp(m)
    if not is_zero(em * out.l - sum(sp.exp(ms[k]) * ins[k].l for k in live)):
        errs.append(f"l = {_short(out.l, 80)}: e^m l != sum of e^(m_i) l_i")
    if isinstance(out.acc, SymVec):
        if not is_zero(em * out.acc.expr - sum(sp.exp(ms[k]) * ins[k].acc.expr for k in live)):
            errs.append(f"acc_i = {_short(out.acc.expr, 80)}: e^m acc_i != sum of e^(m_i) acc_i")
        return errs
    ins_acc = [list(st.acc) for st in ins]
    if all(isinstance(x, sp.Symbol) for k in live for x in ins_acc[k]):
        t, holders = componentwise(out.acc, ins_acc)
        if t is None:
            errs.append(holders)
        elif not is_zero(em * t - sum(sp.exp(ms[k]) * holders[k] for k in live if not ins_acc[k][0].is_number)):
            errs.append(f"acc[c] = {_short(t, 80)} (P_k: input component c of state k): "
                        f"e^m acc != sum of e^(m_k) acc_k")
        return errs
    for c, y in enumerate(out.acc):  # exact representatives: every component
        if not is_zero(em * y - sum(sp.exp(ms[k]) * ins_acc[k][c] for k in live)):
            errs.append(f"acc[{c}] = {_short(y, 60)}: e^m acc != sum of e^(m_i) acc_i")
            break
    return errs


# --- evaluation of a claim over the cases, recorded as one check ------------------------------------

def attempt(fn, *args, **kwargs):
    """Run ``fn``; return (value, None) or (None, reason) for an operator failure, an undecidable
    branch, a timeout or an error in the check itself (never raises, except KeyboardInterrupt)."""
    try:
        with deadline(CALL_SECONDS * 3):  # a check of one case: a few operator calls and reductions
            return fn(*args, **kwargs), None
    except Undecidable as exc:
        return None, ("undecidable", str(exc))
    except OperatorFailure as exc:
        return None, ("operator", str(exc))
    except Timeout as exc:
        return None, ("timeout", f"the check did not finish: {exc}")
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 -- the harness never crashes
        return None, ("error", f"the check could not be evaluated: {type(exc).__name__}: {_short(str(exc), 160)}")


def by_cases(p, name: str, case_list, evaluate, *, reps: int = REPRESENTATIVES, kind: str = "symbolic",
             undecidable_ok: str | None = None) -> bool:
    """Record on Proof ``p`` one check: ``evaluate(case, rep)`` returns a list of reasons (empty: the
    claim holds) for every case, at the symbolic values (rep None) and at ``reps`` representatives.

    Undecidable at the symbolic values: the check is NOT PROVED (failed), or, with
    ``undecidable_ok`` (a claim another check covers), recorded as not applicable with that reason."""
    undecided = None
    for case in case_list:
        for rep in [None] + list(range(reps)):
            errs, why = attempt(evaluate, case, rep)
            where = f"case {case.name}" + ("" if rep is None else f", exact representative {rep}")
            if why is not None:
                tag, msg = why
                if tag == "undecidable" and rep is None:
                    undecided = undecided or f"{where}: operator {msg}"
                    continue  # the representatives still tell whether it is also wrong
                return p.check(name, False, kind, f"{where}: " + ("operator " if tag != "error" else "") + msg)
            if errs:
                return p.check(name, False, kind, f"{where}: {errs[0]}")
    if undecided:
        if undecidable_ok:
            return p.check(name, True, "n/a", f"not applicable ({undecided}); {undecidable_ok}")
        return p.check(name, False, kind, f"NOT PROVED: SymPy cannot evaluate the operator at symbolic values "
                                          f"satisfying the case ({undecided})")
    return p.check(name, True, kind, f"{len(case_list)} cases, symbolic"
                   + (f" and {reps} exact representatives each" if reps else ""))


def why(result) -> str:
    """The reason part of an :func:`attempt` result ('' when it succeeded)."""
    _, reason = result
    return "" if reason is None else f"{reason[0]}: {reason[1]}"


def record(p, name: str, fn, *, undecidable_ok: str | None = None) -> bool:
    """Record on Proof ``p`` one check from ``fn() -> [reasons]`` (empty: holds), run through
    :func:`attempt`; undecidable: NOT PROVED, or not applicable with ``undecidable_ok``'s reason."""
    errs, reason = attempt(fn)
    if reason is not None:
        tag, msg = reason
        if tag == "undecidable" and undecidable_ok:
            return p.check(name, True, "n/a", f"not applicable (operator {msg}); {undecidable_ok}")
        return p.check(name, False, "symbolic", ("NOT PROVED: operator " if tag == "undecidable" else
                                                 "operator " if tag != "error" else "") + msg)
    return p.check(name, not errs, "symbolic", "; ".join(errs))

"""Strategy builders shared by the property catalogues: problems and cases a target can take,
tile configs, the deterministic corner cases each property runs first, cases with fully masked
rows, the row sample the judge evaluates, and ``prop``: the registration that keeps every
property inside the target's declared domain and within the profile's time budget."""
from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from flashproof import spec

from . import oracle
from .cases import REGIMES, Case, MaskSpec, Problem, Regime, Shape
from .domain import DECLARE_HINT, Domain, OutsideDomain, conform
from .hypothesis_internals import Reject
from .inputs import build, max_abs_logit, torch_dtype
from .registry import TargetError, not_applicable, register, skip
from .strategies import (GQA_RATIOS, KV_HEADS, dtypes, head_dims, masks, problems, shapes, tile_configs,
                         value_kinds)

__all__ = [
    "tile_sizes", "problem_strategy", "case_strategy", "corner", "first_dtype",
    "head_dim_at_least", "small_tiles", "SCALES", "SOFTCAPS", "prop", "Undeclared",
    "run_tiles", "judge_rows", "sample", "rows_of", "budget_report", "empty_row_mechanisms", "empty_row_cases",
    "plain_mask", "domain", "admit", "refusals", "empty_rows_not_applicable", "EMPTY_ROW_WAYS",
    "empty_row_values_undeclared", "empty_window_causal",
    "Judgement", "judge_case",
]


# ----------------------------------------------------------------------------- the target's domain
def prop(name, **kw):
    """Register a property (``registry.register``) whose check runs inside the target's declared domain:
    a call the Target does not declare (it raises OutsideDomain before reaching the target)
    discards the example instead of failing it, and a target that raises on a declared call
    fails with a hint to declare the constraint. Under a profile with Limits.property_seconds,
    drawn examples past the budget pass without running (see _over_budget)."""
    strategy = kw.pop("strategy")
    reg = register(name, strategy=lambda ctx: _budgeted(ctx, name, strategy), **kw)

    def deco(check):
        reg(_within_domain(check, name))
        return check
    return deco


#: (id(ctx), property) -> {"t0", "judged", "skipped", "failed"} of the property's latest run
_RUNS: dict = {}
_DRAWN = weakref.WeakSet()  # drawn (not explicit) cases, so the budget never skips a corner


def _budgeted(ctx, name, strategy):
    """Start the property's clock (run_property builds the strategy once per run, just before its
    corners run) and mark the cases it draws: see _within_domain."""
    _RUNS[(id(ctx), name)] = {"t0": time.monotonic(), "judged": 0, "skipped": 0, "failed": False,
                              "refused": {}, "by_fields": 0}
    _CURRENT[id(ctx)] = name
    return strategy(ctx).map(_mark_drawn)


#: id(ctx) -> the property whose strategy was built last (its examples are the ones being drawn)
_CURRENT: dict = {}


def _refused(ctx, reason, *, by_fields):
    """Count an example discarded as outside the target's domain against the running property."""
    run = _RUNS.get((id(ctx), _CURRENT.get(id(ctx))))
    if run is not None:
        run["refused"][reason] = run["refused"].get(reason, 0) + 1
        run["by_fields"] += bool(by_fields)


def _refused_drawn(ctx, case, exc):
    """Count a drawn example's refusal (a corner case outside the domain is merely skipped)."""
    try:
        drawn = case in _DRAWN
    except TypeError:
        drawn = False
    if drawn:
        _refused(ctx, str(exc), by_fields=exc.by_fields)


def refusals(ctx, name):
    """({reason: count}, how many of them the target's declared fields made) of the examples of
    property ``name``'s latest run discarded as outside the target's domain."""
    run = _RUNS.get((id(ctx), name)) or {}
    return dict(run.get("refused", {})), run.get("by_fields", 0)


def admit(ctx, problem) -> bool:
    """Whether the target's declaration takes ``problem`` (in_domain); a refusal is counted against
    the running property (refusals): its accepts() predicate is the filter the strategies cannot
    draw inside of."""
    why, by_accepts = ctx.target.refusal_detail(_call_of(problem))
    if why is None:
        return True
    _refused(ctx, why, by_fields=not by_accepts)
    return False


def _call_of(problem):
    from .domain import Call

    return Call.of_problem(problem)


def domain(ctx) -> Domain:
    """The target's declared domain (lengths, causal modes), as the strategies draw inside it."""
    return Domain.of(ctx.target)


def _mark_drawn(case):
    try:
        _DRAWN.add(case)
    except TypeError:  # not weak-referenceable: never skipped
        pass
    return case


def _failed(ctx, name):
    run = _RUNS.get((id(ctx), name))
    if run is not None:
        run["failed"] = True


def budget_report(ctx=None) -> dict:
    """property -> (drawn examples judged, drawn examples skipped after Limits.property_seconds) of the
    latest run of each property (of ``ctx`` when given)."""
    return {name: (r["judged"], r["skipped"]) for (cid, name), r in _RUNS.items() if ctx is None or cid == id(ctx)}


def _over_budget(ctx, name, case) -> bool:
    """Whether this drawn example comes after the profile's property_seconds (and one drawn example
    was judged already): it then passes without running, so Hypothesis ends the property at once
    (rejecting it instead would make Hypothesis draw ~100 replacements per valid example)."""
    budget = getattr(ctx.limits, "property_seconds", None)
    run = _RUNS.get((id(ctx), name))
    try:
        drawn = case in _DRAWN
    except TypeError:  # unhashable: never skipped
        drawn = False
    if run is None or not drawn:
        return False
    # after a failure every example runs: Hypothesis replays and shrinks it (its own time cap applies)
    if budget and not run["failed"] and run["judged"] >= 1 and time.monotonic() - run["t0"] > float(budget):
        run["skipped"] += 1
        return True
    run["judged"] += 1
    return False


class Undeclared(Reject):
    """An example needed a call outside the target's declared domain. Hypothesis discards it (it
    is what hypothesis.reject() raises, so this works from the suite's worker thread too, where
    reject() has no test context); elsewhere (replay) its message says why."""

    def __str__(self):
        return self.reason or "outside the target's declared domain"


def _within_domain(check, name):
    @functools.wraps(check)
    def run(ctx, case):
        if _over_budget(ctx, name, case):
            return
        try:
            return check(ctx, case)
        except OutsideDomain as exc:  # a property that calls ctx.target directly
            _refused_drawn(ctx, case, exc)
            raise Undeclared(str(exc)) from None
        except TargetError as exc:
            cause = exc.__cause__
            if isinstance(cause, OutsideDomain):  # no verdict either way: not this target's input
                _refused_drawn(ctx, case, cause)
                raise Undeclared(str(cause)) from None
            _failed(ctx, name)
            if DECLARE_HINT in str(exc):
                raise
            raise TargetError(f"{exc}\n  hint: {DECLARE_HINT}") from cause
        except Reject:
            raise
        except BaseException:
            _failed(ctx, name)
            raise
    return run


#: Explicit scales drawn besides the default 1/sqrt(E): powers of two and an inexact one.
SCALES = (None, None, 0.5, 0.25, 0.0625, 1.0, 0.3)
SOFTCAPS = (5.0, 30.0, 50.0)


def run_tiles(ctx) -> list:
    """The target's tile configs this run draws from: all of them, or (Limits.tile_configs) a fixed
    spread of that many from the smallest tile to the largest (each config costs a compile on a GPU)."""
    cfgs = list(ctx.target.tile_configs)
    n = getattr(ctx.limits, "tile_configs", None)
    if not n or len(cfgs) <= n:
        return cfgs
    order = sorted(range(len(cfgs)), key=lambda i: (cfgs[i].get("block_m", 0) * cfgs[i].get("block_n", 0),
                                                    sorted(cfgs[i].items())))
    pick = sorted({order[round(j * (len(order) - 1) / max(n - 1, 1))] for j in range(n)})
    return [cfgs[i] for i in pick]


def tile_sizes(ctx, *, keys=("block_m", "block_n")) -> tuple:
    out = set()
    for c in run_tiles(ctx):
        for k in keys:
            if k in c and isinstance(c[k], int):
                out.add(int(c[k]))
    return tuple(sorted(x for x in out if x <= 2 * ctx.limits.max_len))


def small_tiles(ctx, n=None):
    """Tile configs sorted by cost (smallest tiles first, they stress the most boundaries)."""
    cfgs = list(run_tiles(ctx))
    cfgs.sort(key=lambda c: (c.get("block_m", 0) * c.get("block_n", 0), sorted(c.items())))
    return cfgs[:n] if n else cfgs


def first_dtype(ctx, prefer=("float16", "bfloat16", "float32")):
    for d in prefer:
        if d in ctx.target.dtypes:
            return d
    return ctx.target.dtypes[0]


def head_dim_at_least(ctx, n):
    """The smallest allowed head dim >= n (None if there is none)."""
    allowed = ctx.target.head_dims or tuple(range(1, 4097))
    c = [e for e in allowed if e >= n]
    return min(c) if c else None


def _mask_fn(ctx, *, allow_empty=True, attn_mask=None, window=None, alignments=None):
    t = ctx.target
    al = t.alignments if alignments is None else alignments
    win = t.window if window is None else (window and t.window)
    am = t.attn_mask if attn_mask is None else (attn_mask and t.attn_mask)
    causal_only = domain(ctx).causal_only

    def fn(shp):
        return masks(alignments=al, window=win, attn_mask=am, lq=shp.lq, allow_empty=allow_empty,
                     causal_only=causal_only)
    return fn


def plain_mask(ctx):
    """Masks without positional structure (so keys may be permuted, sliced, duplicated): a function
    of the drawn shape, for problem_strategy's ``mask``. A causal-only target takes none: its
    properties draw causal problems instead (None here)."""
    t = ctx.target
    if domain(ctx).causal_only:
        return None

    def fn(shp):
        return masks(alignments=(), window=False, attn_mask=t.attn_mask, lq=shp.lq)
    return fn


def problem_strategy(ctx, *, regimes=REGIMES, values=("normal", "normal", "ones", "onehot", "offset", "large"),
                     dtype=None, mask=None, softcap=None, scale=None, shape=None, equal_lengths=None,
                     gqa=None, e=None, max_len=None, batch=None):
    t, lim = ctx.target, ctx.limits
    dom = domain(ctx)
    ml = max_len or lim.max_len
    ratios = GQA_RATIOS if (t.gqa if gqa is None else gqa) else (1,)
    hd = e if e is not None else head_dims(allowed=lim.head_dims)
    ev = None if not t.value_dim else st.one_of(st.none(), head_dims(allowed=lim.head_dims))
    if shape is None:
        ts = tile_sizes(ctx)
        if dom.equal:
            equal_lengths = True
        # lengths inside the declared domain by construction (as they always were drawn without one)
        lq, lk = (None, None) if dom.default else (dom.lengths("q", cap=ml, tile_sizes=ts),
                                                   dom.lengths("k", cap=ml, tile_sizes=ts))
        shape = shapes(batch=batch if batch is not None else st.integers(1, lim.max_batch),
                       kv_heads=st.sampled_from(KV_HEADS), gqa_ratio=st.sampled_from(ratios), lq=lq, lk=lk,
                       max_len=ml, tile_sizes=ts, max_heads=lim.max_heads, e=hd,
                       equal_lengths=st.booleans() if equal_lengths is None else st.just(equal_lengths))
        if ev is not None:
            shape = st.tuples(shape, ev).map(lambda se: se[0] if se[1] is None else
                                             Shape(**{**se[0].__dict__, "ev": se[1]}))
    shape = shape.map(lambda s: _cap_cost(s, lim))
    if softcap is None:
        softcap = st.one_of(st.none(), st.none(), st.sampled_from(SOFTCAPS)) if t.softcap else st.none()
    if scale is None:
        scale = st.sampled_from(SCALES)
    out = problems(shape=shape, dtype=dtypes(allowed=t.dtypes) if dtype is None else dtype,
                   regimes=regimes, mask=mask if mask is not None else _mask_fn(ctx),
                   values=value_kinds(allowed=values) if isinstance(values, tuple) else values,
                   scale=scale, softcap=softcap, accumulator=_range_class(t))
    # the declaration by construction (conform squares causal problems where declared), the rest (the
    # accepts predicate) by filtering
    return out.map(lambda p: conform(t, p)).filter(lambda p: admit(ctx, p))


def _range_class(t) -> str:
    """The accumulator range the regimes must respect (strategies.logit_regimes): "same" when the
    target accumulates fp16 inputs in fp16 (the only declaration with less than fp32's range)."""
    return "same" if "float16" in t.dtypes and t.accumulator_for("float16") == "same" else "fp32"


def _cap_cost(s: Shape, lim) -> Shape:
    """Keep B * H within the profile's head budget (the interpreter costs per program)."""
    b = s.batch
    while b > 1 and b * s.heads > lim.max_heads:
        b -= 1
    return Shape(**{**s.__dict__, "batch": b}) if b != s.batch else s


def case_strategy(ctx, problem=None, *, tile=True, extra=None, **kw):
    """Cases: a problem, one of the target's tile configs, and property extras."""
    pr = problem if problem is not None else problem_strategy(ctx, **kw)
    tl = tile_configs(configs=run_tiles(ctx)) if tile else st.just(None)
    ex = extra if extra is not None else st.just(())
    out = st.builds(Case, problem=pr, tile=tl, extra=ex)
    t = ctx.target
    if t.accepts_tile is not None and tile:
        def fits(c):
            sh = c.problem.shape
            return t.tile_fits(c.tile, head_dim=sh.e, head_dim_v=sh.ev, dtype=torch_dtype(c.problem.dtype))
        out = out.filter(fits)
    return out


def corner(ctx, *, shape=None, dtype=None, regime=None, mask=None, values="normal", scale=None, softcap=None,
           seed=0, tile="small", extra=()):
    """One deterministic Case, adapted to the target (dtype, head dims, tiles it declares)."""
    t = ctx.target
    shape = shape or Shape(batch=1, heads=2, kv_heads=1 if t.gqa else 2, lq=17, lk=33, e=40, ev=40)
    if not t.gqa and shape.kv_heads != shape.heads:
        shape = Shape(**{**shape.__dict__, "kv_heads": shape.heads})
    if t.head_dims is not None and shape.e not in t.head_dims:
        e = head_dim_at_least(ctx, shape.e) or max(t.head_dims)
        shape = Shape(**{**shape.__dict__, "e": e, "ev": e})
    if not t.value_dim and shape.ev != shape.e:
        shape = Shape(**{**shape.__dict__, "ev": shape.e})
    dtype = dtype if dtype in t.dtypes else first_dtype(ctx)
    regime = regime or Regime()
    sc = scale if scale is not None else None
    if regime.offset and abs(regime.offset) > max_abs_logit(dtype, spec.resolve_scale(sc, shape.e), accumulator=t.accumulator_for(dtype)) / 4:
        regime = Regime(regime.name, -1e4 if regime.offset < 0 else 1e4, regime.spread)
    mask = mask or MaskSpec()
    dom = domain(ctx)
    if not dom.allows(mask.causal):  # the same corner in a causal mode the target declares
        mask = MaskSpec(**{**mask.__dict__, "causal": dom.causal[0]})
    if tile == "small":
        cfgs = small_tiles(ctx, 1)
        tile = cfgs[0] if cfgs else None
    pr = Problem(shape=shape, dtype=dtype, regime=regime, mask=mask, values=values, scale=sc,
                 softcap=softcap if t.softcap else None, seed=seed)
    return Case(problem=conform(t, pr), tile=tile, extra=extra)


# ----------------------------------------------------------------------------- judging a sample of rows
def judge_rows(ctx, inp, *, tile=None):
    """The query rows the judge evaluates under this profile (None: all): Limits.judge_pairs row-key
    pairs at most, tile edges of ``tile``'s block_m included (oracle.judge_rows)."""
    b, h, lq = inp.q.shape[0], inp.q.shape[1], inp.q.shape[2]
    seed = getattr(inp.problem, "seed", 0) or 0
    return oracle.judge_rows(lq, inp.k.shape[2], b * h, pairs=getattr(ctx.limits, "judge_pairs", None), seed=seed,
                             block=dict(tile or {}).get("block_m"))


def rows_of(x, rows):
    """x (tensor or array, (B, H, Lq, ...)) restricted to query rows ``rows`` (None: x itself)."""
    if rows is None or x is None:
        return x
    if isinstance(x, np.ndarray):
        return x[:, :, rows]
    import torch

    return x.index_select(2, torch.as_tensor(rows, dtype=torch.long, device=x.device))


def sample(ctx, inp, *outs, tile=None, rows="auto"):
    """(inputs, *outputs) restricted to the rows the judge evaluates: the target ran the whole
    problem; its bound and exact values are those of these rows (oracle.take_rows)."""
    if isinstance(rows, str):
        rows = judge_rows(ctx, inp, tile=tile)
    return (oracle.take_rows(inp, rows),) + tuple(rows_of(o, rows) for o in outs)


# ----------------------------------------------------------------------------- fully masked rows
EMPTY_ROW_WAYS = "attn_mask, bottom_right causal or a window"


def empty_row_mechanisms(t, *, declared=False):
    """How the target can express a row with no allowed key: attn_mask (any mask), bottom-right
    causal with Lq > Lk, a window (0, 0) with Lq > Lk (non-causal, or causal for a causal-only
    target). ``declared=True``: every way its capabilities offer; else only those its declared
    domain admits (bottom-right and windows need calls with Lq > Lk)."""
    dom = Domain.of(t)
    out = []
    if t.attn_mask:
        out += ["attn_mask_bool", "attn_mask_additive"]
    if "bottom_right" in t.alignments and (declared or dom.unequal("bottom_right", longer="q")):
        out.append("bottom_right")
    if t.window and (declared or dom.unequal(empty_window_causal(dom), longer="q")):
        out.append("window")
    return out


def empty_row_values_undeclared(t) -> str | None:
    """Why a property about a fully masked row's own values (O = 0, LSE = -inf, dQ = 0) does not apply to
    ``t`` (None: it declares spec's empty_rows="zero")."""
    if t.empty_rows == "zero":
        return None
    return (f"the target declares empty_rows={t.empty_rows!r}: no claim on a fully masked row's O and LSE "
            f"(every row with an allowed key is judged by the other properties)")


def empty_window_causal(dom):
    """The causal mode of an empty-row window: none where allowed, else the first declared alignment
    (a causal window (0, 0) with Lq > Lk leaves rows without a key in either alignment)."""
    return False if dom.allows(False) else dom.causal[0]


def empty_rows_not_applicable(t) -> str | None:
    """Why the declared domain has no row without a key although the capabilities could make one."""
    if empty_row_mechanisms(t) or not empty_row_mechanisms(t, declared=True):
        return None
    dom = Domain.of(t)
    why = "equal_lengths" if dom.equal else "causal_equal_lengths" if dom.causal_equal else "its length ranges"
    return (f"the target's domain has no row without a key: bottom-right causal and windows make one only with "
            f"Lq > Lk, which it excludes ({why}), and it declares no attn_mask")


def empty_row_cases(ctx):
    """Cases with fully masked rows, through each mechanism the target's domain admits (``via`` extra)."""
    mech = empty_row_mechanisms(ctx.target)
    if not mech:
        why = empty_rows_not_applicable(ctx.target)
        if why:
            not_applicable(why)
        skip("the target declares no way to express a fully masked row")
    dom = domain(ctx)

    def adapt(c, m):
        p = c.problem
        sh = p.shape
        if m.startswith("attn_mask"):
            keep = p.mask.causal if p.mask.causal in ("top_left", False) else False
            mk = MaskSpec(causal=keep if dom.allows(keep) else p.mask.causal,
                          attn_mask="bool" if m.endswith("bool") else "additive",
                          density=p.mask.density if p.mask.attn_mask else 0.7,
                          empty_rows=max(1, min(2, sh.lq)), full=p.mask.full)
        elif m == "bottom_right":
            if sh.lq <= sh.lk:
                sh = Shape(**{**sh.__dict__, "lq": sh.lk + 1 + sh.lq % 3})
            mk = MaskSpec(causal="bottom_right")
        else:  # a window (0, 0) leaves rows i >= Lk (top-left) or i < Lq - Lk (bottom-right) empty
            if sh.lq <= sh.lk:
                sh = Shape(**{**sh.__dict__, "lq": sh.lk + 1 + sh.lq % 3})
            mk = MaskSpec(causal=empty_window_causal(dom), window=(0, 0))
        if m in ("bottom_right", "window"):
            lq, lk = dom.apart(sh.lq, sh.lk, mk.causal, longer="q")
            sh = Shape(**{**sh.__dict__, "lq": lq, "lk": lk})
        pr = conform(ctx.target, Problem(**{**p.__dict__, "shape": sh, "mask": mk}))
        return Case(problem=pr, tile=c.tile, extra=(("via", m),))
    return st.tuples(case_strategy(ctx), st.sampled_from(mech)).map(lambda x: adapt(*x))


@dataclass
class Judgement:
    """What ``judge_case`` measured on the judged rows: the target's O and LSE (float64 numpy), the
    exact values with their radii, the running bounds, and the Violation the judge raised (None: none)."""

    case: Any
    inputs: Any
    rows: Any
    o: np.ndarray
    lse: Any
    exact: Any
    o_bound: np.ndarray
    lse_bound: np.ndarray
    violation: Any


def judge_case(ctx, case, *, inputs=None) -> Judgement:
    """Run the target on ``case`` and judge its output as output_within_error_bound does (the
    running bound of the exact values on the profile's judged rows, and the FA criterion), returning
    the numbers instead of raising; ``flashproof audit`` judges every cell with it. A target that
    raises or breaks the call contract raises here (Context.call)."""
    tile = case.tile_dict
    inp = build(case.problem, device=ctx.device) if inputs is None else inputs
    o, lse = ctx.call(inp, tile=tile)
    rows = None if case.get("every_row") else judge_rows(ctx, inp, tile=tile)  # every_row: corners judged whole
    inp_s, o_s, lse_s = sample(ctx, inp, o, lse, rows=rows)
    o_b, l_b = ctx.bound(inp_s, tile=tile)
    ex = oracle.exact(inp_s, need_o=o_b, need_lse=l_b if lse_s is not None else None)
    try:
        ctx.judge(inp_s, o_s, lse_s, tile=tile, ex=ex, bounds=(o_b, l_b))
        violation = None
    except oracle.Violation as exc:
        violation = exc
    return Judgement(case, inp_s, rows, oracle.to_np(o_s), oracle.to_np(lse_s), ex, o_b, l_b, violation)

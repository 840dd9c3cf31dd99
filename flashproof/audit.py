"""``flashproof audit``: the numerical-stability audit, a client of the property suite.

Its implementations are ``properties`` Targets: flashproof's kernel (the default target), torch
SDPA's backends (``properties.sdpa_backends``; FlexAttention on a GPU) and every TARGET named,
loaded exactly as ``flashproof check`` loads it. Each cell of its grid (``audit_cells``: length,
head dim, logit scale, softmax temperature, the suite's logit regimes, tilings; per dtype) is a
``strategies.Case`` that ``properties.gen.judge_case`` judges the way ``flashproof check``'s
``output_within_error_bound`` does: Context.call's contract, the running bound of proofs/ at the
target's declared precision (accumulator, round_toward_zero, c_exp), the oracle's exact values
and the FlashAttention criterion, on the profile's judged rows. The audit adds measurements
(``audit_metrics``), the naive same-precision baseline, report.md/report.json (``audit_report``)
and plots (``audit_plots``). Exit 1 when a target violates the spec or its declared bound.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from flashproof.audit_cells import Cell, cells as grid_cells, with_tile
from flashproof.audit_metrics import measure, row_error as _row_error
from flashproof.audit_report import PROPERTY, SCHEMA, assemble, executive, write_report

__all__ = ["add_arguments", "run", "audit", "Audited", "builtin", "judge", "judge_pairs", "row_error",
           "naive_baseline", "AUDIT_JUDGE_PAIRS", "PROPERTY", "SCHEMA"]

_ROLES = ("kernel", "peer", "target")


@dataclass(frozen=True)
class Audited:
    """A Target under audit: its ``role`` ("kernel", "peer" or "target"), the ``label`` the report
    uses, ``only``: a predicate of the cells it runs (None: all), ``unavailable``: why it cannot
    run here ("" if it can)."""

    target: object
    role: str
    label: str
    only: Callable | None = None
    unavailable: str = ""

    def __post_init__(self):
        if self.role not in _ROLES:
            raise ValueError(f"Audited.role must be one of {_ROLES}, got {self.role!r}")


def builtin(device: str) -> list:
    """The audit's default set: flashproof's kernel, torch SDPA's math backend, and on a GPU its
    flash, memory-efficient and cuDNN backends and FlexAttention."""
    from flashproof.properties import sdpa_backends
    from flashproof.properties.builtin_targets import default_target

    out = [Audited(default_target(), "kernel", "flashproof"), Audited(sdpa_backends.math(), "peer", "sdpa-math")]
    if device == "cuda":
        out += [Audited(sdpa_backends.flash(), "peer", "sdpa-flash"),
                Audited(sdpa_backends.efficient(), "peer", "sdpa-efficient"),
                Audited(sdpa_backends.cudnn(), "peer", "sdpa-cudnn"), _flex()]
    return out


def _flex() -> Audited:
    """FlexAttention (properties.flex, the GPU peer's Target), on the L sweep at two lengths (each new
    shape is a torch.compile), fp16 and bf16 only as before (its fp32 cells read "not declared")."""
    import dataclasses

    from flashproof.properties.targets import Target

    only = lambda c: c.sweep == "L" and c.problem.shape.lq in (512, 2048)  # noqa: E731
    try:
        from flashproof.properties.flex import flex_target

        t = dataclasses.replace(flex_target(), dtypes=("bfloat16", "float16"))
        return Audited(t, "peer", "flex", only=only)
    except Exception as exc:  # FlexAttention is optional: say why it is absent
        stub = Target(name="FlexAttention", sdpa=lambda *a, **k: None)
        return Audited(stub, "peer", "flex", only=only, unavailable=f"{type(exc).__name__}: {exc}")


#: Where a profile judges a sample of rows (gpu: 2^18 row-key pairs per problem, so that `check`
#: fits its time), the audit judges at least this many: 64 rows per head at L = 2048, H = 8 (its
#: bound and exact values are CPU numpy; 2^20 is sized from the old audit's 298 s on an H100 for a
#: bound on 2^22 pairs, not yet measured). Each judged row is judged as check judges it.
AUDIT_JUDGE_PAIRS = 1 << 20


def judge_pairs(profile: str):
    """The row-key pairs the audit judges per problem under ``profile`` (None: every row)."""
    from flashproof.properties.profiles import get_profile

    jp = get_profile(profile).limits.judge_pairs
    return None if jp is None else max(jp, AUDIT_JUDGE_PAIRS)


def _context(target, profile: str, device: str):
    import dataclasses

    from flashproof.properties.profiles import get_profile
    from flashproof.properties.context import Context

    lim = dataclasses.replace(get_profile(profile).limits, judge_pairs=judge_pairs(profile))
    return Context(target=target, limits=lim, profile=profile, device=device)


def judge(case, *, target=None, profile="ci"):
    """Judge one Case against a target (a Target or "module:attr") as the audit does under
    ``profile``: a properties.gen.Judgement (the worst-row snippet of report.md calls this)."""
    from flashproof.properties.gen import judge_case
    from flashproof.properties.loading import load_target

    t = load_target(target)
    return judge_case(_context(t, profile, t.device()), case)


def row_error(judged, b: int, h: int, i: int) -> float:
    """max |O - exact| over query row ``i`` (the problem's numbering) of head (b, h) of a Judgement."""
    rows = judged.rows
    pos = i if rows is None else int(np.flatnonzero(np.asarray(rows) == i)[0])
    return _row_error(judged.o, judged.exact.o, b, h, pos)


@dataclass
class _Measured:
    """A baseline's output on the judged rows, measured against a judgement's exact values."""

    o: np.ndarray
    exact: object
    rows: object
    lse: object = None
    o_bound: object = None


def naive_baseline(judged):
    """The naive same-precision baseline (reference.forward_naive) on a judgement's rows, against
    its exact values: what its error would be (for the ratio, see oracle.naive_error)."""
    from flashproof import reference
    from flashproof.properties.oracle import to_np

    inp = judged.inputs
    o, _ = reference.forward_naive(inp.q, inp.k, inp.v, **inp.opts())
    return _Measured(to_np(o), judged.exact, judged.rows)


def _tiles(ctx, cell: Cell) -> list:
    """The case's own tile (None: the target's default), or for the tiling sweep an even spread of
    the target's tile configs that fit the cell (Context.tile_fits: the target's own accepts_tile)."""
    import torch

    t = ctx.target
    if not cell.tiles or not t.tile_configs:
        return [cell.case.tile_dict or None]
    sh = cell.problem.shape
    dt = getattr(torch, cell.problem.dtype)
    q, v = torch.empty(1, 1, 1, sh.e, dtype=dt, device="meta"), torch.empty(1, 1, 1, sh.ev, dtype=dt, device="meta")
    fits = [dict(c) for c in t.tile_configs if ctx.tile_fits(c, q, v)]
    return fits[:: max(1, len(fits) // cell.tiles)][: cell.tiles] or [None]


class _NaiveError:
    """oracle.naive_error of a cell's judgements, computed once per distinct (judged rows, exact
    values): every target of a cell is judged on the same deterministic inputs."""

    def __init__(self):
        self.seen = []

    def __call__(self, j):
        from flashproof.properties import oracle

        rows = None if j.rows is None else np.asarray(j.rows)
        for r, o, nerr in self.seen:
            if (r is None) == (rows is None) and (r is None or np.array_equal(r, rows)) and np.array_equal(o, j.exact.o):
                return nerr
        nerr = oracle.naive_error(j.inputs, j.exact)
        self.seen.append((rows, j.exact.o, nerr))
        return nerr


def _judge_cell(a: Audited, ctx, cell: Cell, naive_error):
    """Rows of the report for one target on one cell (one per tile run), and its judgements."""
    from hypothesis.errors import UnsatisfiedAssumption

    from flashproof.proofs import Unbounded
    from flashproof.properties import oracle
    from flashproof.properties.gen import judge_case
    from flashproof.properties.registry import TargetError
    from flashproof.properties.domain import Call, OutsideDomain

    base = dict(label=a.label, target=a.label, name=a.target.name, spec=a.target.spec, role=a.role, **cell.params())
    why = a.target.refusal(Call.of_problem(cell.problem))
    if why:
        return [dict(base, tile={}, status="not declared", reason=why)], []
    rows, judged = [], []
    for tile in _tiles(ctx, cell):
        row = dict(base, tile=tile or {})
        if tile:
            row["target"] = a.label + " " + ",".join(f"{k}={x}" for k, x in tile.items())
        try:
            j = judge_case(ctx, with_tile(cell, tile))
        except TargetError as exc:
            if isinstance(exc.__cause__, (OutsideDomain, UnsatisfiedAssumption)):
                rows.append(dict(row, status="not declared", reason=str(exc.__cause__)))
            else:
                rows.append(dict(row, status="error", violation=str(exc)))
            continue
        except oracle.Violation as exc:  # the call contract (O's type, shape, dtype; LSE's shape)
            rows.append(dict(row, status="error", violation=str(exc)))
            continue
        except Unbounded as exc:  # theorem 6 has no finite bound on this cell: said, never judged by another
            rows.append(dict(row, status="error", violation=f"no finite bound (proofs.Unbounded): {exc}"))
            continue
        row.update(status="judged", metrics=measure(j, dtype=cell.problem.dtype, naive_error=naive_error(j)),
                   violation=None if j.violation is None else str(j.violation))
        rows.append(row)
        judged.append(j)
    return rows, judged


class _Progress:
    def __init__(self, total, stream=sys.stderr):
        self.total, self.n, self.stream, self.t0 = total, 0, stream, time.time()

    def step(self, label):
        self.n += 1
        tty = self.stream.isatty()
        if not tty and self.n % max(1, self.total // 10) and self.n != self.total:
            return  # logs get a line per 10%, terminals a live bar
        w = 30
        done = int(w * self.n / max(self.total, 1))
        el = time.time() - self.t0
        lead, end = ("\r", "\n" if self.n == self.total else "") if tty else ("", "\n")
        self.stream.write(f"{lead}[{'#' * done}{'.' * (w - done)}] {self.n}/{self.total} {el:5.0f}s {label[:50]:<50}{end}")
        self.stream.flush()


def audit(audited, *, device="cpu", dtypes=("bfloat16", "float16", "float32"), quick=True, seed=0, cells=None,
          profile=None, progress=True) -> dict:
    """Judge every available target on every cell (``cells``: default the audit grid) and return
    the report dict (schema audit_report.SCHEMA). ``profile``: whose judge sample to use (default:
    ci on CPU, gpu on CUDA)."""
    from flashproof.properties.profiles import default_profile

    profile = profile or default_profile(device)
    labels = [a.label for a in audited]
    if len(set(labels)) != len(labels) or "naive" in labels:
        raise ValueError(f"the audited targets' labels must be distinct and not 'naive' (the baseline's), got {labels}")
    grid = list(cells) if cells is not None else grid_cells(quick=quick, device=device, dtypes=dtypes, seed=seed)
    live = [a for a in audited if not a.unavailable]
    ctxs = {a.label: _context(a.target, profile, device) for a in live}
    prog = _Progress(len(grid)) if progress else None
    results = []
    for cell in grid:
        first, nerr = None, _NaiveError()
        for a in live:
            if a.only is not None and not a.only(cell):
                continue
            rows, judged = _judge_cell(a, ctxs[a.label], cell, nerr)
            results += rows
            first = first or (judged[0] if judged else None)
        if first is not None:  # the naive baseline, on the rows and exact values of the cell's first judgement
            m = measure(naive_baseline(first), dtype=cell.problem.dtype)
            results.append(dict(label="naive", target="naive", name="reference.forward_naive", spec=None, role="baseline", tile={},
                                status="measured", metrics=m, violation=None, **cell.params()))
        if prog:
            prog.step(f"{cell.problem.dtype} {cell.sweep}={cell.value}")
    return assemble(audited, results, device=device, dtypes=list(dtypes), quick=quick, seed=seed, profile=profile,
                    judge_pairs=judge_pairs(profile))


# ----------------------------------------------------------------------------- CLI
def add_arguments(p):
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="module:attr of extra attention kernels to audit, loaded as `flashproof check` loads its "
                        "TARGET (default: the built-in set only)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--dtype", action="append", choices=("bfloat16", "float16", "float32"),
                   help="repeatable; default all three")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small sweep (default on CPU)")
    g.add_argument("--full", action="store_true", help="the full sweep (default on a GPU)")
    p.add_argument("--out", default="audit-out", help="report folder (default ./audit-out)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-defaults", action="store_true",
                   help="audit only the TARGETs (the naive baseline is always measured for the ratios)")


def _load(specs, profile, device):
    """The named TARGETs as Audited, loaded as ``flashproof check`` loads its TARGET."""
    from flashproof.properties.timeouts import load_target_within, resolve_example_timeout

    out = []
    for spec in specs:
        t = load_target_within(spec, resolve_example_timeout(None, profile))
        if not any(str(d) == device or str(d).startswith(device + ":") for d in t.devices):
            raise ValueError(f"target {t.name!r} declares devices {tuple(t.devices)}, not --device {device}")
        out.append(Audited(t, "target", t.name))
    return out


def _unique(audited) -> list:
    """The same list with every label distinct (a TARGET named twice, or like a built-in, gets " #2")."""
    import dataclasses

    seen, out = {"naive"}, []  # "naive" is the baseline's row
    for a in audited:
        label, n = a.label, 1
        while label in seen:
            n += 1
            label = f"{a.label} #{n}"
        seen.add(label)
        out.append(a if label == a.label else dataclasses.replace(a, label=label))
    return out


def run(args) -> int:
    from flashproof.cli import EXIT_ERROR, EXIT_OK, EXIT_VIOLATION
    from flashproof.properties.registry import TargetTimeout
    from flashproof.properties.targets import TargetLoadError

    from flashproof.proofs.runner import writable_folder

    why = writable_folder(args.out, "--out")
    if why:  # a bad --out must not cost the whole sweep
        print(f"flashproof audit: {why}", file=sys.stderr)
        return EXIT_ERROR
    if args.no_defaults and not args.targets:
        print("flashproof audit: --no-defaults needs at least one TARGET", file=sys.stderr)
        return EXIT_ERROR
    import torch

    from flashproof.properties.profiles import default_profile

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("flashproof audit: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return EXIT_ERROR
    profile = default_profile(device)
    try:
        named = _load(args.targets, profile, device)
    except TargetTimeout as exc:  # the target hung while it was loaded and probed: its fault
        print(f"flashproof audit: {exc}", file=sys.stderr)
        return EXIT_VIOLATION
    except (TargetLoadError, TypeError, ValueError, RuntimeError) as exc:
        print(f"flashproof audit: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        audited = _unique(([] if args.no_defaults else builtin(device)) + named)
    except Exception as exc:
        print(f"flashproof audit: could not set up the built-in targets: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return EXIT_ERROR
    quick = args.quick or (not args.full and device == "cpu")
    t0 = time.time()
    rep = audit(audited, device=device, dtypes=tuple(args.dtype or ("bfloat16", "float16", "float32")), quick=quick,
                seed=args.seed)
    if device == "cuda":
        try:
            from flashproof.ulp import exp_ulp_audit

            rep["exp_ulp"] = exp_ulp_audit()
        except Exception as exc:
            rep["errors"].append(dict(target="exp-ulp-audit", error=f"{type(exc).__name__}: {exc}"))
    rep["config"]["seconds"] = round(time.time() - t0, 1)
    try:
        path = write_report(rep, args.out)
    except OSError as exc:
        print(f"flashproof audit: could not write the report to {args.out}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print("\n".join(executive(rep)))
    print(f"report: {path} ({rep['config']['seconds']} s)")
    judged = {r["label"] for r in rep["cells"] if r["status"] != "not declared"}
    unjudged = [a.label for a in audited if a.role == "target" and a.label not in judged]
    if unjudged:
        print(f"flashproof audit: no cell of the sweep is in the declared domain of {', '.join(unjudged)} "
              f"(see 'not declared' in {path})", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_VIOLATION if rep["violations"] else EXIT_OK

"""The audit's report: the report dict, report.json (strict JSON), report.md and its summary.

report.json (schema ``flashproof.audit/2``, docs/audits/schema.md) is strict JSON (RFC 8259):
non-finite numbers are written as the strings "NaN", "Infinity" and "-Infinity", so every
parser reads it; a missing figure is null.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform

from flashproof.audit_cells import SWEEPS
from flashproof.audit_metrics import ULP_DEFINITION, summarize

__all__ = ["SCHEMA", "PROPERTY", "assemble", "write_report", "executive", "reproducer", "strict", "worst_cell"]

SCHEMA = "flashproof.audit/2"
#: the property whose judgement each cell gets (properties.gen.judge_case; ``flashproof check`` runs it too)
PROPERTY = "output_within_error_bound"
_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def strict(x):
    """``x`` with every non-finite float written as "NaN", "Infinity" or "-Infinity" (and numpy
    scalars, tuples and dict keys made plain), so ``json.dumps(..., allow_nan=False)`` takes it."""
    import numpy as np

    if isinstance(x, dict):
        return {str(k): strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("NaN" if math.isnan(x) else _NONFINITE[x])
    return x


def _violation_rows(results):
    out = []
    for r in results:
        if r.get("violation"):
            what = r["violation"].strip().splitlines()
            out.append(dict(target=r["target"], dtype=r["dtype"], sweep=r["sweep"], x=r["x"], L=r["L"], E=r["E"],
                            causal=r["causal"], regime=r["regime"], temperature=r["temperature"],
                            logit_scale=r["logit_scale"], what=what[0] if what else "", message=r["violation"],
                            case=r["case"], spec=r["spec"]))
    return out


def assemble(audited, results, **config) -> dict:
    """The report dict: machine, config, the targets, every cell's row, the summary, violations."""
    import torch

    machine = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
               "cpu_count": os.cpu_count()}
    try:
        import triton

        machine["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    from flashproof.properties.oracle import bound_source

    config = dict(config, bound=bound_source())
    targets = []
    for a in audited:
        t = a.target
        targets.append(dict(label=a.label, name=t.name, spec=t.spec, role=a.role, available=not a.unavailable,
                            reason=a.unavailable, accumulator=t.accumulator, round_toward_zero=list(t.round_toward_zero),
                            c_exp=t.c_exp, tile_configs=len(t.tile_configs), description=t.description))
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "config": config,
        "targets": targets,
        "cells": results,
        "summary": summarize(results),
        "violations": _violation_rows(results),
        "errors": [],
    }


# ----------------------------------------------------------------------------- text
def _fmt(x, p=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{p}g}"
    return str(x)


def _ratio(r) -> str:
    """A spread of ratios: median [IQR q1-q3] (range min-max, n cells)."""
    if not r:
        return "-"
    return (f"median {r['median']:.3g} (IQR {r['q1']:.3g}-{r['q3']:.3g}, range {r['min']:.3g}-{r['max']:.3g}, "
            f"{r['n']} cells)")


def _nonfinite(s) -> str:
    txt = f"{s['nan']} NaN and {s['inf']} inf outputs where the exact value is finite"
    if s["nan"] or s["inf"]:
        txt = f"**{txt}** (in {s['nonfinite_cells']} cell(s); not in the error figures)"
    return txt


def executive(rep) -> list:
    """The summary's lines: per target and dtype, NaN/inf counts first, then the measured ratio
    to the naive baseline with its spread over cells, then the verdict."""
    out = []
    for s in sorted(rep["summary"], key=lambda s: (s["dtype"], s["target"])):
        if s["role"] == "baseline":
            continue
        line = f"- **{s['target']}** ({s['dtype']}, {s['judged']} cell(s) judged"
        line += f", {s['not_declared']} not declared)" if s["not_declared"] else ")"
        line += f": {_nonfinite(s)}"
        if s["judged"]:
            undef = f"; undefined in {s['ratio_undefined']} cell(s): non-finite output or exact baseline" \
                if s["ratio_undefined"] else ""
            line += (f"; max error / naive baseline's max error, per cell: {_ratio(s['ratio_to_naive'])}{undef}; "
                     f"max abs error {_fmt(s['max_abs'])}, max {_fmt(s['ulp_max'])} ULP; "
                     f"bound tightness {_tight(s)}")
        line += f"; {s['violations']} violation(s)."
        out.append(line)
    for t in rep["targets"]:
        if not t["available"]:
            out.append(f"- {t['label']}: not available here ({t['reason'][:120]}).")
    for e in rep["errors"]:
        out.append(f"- {e['target']}: {e['error'][:150]}")
    n = len(rep["violations"])
    out.append(f"- **Verdict: {'FAIL' if n else 'PASS'}** ({n} cell(s) violating the spec or a declared bound, "
               f"judged as `flashproof check` judges {PROPERTY}).")
    return out


def _tight(s) -> str:
    t = _fmt(s["tightness"])
    return t if not s.get("bound_vacuous") else f"{t} ({s['bound_vacuous']} elements with an infinite bound)"


def _err_cell(m) -> str:
    """The max-abs column: the error, or what the outputs were when they were not finite."""
    if m["status"] == "finite":
        return _fmt(m["max_abs"])
    return f"**{m['status'].upper()}** ({m['nan']} NaN, {m['inf']} inf)"


def worst_cell(rep):
    """The judged row (not the baseline's) whose worst query row has the largest error; a NaN or
    inf output ranks above any finite error."""
    rows = [r for r in rep["cells"] if r.get("metrics") and r["role"] != "baseline" and "worst_row" in r["metrics"]]

    def key(r):
        m = r["metrics"]
        e = m["worst_row_error"]
        return math.inf if (m["status"] != "finite" or not math.isfinite(e)) else e
    return max(rows, key=key, default=None)


def reproducer(r, profile) -> str:
    """Python that re-judges the worst row's case against the target that produced it."""
    m = r["metrics"]
    b, h, i = m["worst_row"]
    tgt = repr(r["spec"]) if r["spec"] else "None  # set TARGET to the Target object you audited (no module:attr)"
    return (f"# {r['target']} ({r['name']}), {r['dtype']}, {r['sweep']} = {r['x']}: worst row (b, h, i) = ({b}, {h}, {i}), "
            f"max |O - exact| = {m['worst_row_error']!r}\n"
            "from flashproof.audit import judge, row_error\n"
            "from flashproof.properties import replay\n"
            "from flashproof.properties.cases import Case, MaskSpec, Problem, Regime, Shape\n\n"
            f"TARGET = {tgt}\n"
            f"CASE = {r['case']}\n"
            f"print(row_error(judge(CASE, target=TARGET, profile={profile!r}), {b}, {h}, {i}))\n"
            f"replay({PROPERTY!r}, CASE, target=TARGET, profile={profile!r})  # raises Violation if the judge fails")


def _sweep_table(rep, sweep) -> list:
    rows = [r for r in rep["cells"] if r["sweep"] == sweep and r.get("metrics")]
    if not rows:
        return []
    lines = ["", f"## Sweep: {sweep.replace('_', ' ')}", "",
             "| dtype | target | L | E | causal | logit scale | T | regime | verdict | max abs | mean abs | RMSE | "
             "bias | max row rel | max ULP | vs naive | tightness | LSE err | rows judged |", "|" + "---|" * 19]
    for r in rows:
        m = r["metrics"]
        verdict = "-" if r["role"] == "baseline" else ("**FAIL**" if r.get("violation") else "ok")
        lines.append(f"| {r['dtype']} | {r['target']} | {r['L']} | {r['E']} | {int(r['causal'])} | "
                     f"{_fmt(r['logit_scale'])} | {_fmt(r['temperature'])} | {r['regime']} | {verdict} | "
                     f"{_err_cell(m)} | {_fmt(m['mean_abs'])} | {_fmt(m['rmse'])} | {_fmt(m['bias'])} | "
                     f"{_fmt(m['max_row_rel'])} | {_fmt(m['ulp_max'])} | {_fmt(m.get('ratio_to_naive'))} | "
                     f"{_fmt(m.get('tightness'))} | {_lse_cell(m)} | {m['rows_judged']} |")
    return lines


def _lse_cell(m) -> str:
    """The LSE column: its max error, and the count of LSEs that are not finite where they should be."""
    bad = m.get("lse_nonfinite", 0) + m.get("lse_wrong_empty", 0)
    return _fmt(m.get("lse_max_abs")) + (f" (**{bad} non-finite or wrong on empty rows**)" if bad else "")


def write_report(rep, out_dir) -> str:
    """Write report.json, the plots and report.md into ``out_dir``; returns report.md's path."""
    from flashproof.audit_plots import plot_all

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(strict(rep), f, indent=1, allow_nan=False)
    plots = plot_all(rep, out_dir)
    cfg = rep["config"]
    jp = cfg.get("judge_pairs")
    lines = ["# flashproof audit", "",
             f"{rep['created']} · {rep['machine'].get('gpu', 'CPU')} · torch {rep['machine']['torch']} · "
             f"triton {rep['machine'].get('triton', '-')} · {'quick' if cfg['quick'] else 'full'} sweep · "
             f"profile {cfg['profile']} · schema `{rep['schema']}`", "", "## Executive summary", ""]
    lines += executive(rep)
    lines += ["", "## How it is judged", "",
              f"- Each cell is a `strategies.Case`, judged by `properties.gen.judge_case`: the judgement of "
              f"`flashproof check`'s `{PROPERTY}` (Context.call's contract, the running bound of proofs/ "
              f"({cfg.get('bound')}) at the target's declared accumulator, round-toward-zero dtypes and c_exp, "
              "the FlashAttention criterion). A cell violates when that judge fails or the target raises on an "
              "input inside its declared domain; inputs outside it are counted as *not declared*.",
              "- Errors are against the judge's exact values (fp64 where its own error is provably below 1/64 of "
              "the bound, else certified arb), on the rows the judge evaluates: "
              + ("every row." if jp is None else f"at most {jp} row-key pairs per problem (oracle.judge_rows; "
                                                 "*rows judged* per head in the tables; `flashproof check` judges "
                                                 "fewer rows per problem at this profile, each the same way)."),
              f"- {ULP_DEFINITION}.",
              "- *vs naive*: max error / the max error of the naive same-precision baseline (softmax(QK^T)V in the "
              "input dtype, oracle.naive_error) on the same rows; undefined (-) when the target's output is not "
              "finite or the baseline is exact. *tightness*: max of |O - exact| / (bound + reference radius).",
              "- NaN and inf outputs (where the exact value is finite) are counted apart and never enter the error "
              "figures; such a cell's max abs reads NAN or INF."]
    lines += ["", "## Per target and dtype", "",
              "| target | dtype | cells judged | not declared | NaN | inf | max abs err | max ULP | within 1 ULP | "
              "ratio to naive | tightness | violations |", "|" + "---|" * 12]
    for s in sorted(rep["summary"], key=lambda s: (s["dtype"], s["target"])):
        w = "-" if s["within_1_ulp"] is None else f"{100 * s['within_1_ulp']:.1f}%"
        lines.append(f"| {s['target']} | {s['dtype']} | {s['judged']} | {s['not_declared']} | {s['nan']} | {s['inf']} | "
                     f"{_fmt(s['max_abs'])} | {_fmt(s['ulp_max'])} | {w} | {_ratio(s['ratio_to_naive'])} | "
                     f"{_tight(s)} | {s['violations']} |")
    for sweep in SWEEPS:
        lines += _sweep_table(rep, sweep)
    if rep.get("exp_ulp"):
        lines += ["", "## Exhaustive ULP audit of the kernel's exp primitives (GPU)", "",
                  "| primitive | inputs tested | range | max ULP | mean ULP | flushed to 0 | c_exp used by the bound |",
                  "|---|---|---|---|---|---|---|"]
        for e in rep["exp_ulp"]:
            lines.append(f"| {e['primitive']} | {e['count']} | {e['range']} | {_fmt(e['max_ulp'], 4)} | "
                         f"{_fmt(e['mean_ulp'], 4)} | {e['flushed']} | {_fmt(e.get('c_exp_model'))} |")
    if rep["violations"]:
        lines += ["", "## Violations", ""]
        for v in rep["violations"][:50]:
            lines.append(f"- **{v['target']}** {v['dtype']} {v['sweep']} = {v['x']} (L={v['L']} E={v['E']} "
                         f"causal={v['causal']} regime={v['regime']}): {v['what']}")
    undeclared = {}
    for r in rep["cells"]:
        if r["status"] == "not declared":
            undeclared.setdefault((r["target"], r["reason"]), 0)
            undeclared[(r["target"], r["reason"])] += 1
    if undeclared:
        lines += ["", "## Cells outside a target's declared domain (not judged)", ""]
        lines += [f"- {t}: {n} cell(s): {why}" for (t, why), n in undeclared.items()]
    worst = worst_cell(rep)
    if worst is not None:
        lines += ["", "## Worst row and its reproducer", "", "```python", reproducer(worst, cfg["profile"]), "```"]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path

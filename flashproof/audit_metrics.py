"""The audit's measurements: of one judged cell (from a ``properties.gen.Judgement``: the
target's output on the judged rows, the exact values, the running bound), and their summary over
the cells of one target and dtype.

Every error is against the exact values the judge used (``oracle.exact``: fp64 where its own
error is provably small enough, else certified arb) on the rows the judge evaluated. Outputs
that are NaN or inf where the exact value is finite are counted apart and never enter the error
figures; a cell with any is reported by its status ("nan", "inf"), never as a small error.
"""
from __future__ import annotations

import math

import numpy as np

from flashproof.ulp import ULP_FLOOR, ulp_error

__all__ = ["ULP_BINS", "ULP_DEFINITION", "measure", "row_error", "summarize", "spread", "status_of"]

#: bin edges of the ULP histogram (flashproof.ulp.ulp_error)
ULP_BINS = [0, 0.5, 1, 2, 4, 8, 16, 32, 64, 256, math.inf]
#: what the report's ULP figures mean, stated beside them
ULP_DEFINITION = (f"ULP error of an element = |O - exact| / ulp(max(|exact|, {ULP_FLOOR:g} x the largest |exact| "
                  "of its row)), ulp(x) being the spacing of the output dtype at x (flashproof.ulp.ulp_error): an "
                  "element far below its row's magnitude is measured at that floor, not at its own tiny ULP")


def row_error(o, exact_o, b, h, i) -> float:
    """max |O - exact| over row (b, h, i): NaN when the row's output has a NaN, inf for an inf."""
    o, x = np.asarray(o, dtype=np.float64)[b, h, i], np.asarray(exact_o, dtype=np.float64)[b, h, i]
    fin = np.isfinite(x)
    with np.errstate(invalid="ignore"):
        return float(np.max(np.abs(o[fin] - x[fin]), initial=0.0))


def status_of(nan: int, inf: int) -> str:
    """"finite", "nan", "inf" or "nan+inf": what a cell's outputs were where the exact values are finite."""
    return {(False, False): "finite", (True, False): "nan", (False, True): "inf"}.get((bool(nan), bool(inf)), "nan+inf")


def _errors(o, x, dtype, rows):
    """Error figures of ``o`` against exact ``x`` ((B, H, Lq, Ev) arrays); ``rows`` maps judged
    row positions to the problem's row indices (None: the identity)."""
    fin = np.isfinite(x)
    nan = int(np.count_nonzero(np.isnan(o) & fin))
    inf = int(np.count_nonzero(np.isinf(o) & fin))
    good = fin & np.isfinite(o)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(o - x)
        diff = o - x
    e = err[good]
    m = {"elements": int(np.count_nonzero(fin)), "nan": nan, "inf": inf, "status": status_of(nan, inf),
         "max_abs": float(e.max()) if e.size else None,
         "mean_abs": float(e.mean()) if e.size else None,
         "rmse": float(np.sqrt(np.mean(e * e))) if e.size else None,
         "bias": float(np.mean(diff[good])) if e.size else None}
    ref = np.where(fin, np.abs(x), 0.0).max(axis=-1, initial=0.0)
    row_fin = np.where(good, err, 0.0).max(axis=-1, initial=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(ref > 0, row_fin / ref, 0.0)
    m["max_row_rel"] = float(rel.max(initial=0.0))
    rank = np.where((fin & ~np.isfinite(o)).any(axis=-1), np.inf, row_fin)  # a non-finite row ranks first
    if rank.size:
        b, h, i = (int(t) for t in np.unravel_index(int(np.argmax(rank)), rank.shape))
        m["worst_row"] = [b, h, int(rows[i]) if rows is not None else i]
        m["worst_row_error"] = row_error(o, x, b, h, i)
    u = ulp_error(o, x, dtype)
    u = u[np.isfinite(u)]
    m["ulp_max"] = float(u.max()) if u.size else None
    m["ulp_median"] = float(np.median(u)) if u.size else None
    m["ulp_hist"] = [int(c) for c in np.histogram(u, bins=ULP_BINS)[0]]
    return m, err, fin


def measure(judged, *, dtype, naive_error=None) -> dict:
    """The metrics of one judged cell. ``judged``: a properties.gen.Judgement, or anything with
    ``o``, ``lse``, ``exact``, ``o_bound``, ``rows`` (the naive baseline has no bound: o_bound None);
    ``naive_error``: oracle.naive_error's per-head max error of the naive baseline, for the ratio."""
    ex = judged.exact
    o = np.asarray(judged.o, dtype=np.float64)
    m, err, fin = _errors(o, ex.o, dtype, judged.rows)
    m["rows_judged"] = int(o.shape[2]) if o.ndim == 4 else 0
    m["reference"] = ex.source
    if judged.o_bound is not None:
        tol = np.asarray(judged.o_bound, dtype=np.float64) + ex.o_rad  # the judge's tolerance
        with np.errstate(invalid="ignore", divide="ignore"):
            above = fin & ~(err <= tol)  # a NaN error is above every bound
            finite = fin & np.isfinite(tol) & np.isfinite(err)
            ratio = np.where(tol > 0, err / np.where(tol > 0, tol, 1.0), np.where(err > 0, np.inf, 0.0))
        m["bound_max"] = float(tol[fin & np.isfinite(tol)].max()) if (fin & np.isfinite(tol)).any() else None
        m["tightness"] = float(ratio[finite].max()) if finite.any() else None
        m["above_bound"] = int(np.count_nonzero(above))
        m["bound_vacuous"] = int(np.count_nonzero(fin & np.isposinf(tol)))  # an infinite bound says nothing
    if judged.lse is not None:
        lse = np.asarray(judged.lse, dtype=np.float64)
        fl = np.isfinite(ex.lse)
        ok = fl & np.isfinite(lse)
        with np.errstate(invalid="ignore"):
            d = np.abs(lse - ex.lse)[ok]
        m["lse_max_abs"] = float(d.max()) if d.size else None
        m["lse_nonfinite"] = int(np.count_nonzero(fl & ~np.isfinite(lse)))
        m["lse_wrong_empty"] = int(np.count_nonzero(~fl & ~(lse == ex.lse)))
    if naive_error is not None:
        nmax = float(np.max(naive_error, initial=0.0))
        m["naive_max_abs"] = nmax
        # a non-finite output or an exact naive baseline leaves the ratio undefined (None), never 0
        m["ratio_to_naive"] = (m["max_abs"] / nmax if m["status"] == "finite" and m["max_abs"] is not None
                               and 0 < nmax < math.inf else None)
    return m


def spread(values) -> dict | None:
    """Median, quartiles and range of ``values`` (None when there are none)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return None
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "median": float(med), "q1": float(q1), "q3": float(q3), "min": float(v.min()),
            "max": float(v.max())}


def summarize(rows) -> list:
    """One entry per (target, dtype) over its cells (rows of the report's ``cells``)."""
    out: dict = {}
    for r in rows:
        key = (r["label"], r["dtype"])
        s = out.setdefault(key, {"target": r["label"], "role": r["role"], "dtype": r["dtype"], "cells": 0,
                                 "judged": 0, "not_declared": 0, "violations": 0, "nan": 0, "inf": 0,
                                 "nonfinite_cells": 0, "max_abs": None, "ulp_max": None, "ulp_hist": None,
                                 "tightness": None, "bound_vacuous": 0, "ratios": [], "ratio_undefined": 0})
        s["cells"] += 1
        if r["status"] == "not declared":
            s["not_declared"] += 1
            continue
        if r.get("violation"):
            s["violations"] += 1
        m = r.get("metrics")
        if m is None:
            continue
        s["judged"] += 1
        s["nan"] += m["nan"]
        s["inf"] += m["inf"]
        s["nonfinite_cells"] += m["status"] != "finite"
        for k in ("max_abs", "ulp_max", "tightness"):
            if m.get(k) is not None:
                s[k] = m[k] if s[k] is None else max(s[k], m[k])
        s["bound_vacuous"] += m.get("bound_vacuous", 0)
        h = m.get("ulp_hist")
        if h:
            s["ulp_hist"] = h if s["ulp_hist"] is None else [a + b for a, b in zip(s["ulp_hist"], h)]
        if "ratio_to_naive" in m:
            if m["ratio_to_naive"] is None:
                s["ratio_undefined"] += 1
            else:
                s["ratios"].append(m["ratio_to_naive"])
    for s in out.values():
        s["ratio_to_naive"] = spread(s.pop("ratios"))
        h = s.pop("ulp_hist")
        s["within_1_ulp"] = (sum(h[:2]) / sum(h)) if h and sum(h) else None
    return list(out.values())


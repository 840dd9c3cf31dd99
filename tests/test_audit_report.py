"""The audit's report, tried as a new user would (issue 16's audit bugs). Each test names the bug
it pins; each failed on the audit before it became a client of the suite.

One `flashproof audit` run (float32, quick sweep) of two targets from a module in a temporary
folder: ``bad`` returns NaN wherever |q| > 100 (so every output of the logit-scale-64 cell is
NaN), an inf on one row at E = 40 and an inf LSE at E = 16; ``naive_copy`` is the naive baseline
itself (its ratio to the baseline is exactly 1 in every cell)."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

TARGETS = '''
import json
import os

import torch
from flashproof import reference
from flashproof.properties.targets import Target

CALLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.jsonl")


def _forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None, attn_mask=None,
             return_lse=False, **tile):
    s = (q.double() @ k.double().transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    with open(CALLS, "a") as f:  # what the target was asked: its softmax scale and the logits' spread
        f.write(json.dumps({"E": q.shape[-1], "scale": scale, "std": float(s.std())}) + "\\n")
    o, lse = reference.forward_naive(q.double(), k.double(), v.double(), causal=causal, scale=scale)
    o, lse = o.to(q.dtype), lse.float()
    if q.abs().max() > 100:
        o = torch.full_like(o, float("nan"))
    if q.shape[-1] == 40:
        o[0, 0, 1, 0] = float("inf")
    if q.shape[-1] == 16:
        lse[0, 0, 0] = float("inf")
    return (o, lse) if return_lse else o


def bad():
    return Target(name="bad", forward=_forward, lse=True, dtypes=("float32",), devices=("cpu",))


def naive_copy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return reference.forward_naive(query, key, value, causal=is_causal, scale=scale)[0]
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The audit's exit code, its output folder, and every figure it saved: {file name: Figure}."""
    from matplotlib.figure import Figure

    from flashproof.cli import main

    tmp = tmp_path_factory.mktemp("fpa")
    (tmp / "fpa_targets.py").write_text(TARGETS)
    figures = {}
    save = Figure.savefig

    def keep(self, fname, *a, **kw):
        figures[os.path.basename(str(fname))] = self
        return save(self, fname, *a, **kw)
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(tmp))
    mp.setattr(Figure, "savefig", keep)
    try:
        code = main(["audit", "fpa_targets:bad", "fpa_targets:naive_copy", "--no-defaults", "--dtype", "float32",
                     "--quick", "--out", str(tmp / "out")])
    finally:
        mp.undo()
    return code, tmp / "out", figures


def _cells(out):
    return json.loads((out / "report.json").read_text())["cells"]


def test_all_nan_cell_is_plotted_and_tabled_as_nan(run):
    """Bug: a cell whose every output is NaN was plotted at the 1e-12 floor (looking perfect) and
    tabled with a small max error. It is drawn with a marker and colour of its own, and its max
    error reads NAN."""
    code, out, figs = run
    assert code == 1
    fig = figs["error_vs_logit_scale.png"]
    (ax,) = fig.axes
    nan_marks = [ln for ln in ax.lines if ln.get_marker() == "X" and ln.get_color() == "red"]
    assert nan_marks and 64.0 in np.concatenate([ln.get_xdata() for ln in nan_marks])
    finite = max(y for ln in ax.lines if ln not in nan_marks and ln.get_marker() == "o" for y in ln.get_ydata())
    for ln in nan_marks:
        assert (np.asarray(ln.get_ydata()) > finite).all(), "a NaN cell drawn among (or below) the finite errors"
    for ln in ax.lines:
        assert 1e-12 not in list(ln.get_ydata()), "a cell drawn at the 1e-12 floor"
    md = (out / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| float32 | bad |") and "| 64 | 1 | standard |" in ln]
    assert len(rows) == 1 and "NAN" in rows[0], rows


def test_report_json_is_strict(run):
    """Bug: report.json contained a bare Infinity, which strict JSON parsers reject. Non-finite
    numbers are strings ("NaN", "Infinity", "-Infinity"), as docs/audits/schema.md says."""
    _, out, _ = run

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    text = (out / "report.json").read_text()
    rep = json.loads(text, parse_constant=refuse)
    assert rep["schema"] == "flashproof.audit/2"
    strings = re.findall(r'"(NaN|Infinity|-Infinity)"', text)
    assert strings, "the report has non-finite figures (an inf output's row error): they must appear as strings"
    schema = open(os.path.join(os.path.dirname(__file__), "..", "docs", "audits", "schema.md")).read()
    assert '"Infinity"' in schema and '"NaN"' in schema


def test_summary_states_ratio_spread_and_nonfinite_counts_first(run):
    """Bug: the summary said a kernel with NaN outputs deviates "less than the naive baseline", a
    median ratio of exactly 1 printed as "more", and the word flipped with the cell seeds. It
    states NaN/inf counts first, then the measured ratio's median, IQR and range over cells."""
    _, out, _ = run
    md = (out / "report.md").read_text()
    summary = md.split("## Executive summary")[1].split("\n## ")[0]
    assert "less than" not in summary and "more than" not in summary
    bad = next(ln for ln in summary.splitlines() if ln.startswith("- **bad**"))
    nan = sum(c["metrics"]["nan"] for c in _cells(out) if c["label"] == "bad" and c.get("metrics"))
    assert nan > 0 and f"{nan} NaN" in bad and bad.index("NaN") < bad.index("median")
    copy = next(ln for ln in summary.splitlines() if ln.startswith("- **fpa_targets:naive_copy**"))
    n = sum(1 for c in _cells(out) if c["label"] == "fpa_targets:naive_copy" and c.get("metrics"))
    assert f"median 1 (IQR 1-1, range 1-1, {n} cells)" in copy, copy


def test_temperature_is_softmax_temperature(run):
    """Bug: "temperature" multiplied q (a higher T gave sharper logits). T now divides the logits:
    the target is called with the softmax scale 1/(T sqrt E), and the logits' spread falls as T
    rises; the old sweep is "logit scale" (q's spread), whose logits' spread rises with s."""
    _, out, _ = run
    calls = [json.loads(ln) for ln in (out.parent / "calls.jsonl").read_text().splitlines()]
    scaled = {(c["E"], c["scale"]): c["std"] for c in calls if c["scale"] is not None}
    assert len(scaled) >= 3, "the target never received a softmax scale: temperature does not divide the logits"
    temps = sorted({c["x"] for c in _cells(out) if c["sweep"] == "temperature"})
    std = [scaled[(c_e, 1 / (t * math.sqrt(c_e)))] for t in temps for c_e in {e for e, _ in scaled}]
    assert len(temps) >= 3 and all(a > b for a, b in zip(std, std[1:])), list(zip(temps, std))
    from flashproof.properties.cases import Case, MaskSpec, Problem, Regime, Shape
    from flashproof.properties.inputs import build, logits_exact

    names = {"Case": Case, "MaskSpec": MaskSpec, "Problem": Problem, "Regime": Regime, "Shape": Shape}
    cells = sorted((c for c in _cells(out) if c["sweep"] == "logit_scale" and c["label"] == "bad"), key=lambda c: c["x"])
    spread = [float(np.std(logits_exact(build(eval(c["case"], {"__builtins__": {}}, names).problem))[0]))
              for c in cells]
    assert len(spread) >= 3 and all(a < b for a, b in zip(spread, spread[1:])), spread


def test_ulp_is_defined_against_a_stated_floor(run):
    """Bug: "max ULP" was undefined and near-zero references dominated it (an error of 2^-20 next to
    a reference of 2^-20 read as 8 million ULPs). ULP error is measured at max(|exact|, 1/16 of the
    row's max |exact|) and the report states that definition."""
    _, out, _ = run
    md = (out / "report.md").read_text()
    assert "ULP error of an element" in md and "0.0625 x the largest |exact| of its row" in md
    from flashproof.ulp import ULP_FLOOR, spacing, ulp_error

    assert ULP_FLOOR == 0.0625
    want = np.array([[1.0, 2.0 ** -20]])
    got = np.array([[1.0, 2.0 ** -19]])  # off by 2^-20: 2^23 ULPs of fp32 at 2^-20, 128 at the floor 1/16
    u = ulp_error(got, want, "float32")
    assert u[0, 0] == 0 and u[0, 1] == 2.0 ** -20 / spacing(ULP_FLOOR, "float32") == 128


def test_plots_label_their_axes_and_cells(run):
    """Bug: the plots had no y-axis labels and did not say which cells they show."""
    _, _, figs = run
    for name, fig in figs.items():
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), name
            assert "E=" in ax.get_title() and "B×H=" in ax.get_title(), (name, ax.get_title())
    assert {"error_vs_L.png", "error_vs_logit_scale.png", "error_vs_temperature.png", "ulp_histogram.png"} <= set(figs)


def test_out_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """Bug: `flashproof audit --out README.md/sub` ran the whole sweep, then crashed with a
    traceback and exit 1. --out is checked first (prove's check, proofs.runner): exit 2."""
    from flashproof import audit
    from flashproof.cli import main

    (tmp_path / "README.md").write_text("a file")

    def no_sweep(*a, **k):
        raise AssertionError("the sweep ran before --out was checked")
    monkeypatch.setattr(audit, "audit", no_sweep)
    assert main(["audit", "--out", str(tmp_path / "README.md" / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "README.md is not a directory" in err[0], err
    assert main(["audit", "--out", str(tmp_path / "README.md")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_worst_row_snippet_replays_the_target_that_produced_it(tmp_path):
    """Bug: the worst-row snippet always called flashproof.kernels.attention, even when the worst row
    came from the user's kernel (it printed 0.0 where that kernel's error was 2.59). It re-judges the
    Case against the target that produced it, and prints that row's error."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "flashproof.cli", "audit", "audit_targets:off_by", "--no-defaults",
                        "--dtype", "float32", "--quick", "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    md = (out / "report.md").read_text()
    snippet = md.split("## Worst row and its reproducer")[1].split("```python\n")[1].split("```")[0]
    code = snippet.rsplit("\nreplay(", 1)[0]  # the replay line raises (the case violates): run the print
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    printed = float(p.stdout.strip().splitlines()[-1])
    import audit_targets

    assert math.isfinite(printed) and printed > audit_targets.OFF_BY / 2, (printed, snippet)
    assert "audit_targets:off_by" in snippet and "replay(" in snippet
    assert printed == float(re.search(r"max \|O - exact\| = (\S+)", snippet).group(1))

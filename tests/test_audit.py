"""flashproof.audit: its grid, its measurements, its targets and README's first command.

The audit is a client of the suite (issue 16): cells are strategies.Case built by strategies.build,
targets are properties Targets, the verdict is properties.gen.judge_case's. Its agreement with
`flashproof check` is tests/test_audit_agrees_with_check.py; its report's bugs, test_audit_report.py."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from flashproof import audit, audit_cells, audit_metrics, audit_report
from flashproof.properties.oracle import Exact
from flashproof.properties.cases import REGIMES, Case, Regime
from flashproof.properties.inputs import build, logits_exact
from flashproof.ulp import spacing


@dataclasses.dataclass
class _Judged:
    o: np.ndarray
    exact: Exact
    o_bound: object = None
    lse: object = None
    rows: object = None


def _exact(o, lse=None):
    lse = np.zeros(o.shape[:3]) if lse is None else lse
    return Exact(o, np.zeros_like(o), lse, np.zeros_like(lse), "test")


def test_grid_is_made_of_the_suites_cases():
    """Every cell is a strategies.Case; the regime sweep covers the suite's REGIMES (but standard);
    logit scale is the standard regime's spread; temperature is the softmax scale 1/(T sqrt E)."""
    cells = audit_cells.cells(quick=True, device="cpu", dtypes=("float16",))
    assert all(isinstance(c.case, Case) for c in cells)
    assert {c.value for c in cells if c.sweep == "regime"} == set(REGIMES) - {"standard"}
    assert [c.problem.seed for c in cells] == list(range(len(cells)))
    for c in cells:
        build(c.problem)  # every cell builds
        if c.sweep == "logit_scale":
            assert c.problem.regime == Regime("standard", 0.0, c.value) and c.problem.scale is None
        if c.sweep == "temperature":
            assert c.problem.scale == 1 / (c.value * math.sqrt(c.problem.shape.e)) and c.temperature == pytest.approx(c.value)
    with pytest.raises(ValueError, match="temperature"):
        audit_cells.temperature_scale(0.0, 64)


def test_temperature_smooths_the_softmax():
    """T divides the logits: the max attention weight of a row falls as T rises."""
    cells = [c for c in audit_cells.cells(dtypes=("float32",)) if c.sweep == "temperature"]
    top = []
    for c in sorted(cells, key=lambda c: c.value):
        s, _ = logits_exact(build(c.problem))
        p = np.exp(s - s.max(-1, keepdims=True))
        top.append(float((p / p.sum(-1, keepdims=True)).max(-1).mean()))
    assert all(a > b for a, b in zip(top, top[1:])), top


def test_measure_exact_output_has_zero_error():
    ref = np.random.default_rng(0).normal(size=(1, 2, 5, 4))
    m = audit_metrics.measure(_Judged(ref.copy(), _exact(ref), o_bound=np.full_like(ref, 1e-6)), dtype="float32")
    assert m["max_abs"] == 0 and m["rmse"] == 0 and (m["nan"], m["inf"]) == (0, 0) and m["status"] == "finite"
    assert m["above_bound"] == 0 and m["tightness"] == 0


def test_measure_counts_nan_and_inf_apart_and_finds_worst_row():
    ref = np.zeros((1, 1, 4, 3))
    o = ref.copy()
    o[0, 0, 1, 0] = np.nan
    o[0, 0, 2, :] = np.inf
    o[0, 0, 3, 2] = 0.5
    m = audit_metrics.measure(_Judged(o, _exact(ref), o_bound=np.full_like(ref, 0.1), rows=np.array([0, 5, 6, 9])),
                              dtype="float32", naive_error=np.array([[0.25]]))
    assert (m["nan"], m["inf"], m["status"]) == (1, 3, "nan+inf")
    assert m["max_abs"] == 0.5  # finite outputs only
    assert m["above_bound"] == 5  # the NaN, the three inf and the 0.5
    assert m["worst_row"][:2] == [0, 0] and m["worst_row"][2] in (5, 6)  # a non-finite row, in the problem's numbering
    assert m["ratio_to_naive"] is None  # non-finite outputs: undefined, never a small number


def test_infinite_bound_is_reported_as_vacuous_not_tight():
    ref = np.zeros((1, 1, 2, 2))
    m = audit_metrics.measure(_Judged(ref + 0.1, _exact(ref), o_bound=np.full_like(ref, np.inf)), dtype="float32")
    assert m["bound_vacuous"] == 4 and m["tightness"] is None and m["above_bound"] == 0


def test_measure_lse_checks_empty_rows():
    ref = np.zeros((1, 1, 2, 2))
    ex = _exact(ref, np.array([[[0.5, -np.inf]]]))
    m = audit_metrics.measure(_Judged(ref, ex, lse=np.array([[[0.5, np.inf]]])), dtype="bfloat16")
    assert m["lse_wrong_empty"] == 1 and m["lse_nonfinite"] == 0 and m["lse_max_abs"] == 0


def test_ratio_spread():
    r = audit_metrics.spread([1.0, 2.0, 3.0, 4.0, None, math.inf])
    assert r == {"n": 4, "median": 2.5, "q1": 1.75, "q3": 3.25, "min": 1.0, "max": 4.0}
    assert audit_metrics.spread([None]) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_spacing_is_one_ulp_of_the_dtype(dtype):
    tdt = getattr(torch, dtype)
    x = torch.tensor([1.0, 1.5, 3.0, 1000.0, 0.001, -7.0]).to(tdt)
    a = np.abs(x.double().numpy())
    sp = spacing(a, dtype)
    # |x| + spacing is the next representable value above |x|; half of it rounds back to |x|
    np.testing.assert_array_equal(torch.tensor(a + sp).to(tdt).double().numpy(), a + sp)
    np.testing.assert_array_equal(torch.tensor(a + sp * 0.49).to(tdt).double().numpy(), a)


def test_strict_json_writes_nonfinite_as_strings():
    doc = audit_report.strict({"a": [np.float32(np.nan), math.inf, -math.inf, (1, np.int64(2))], 3: np.bool_(True)})
    assert doc == {"a": ["NaN", "Infinity", "-Infinity", [1, 2]], "3": True}
    json.dumps(doc, allow_nan=False)


def test_tiling_sweep_judges_only_configs_the_kernel_accepts():
    """The tiling sweep picks tile configs the kernel accepts for the cell's head dim and dtype (its
    Target's accepts_tile): a refused config (shared memory, fp32 at E=64) is the kernel's clear
    error, not a violation. Adding configs to TILE_CONFIGS once shifted the pick onto refused fp32
    configs and failed `make audit`."""
    from flashproof.properties.builtin_targets import default_target

    cells = [c for c in audit_cells.cells(dtypes=("float32",)) if c.sweep == "tiling"]
    rep = audit.audit([audit.Audited(default_target(), "kernel", "flashproof")], cells=cells, progress=False)
    assert not rep["violations"], rep["violations"]
    ran = [r for r in rep["cells"] if r["label"] == "flashproof"]
    assert len(ran) == audit_cells.TILES_PER_CELL and all(r["status"] == "judged" and r["tile"] for r in ran), ran
    assert len({r["target"] for r in ran}) == audit_cells.TILES_PER_CELL


def test_named_target_loaded_as_check_loads_it(tmp_path, monkeypatch):
    """A TARGET is loaded by the suite's load_target_within (what `flashproof check` calls), so a
    Target factory's declarations (here round_toward_zero, c_exp) are what the audit judges by."""
    (tmp_path / "fpa_decl.py").write_text(
        "import torch\nfrom flashproof.properties.targets import Target\n"
        "def t():\n    return Target(name='declared', sdpa=torch.nn.functional.scaled_dot_product_attention,"
        " round_toward_zero=('bfloat16',), c_exp=3.0, dtypes=('float32',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from flashproof.properties import timeouts

    seen = []
    real = timeouts.load_target_within
    monkeypatch.setattr(timeouts, "load_target_within", lambda spec, limit: seen.append(spec) or real(spec, limit))
    (got,) = audit._load(["fpa_decl:t"], "ci", "cpu")
    assert seen == ["fpa_decl:t"]
    assert got.target.round_toward_zero == ("bfloat16",) and got.target.c_exp == 3.0 and got.role == "target"


def test_cli_usage_errors(tmp_path, capsys):
    from flashproof.cli import main

    assert main(["audit", "--no-defaults", "--out", str(tmp_path / "o")]) == 2
    assert "needs at least one TARGET" in capsys.readouterr().err
    (tmp_path / "fpa_cuda.py").write_text(
        "from flashproof.properties.targets import Target\n"
        "def t():\n    return Target(name='cuda only', sdpa=lambda *a, **k: None, devices=('cuda',))\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        assert main(["audit", "--no-defaults", "--device", "cpu", "fpa_cuda:t", "--out", str(tmp_path / "o")]) == 2
    finally:
        sys.path.remove(str(tmp_path))
    assert "declares devices ('cuda',), not --device cpu" in capsys.readouterr().err


def test_default_audit_passes(tmp_path):
    """README's first command (`make audit` = `flashproof audit` on its default targets) passes:
    exit 0 and a PASS verdict (80-90 s on 2 shared cores)."""
    from flashproof.cli import main

    assert main(["audit", "--out", str(tmp_path / "audit-out")]) == 0
    assert "Verdict: PASS" in open(tmp_path / "audit-out" / "report.md").read()


def test_labels_are_made_distinct_and_a_target_outside_every_cell_is_an_error(tmp_path, monkeypatch, capsys):
    """A TARGET named twice (or like a built-in, or "naive", the baseline's row) gets its own label;
    a TARGET whose declared domain takes no cell of the sweep is exit 2, not a silent PASS."""
    from flashproof.cli import main
    from flashproof.properties.builtin_targets import torch_sdpa

    t = torch_sdpa()
    got = audit._unique([audit.Audited(t, "peer", "x"), audit.Audited(t, "target", "x"),
                         audit.Audited(t, "target", "naive")])
    assert [a.label for a in got] == ["x", "x #2", "naive #2"]
    with pytest.raises(ValueError, match="distinct"):
        audit.audit([audit.Audited(t, "peer", "x")] * 2, cells=[], progress=False)
    (tmp_path / "fpa_f64.py").write_text(
        "import torch\nfrom flashproof.properties.targets import Target\n"
        "def t():\n    return Target(name='f64 only', sdpa=torch.nn.functional.scaled_dot_product_attention,"
        " dtypes=('float64',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["audit", "--no-defaults", "--dtype", "float32", "fpa_f64:t", "--out", str(tmp_path / "o")]) == 2
    assert "no cell of the sweep is in the declared domain of f64 only" in capsys.readouterr().err


def test_sampled_rows_are_numbered_as_in_the_problem(monkeypatch):
    """Where the profile judges a sample of rows (gpu), the audit judges at least AUDIT_JUDGE_PAIRS
    row-key pairs, reports rows in the problem's numbering, and `judge` (the snippet's call) judges
    the same rows: its row_error of the worst row is the report's."""
    from flashproof.properties import sdpa_backends
    from flashproof.properties.profiles import get_profile
    from flashproof.properties.cases import MaskSpec, Problem, Shape

    for profile in ("ci", "gpu"):  # both sample rows now (ci past its base lengths: the length budget)
        assert audit.judge_pairs(profile) == max(get_profile(profile).limits.judge_pairs, audit.AUDIT_JUDGE_PAIRS)
    monkeypatch.setattr(audit, "AUDIT_JUDGE_PAIRS", 1 << 16)
    case = Case(Problem(shape=Shape(1, 2, 2, 600, 600, 16, 16), dtype="float32", mask=MaskSpec(causal="top_left"),
                        seed=5))
    t = sdpa_backends.math()
    rep = audit.audit([audit.Audited(t, "peer", "m")], cells=[audit_cells.Cell("L", 600, case)], profile="gpu",
                      device="cpu", progress=False)
    (row,) = [r for r in rep["cells"] if r["label"] == "m"]
    m = row["metrics"]
    assert 2 <= m["rows_judged"] < 600 and rep["config"]["judge_pairs"] == get_profile("gpu").limits.judge_pairs
    b, h, i = m["worst_row"]
    j = audit.judge(case, target=t, profile="gpu")
    assert i in set(j.rows.tolist()) and audit.row_error(j, b, h, i) == m["worst_row_error"]

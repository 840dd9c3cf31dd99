"""flashproof.audit: metrics, ULP spacing, input regimes, violation detection, report files."""
import json

import numpy as np
import pytest
import torch

from flashproof import audit


def test_measure_exact_output_has_zero_error():
    ref = np.random.default_rng(0).normal(size=(1, 2, 5, 4))
    m = audit.measure(ref.copy(), ref, dtype="float32", bound=np.full_like(ref, 1e-6))
    assert m["max_abs"] == 0 and m["rmse"] == 0 and m["nan"] == 0 and m["inf"] == 0
    assert m["violations"] == 0 and m["tightness"] == 0


def test_measure_counts_nan_and_inf_separately_and_finds_worst_row():
    ref = np.zeros((1, 1, 4, 3))
    o = ref.copy()
    o[0, 0, 1, 0] = np.nan
    o[0, 0, 2, :] = np.inf
    o[0, 0, 3, 2] = 0.5
    m = audit.measure(o, ref, dtype="float32", bound=np.full_like(ref, 0.1))
    assert (m["nan"], m["inf"]) == (1, 3)
    assert m["max_abs"] == 0.5 and m["worst_row"] == [0, 0, 3]
    assert m["violations"] == 1 and m["tightness"] == pytest.approx(5.0)


def test_measure_lse_checks_empty_rows():
    ref = np.zeros((1, 1, 2, 2))
    lse_ref = np.array([[[0.5, -np.inf]]])
    m = audit.measure(ref, ref, dtype="bfloat16", lse=np.array([[[0.5, np.inf]]]), ref_lse=lse_ref)
    assert m["lse_wrong_empty"] == 1 and m["lse_nonfinite"] == 0


@pytest.mark.parametrize("dtype,tdt", [("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                       ("float32", torch.float32)])
def test_spacing_is_one_ulp_of_the_dtype(dtype, tdt):
    x = torch.tensor([1.0, 1.5, 3.0, 1000.0, 0.001, -7.0]).to(tdt)
    nxt = torch.nextafter(x.float(), torch.tensor(np.inf)).to(tdt) if tdt == torch.float32 else None
    sp = audit._spacing(x.double().numpy(), dtype)
    # x + spacing is the next representable value above |x|: rounding it to dtype keeps it
    up = torch.tensor(np.abs(x.double().numpy()) + sp).to(tdt).double().numpy()
    half = torch.tensor(np.abs(x.double().numpy()) + sp * 0.49).to(tdt).double().numpy()
    np.testing.assert_array_equal(up, np.abs(x.double().numpy()) + sp)
    np.testing.assert_array_equal(half, np.abs(x.double().numpy()))
    if nxt is not None:
        np.testing.assert_array_equal(sp[x.numpy() > 0], (nxt - x).double().numpy()[x.numpy() > 0])


def test_shifted_regime_moves_each_row_by_an_exact_constant():
    for dt in ("bfloat16", "float16", "float32"):
        q, k, v = audit.make_inputs(seed=1, b=1, h=1, lq=8, lk=8, e=16, dtype=dt, regime="shifted")
        # the last component contributes -65536 to every logit of every row, exactly
        shift = q.double()[..., -1:] * k.double()[..., -1:].transpose(-1, -2)
        np.testing.assert_array_equal(shift.numpy(), -65536.0)
    with pytest.raises(ValueError, match="regime"):
        audit.make_inputs(seed=0, b=1, h=1, lq=2, lk=2, e=4, dtype="float32", regime="nope")


def _nan_rows(q, k, v, *, causal, **tile):
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    o[..., 0, :] = float("nan")
    return o, None


def test_audit_flags_a_target_that_returns_nan(tmp_path):
    impls = [audit._naive_impl(), audit.Impl("nan-rows", _nan_rows, "target", None)]
    rep = audit.audit(impls, dtypes=("float32",), quick=True, progress=False)
    bad = {v["impl"] for v in rep["violations"]}
    assert bad == {"nan-rows"}
    path = audit.write_report(rep, tmp_path)
    text = open(path).read()
    assert "Verdict: FAIL" in text and "nan-rows" in text
    data = json.load(open(tmp_path / "report.json"))
    assert data["schema"] == audit.SCHEMA and data["violations"]
    assert (tmp_path / "error_vs_L.png").stat().st_size > 1000


def test_infinite_bound_is_reported_as_vacuous_not_tight():
    ref = np.zeros((1, 1, 2, 2))
    o = ref + 0.1
    m = audit.measure(o, ref, dtype="float32", bound=np.full_like(ref, np.inf))
    assert m["bound_vacuous"] == 4 and "tightness" not in m and m["violations"] == 0
    assert "infinite bound" in audit._tight({"tightness": None, "bound_vacuous": 4})


def test_sampled_row_bound_equals_full_bound_on_its_rows(monkeypatch):
    q, k, v = audit.make_inputs(seed=2, b=1, h=2, lq=40, lk=40, e=16, dtype="bfloat16")
    full = audit._bound(q, k, v, True, "bfloat16", "fp32", 2)
    monkeypatch.setattr(audit, "BOUND_ROWS", 7)
    rows = audit.bound_rows(40)
    assert len(rows) == 7 and rows[0] == 0 and rows[-1] == 39
    part = audit._bound(q, k, v, True, "bfloat16", "fp32", 2)
    np.testing.assert_array_equal(part[:, :, rows], full[:, :, rows])
    assert np.isnan(np.delete(part, rows, axis=2)).all()
    m = audit.measure(full, full, dtype="bfloat16", bound=part)
    assert m["bound_elements"] == 2 * 7 * 16 and m["violations"] == 0


def test_tiling_sweep_judges_only_configs_the_kernel_accepts():
    """The default audit (README's first command) picks tile configs the kernel accepts for the
    cell's head dim and dtype: a refused config (shared memory, fp32 at E=64) is the kernel's
    clear error, not a violation. Adding two configs to TILE_CONFIGS once shifted the pick onto
    refused fp32 configs and failed `make audit`."""
    imp = audit._kernel_impl()
    imp.sweeps = ("tiling",)
    rep = audit.audit([audit._naive_impl(), imp], dtypes=("float32",), quick=True, progress=False)
    assert not rep["violations"] and not rep["errors"], (rep["violations"], rep["errors"])
    ran = {r["impl"] for r in rep["cells"] if r["impl"].startswith("flashproof ")}
    assert len(ran) == 3, ran


def test_default_audit_passes(tmp_path):
    """README's first command (`make audit` = `flashproof audit` on its embedded default) passes:
    exit 0 and a PASS verdict (about 30 s on 2 cores)."""
    from flashproof.cli import main

    assert main(["audit", "--out", str(tmp_path / "audit-out")]) == 0
    assert "Verdict: PASS" in open(tmp_path / "audit-out" / "report.md").read()

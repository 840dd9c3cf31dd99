"""The accumulation model a target declares (issue 14, item 7): the measured table against its
committed record, the declaration per device (fake capabilities: no GPU needed), the Target's
validation of any name proofs accepts and of per-dtype tables, and the one probe, run under the
interpreter."""
import importlib.util
import json
import os
import warnings

import numpy as np
import pytest

from flashproof.proofs import accumulation as acc
from flashproof.proofs.devices import MEASURED, covers, device_accumulators, most_pessimistic
from flashproof.properties import oracle
from flashproof.properties.builtin_targets import kernel_accumulator
from flashproof.properties.cases import Problem, Shape
from flashproof.properties.context import make_context
from flashproof.properties.inputs import build
from flashproof.properties.sdpa_backends import backend_accumulator
from flashproof.properties.targets import Target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(ROOT, "benchmarks", "results", "accumulation-h200.json")
H200 = "fp32_blockfma_k16_x2_rz"


def _probe_module():
    spec = importlib.util.spec_from_file_location("accumulation_probe",
                                                  os.path.join(ROOT, "benchmarks", "accumulation_probe.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ the measured table
def test_the_measured_table_is_what_the_committed_record_identifies():
    """proofs.accumulation re-identifies every configuration of the H200 record from its raw results
    (crafted_experiments(K) and the device's values), exactly as the probe wrote it, and
    devices.MEASURED declares those models."""
    from fractions import Fraction

    with open(RECORD) as f:
        rec = json.load(f)
    entry = MEASURED[(9, 0)]
    assert entry["record"] == "benchmarks/results/accumulation-h200.json" and rec["device"] == entry["device"]
    for res in rec["results"]:
        exps = acc.crafted_experiments(res["K"])
        assert [e[0] for e in exps] == [r["experiment"] for r in res["rows"]]
        rows = []
        for (name, c, terms), r in zip(exps, res["rows"]):
            prods = [Fraction(0)] * res["K"]
            for pos, (a, b) in terms.items():
                prods[pos] = a * b
            assert float(c + sum(prods)) == r["exact"]
            rows.append({"c": c, "products": prods, "got": Fraction(r["got"])})
        probe = _probe_module()
        assert probe.matching(rows, res["K"]) == res["models"], res
        names = {acc.accumulator_of_label(m) for m in res["models"]}
        if res["precision"] == "tf32":
            want = entry["tensor_core"]["tf32"]
        elif res["dtype"] == "float32":
            want = entry["ieee"]["float32"]
        else:
            want = entry["tensor_core"][res["dtype"]]
        assert names == {want}, res["dtype"]
    assert entry["tensor_core"]["float16"] == entry["tensor_core"]["bfloat16"] == H200


def test_the_committed_table_renders_from_the_committed_record():
    with open(RECORD) as f:
        table = _probe_module().render(json.load(f))
    with open(RECORD[:-5] + ".md") as f:
        md = f.read()
    assert md.startswith(table)


def test_covers_and_most_pessimistic():
    # the H200's unit rounds once per 16 products: a larger unit per block (5 2^-23) but a smaller one per
    # term of a long sum (5 2^-23 / 16 < 2^-24) than IEEE fp32: neither bound covers the other
    assert not covers(H200, "fp32") and not covers("fp32", H200)
    assert covers("fp32_rz", "fp32") and not covers("fp32", "fp32_rz")
    assert covers(H200, H200) and covers("fp32_blockfma_k16_x0_rz", H200) and not covers(H200, "fp32_blockfma_k16_x0_rz")
    assert most_pessimistic([H200, "fp32_blockfma_k16_x0_rz", H200]) == "fp32_blockfma_k16_x0_rz"
    with pytest.raises(ValueError, match="covers"):
        most_pessimistic(["fp32", H200])


# ------------------------------------------------------------------ the declaration per device
def test_a_measured_device_declares_its_table_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table, warning = device_accumulators((9, 0), ("float16", "bfloat16", "float32", "float64"))
    assert warning is None
    assert table == {"float16": H200, "bfloat16": H200, "float32": "fp32", "float64": "fp64"}


@pytest.mark.parametrize("cap", [(8, 0), (10, 0), (12, 0)])
def test_an_unmeasured_device_declares_the_most_pessimistic_measured_model_and_warns(cap):
    table, warning = device_accumulators(cap, ("float16", "bfloat16", "float32"))
    assert table == {"float16": H200, "bfloat16": H200, "float32": "fp32"}
    assert f"{cap[0]}.{cap[1]} was never measured" in warning and "accumulation_probe.py" in warning
    assert "float32" not in warning.split("for ")[1].split("]")[0]  # IEEE fp32 dots are not a guess
    with pytest.warns(RuntimeWarning, match="never measured"):
        assert kernel_accumulator(interpreting=False, capability=cap)["float16"] == H200


def test_the_kernel_declares_the_interpreter_or_the_measured_model():
    assert kernel_accumulator(interpreting=True) == {"float16": "fp32", "bfloat16": "fp32", "float32": "fp32"}
    assert kernel_accumulator(interpreting=False, capability=(9, 0)) == {"float16": H200, "bfloat16": H200,
                                                                         "float32": "fp32"}
    assert backend_accumulator(("float16", "float32", "float64"), cuda=True, capability=(9, 0)) == {
        "float16": H200, "float32": "fp32", "float64": "fp64"}
    assert backend_accumulator(("float32", "float64"), cuda=False) == {"float32": "fp32", "float64": "fp64"}


def test_the_compiled_kernel_target_declares_the_device_model(monkeypatch):
    """default_target() as it is built on an SM90 GPU (the interpreter flag and the capability faked)."""
    import torch

    from flashproof import kernels
    from flashproof.properties.builtin_targets import default_target

    monkeypatch.setattr(kernels.runtime, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    t = default_target()
    assert t.devices == ("cuda",)
    assert t.accumulator == {"float16": H200, "bfloat16": H200, "float32": "fp32"}
    assert t.accumulator_for(torch.float16) == H200
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    with pytest.warns(RuntimeWarning, match="8.6 was never measured"):
        default_target()


# ------------------------------------------------------------------ Target's validation
def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return q


@pytest.mark.parametrize("acc_, err, match", [
    ("fp32_blockfma_k0_x2_rz", ValueError, "accumulator"),
    ("fp16", ValueError, "accumulator"),
    ({"float16": H200}, ValueError, r"no model for the declared dtypes \['bfloat16', 'float32'\]"),
    ({"float17": "fp32", "float16": "fp32", "bfloat16": "fp32", "float32": "fp32"}, ValueError, "float17"),
    ({"float16": 3, "bfloat16": "fp32", "float32": "fp32"}, TypeError, "name"),
    (3, TypeError, "accumulator"),
])
def test_target_rejects_bad_accumulators(acc_, err, match):
    with pytest.raises(err, match=match):
        Target(name="x", sdpa=_sdpa, accumulator=acc_)


def test_target_accepts_every_name_proofs_accepts_and_per_dtype_tables():
    import torch

    for name in ("fp32", "fp32_rz", "same", "fp64", H200, acc.block_fma_name(8, 0, "rn")):
        assert Target(name="x", sdpa=_sdpa, accumulator=name).accumulator_for("float16") == name
    t = Target(name="x", sdpa=_sdpa, accumulator={torch.float16: H200, "bf16": H200, "float32": "fp32"})
    assert t.accumulator == {"float16": H200, "bfloat16": H200, "float32": "fp32"}
    assert t.accumulator_for(torch.float32) == "fp32" and t.accumulator_for("float16") == H200
    with pytest.raises(ValueError, match="float64"):  # a block unit models fp32 accumulation only
        Target(name="x", sdpa=_sdpa, dtypes=("float32", "float64"), accumulator=H200)
    Target(name="x", sdpa=_sdpa, dtypes=("float32", "float64"), accumulator={"float32": H200, "float64": "fp64"})


def test_the_judge_uses_the_model_declared_for_the_dtype():
    t = Target(name="x", sdpa=_sdpa, accumulator={"float16": H200, "bfloat16": "fp32", "float32": "fp32"})
    ctx = make_context(t, "ci")
    base = make_context(Target(name="y", sdpa=_sdpa), "ci")
    for dt, block in (("float16", True), ("bfloat16", False)):
        inp = build(Problem(shape=Shape(1, 1, 1, 4, 40, 64, 64), dtype=dt, seed=1))
        same = [np.array_equal(a, b) for a, b in zip(ctx.bound(inp), base.bound(inp))]
        assert same == ([False, False] if block else [True, True])
        assert ctx.precision(inp).k_mma == (16 if block else 1)


# ------------------------------------------------------------------ the one probe, under the interpreter
def test_the_probe_identifies_the_interpreter_consistently(tmp_path):
    """benchmarks/accumulation_probe.py on the CPU at K = 16: the interpreter's tl.dot is numpy's fp32
    matmul plus an fp32 add, one behaviour for every dtype and form: the crafted experiments leave the
    same models everywhere, the random battery matches no block model, every result is within the IEEE
    any-order bound, and the probe declares "fp32" -- what flashproof's kernel declares there."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    probe = _probe_module()
    assert probe.main(["--out", str(tmp_path), "--K", "16"]) == 0
    with open(tmp_path / "accumulation.json") as f:
        rec = json.load(f)
    assert not any("error" in r for r in rec["results"])
    models = {tuple(r["models"]) for r in rec["results"]}
    assert len(models) == 1 and next(iter(models)), models
    assert "k=16 x=2 rz" not in next(iter(models))  # the H200's truncating unit is told apart
    assert all(r["ieee_ratio"] <= 1 for r in rec["results"])
    for key, bat in rec["battery"].items():
        for length, b in bat.items():
            assert b["consistent"] == [] and b["ieee_ratio"] <= 1, (key, length)
    declared = kernel_accumulator(interpreting=True)
    assert rec["declare"] == {"float16": "fp32", "bfloat16": "fp32", "float32": "fp32", "float32/tf32": "fp32"}
    assert all(rec["declare"][d] == declared[d] for d in declared)
    with open(tmp_path / "accumulation.md") as f:
        assert f.read() == probe.render(rec)


def test_oracle_has_one_bound_source():
    assert oracle.bound_source() == "proofs"
    import flashproof.properties as P

    assert not os.path.exists(os.path.join(os.path.dirname(P.__file__), "provisional_bound.py"))

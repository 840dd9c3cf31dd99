"""proofs/golden/fp_error.json and proofs/bounds_gen.py are exactly what the SymPy derivation
produces today (re-derived here), and the generated numpy code evaluates those expressions."""
import json
import random

import numpy as np
import pytest

from flashproof.proofs import bounds, fp_error


@pytest.fixture(scope="module")
def fresh():
    proof, counts, exprs = fp_error.derive()
    assert proof.ok, [c.name for c in proof.checks if not c.ok]
    return fp_error.golden_dict(counts, exprs)


def test_golden_expressions_match_rederivation(fresh):
    golden = json.loads(fp_error.GOLDEN_PATH.read_text())
    for section in ("expressions", "first_order", "linear", "counts", "args"):
        diff = {k for k in set(golden[section]) | set(fresh[section])
                if golden[section].get(k) != fresh[section].get(k)}
        assert not diff, f"golden {section} differ from the derivation for {sorted(diff)}; regenerate " \
                         f"with `python -m flashproof.proofs.fp_error --write-golden` and review"


def test_generated_module_matches(fresh):
    assert fp_error.GENERATED_PATH.read_text() == fp_error.generated_source(fresh)


def test_generated_code_evaluates_the_golden_expressions():
    lam, tanh_extra = bounds._lambdify_golden()
    gen = bounds._FN
    assert tanh_extra == bounds._TANH_EXTRA == 3.0  # derived c_tanh = c_exp + 3
    rng = random.Random(0)
    for name, args in json.loads(fp_error.GOLDEN_PATH.read_text())["args"].items():
        for _ in range(5):
            vals = []
            for a in args:
                if a in ("u_in", "u_acc", "u_dot", "u_mma"):
                    vals.append(2.0 ** -rng.randint(10, 30))
                elif a == "k_mma":
                    vals.append(float(rng.randint(1, 16)))
                elif a in ("eta", "eta_in"):
                    vals.append(2.0 ** -rng.randint(20, 130))
                elif a in ("h", "hb", "hs"):
                    vals.append(float(rng.randint(0, 1)))
                elif a in ("E", "n", "N", "L"):
                    vals.append(float(rng.randint(1, 300)))
                elif a in ("K", "Sd", "Sn", "Kmax", "Sdmax", "Snmax", "beta", "SBl", "ED", "rho", "Delta", "Dmax"):
                    vals.append(rng.uniform(0, 0.01))
                else:
                    vals.append(rng.uniform(0, 5))
            with np.errstate(all="ignore"):  # random arguments may leave an expression's domain (NaN both sides)
                a_, b_ = lam[name](*vals), gen[name](*vals)
            assert np.isclose(a_, b_, rtol=1e-12, atol=0, equal_nan=True), (name, vals, a_, b_)


def test_first_order_apriori_has_the_expected_storage_term():
    # P rounded before P@V (u_in weighted |v|) + the output store (u_in |o|): 2 u_in max|v|
    import sympy as sp
    fo = sp.sympify(json.loads(fp_error.GOLDEN_PATH.read_text())["first_order"]["o_apriori"],
                    locals=fp_error.SYMBOLS)  # E and N are symbols here, not Euler's number / sympy.N
    u_in, V = fp_error.SYMBOLS["u_in"], fp_error.SYMBOLS["V"]
    assert sp.expand(fo).coeff(u_in) == 2 * V


def test_backward_golden_and_generated_module_match_rederivation():
    from flashproof.proofs import fp_backward
    from flashproof.proofs.golden_paths import BACKWARD_GENERATED_PATH, BACKWARD_GOLDEN_PATH
    proof, counts, exprs = fp_backward.derive()
    assert proof.ok, [c.name for c in proof.checks if not c.ok]
    fresh = fp_backward.golden_dict(counts, exprs)
    golden = json.loads(BACKWARD_GOLDEN_PATH.read_text())
    for section in ("expressions", "counts", "args"):
        assert golden[section] == fresh[section], f"golden {section} differ: regenerate with " \
                                                  "`python -m flashproof.proofs.fp_backward --write-golden`"
    assert BACKWARD_GENERATED_PATH.read_text() == fp_backward._source(fresh)


def test_first_order_forms_are_those_of_the_expressions(fresh):
    """prove() takes the report's first-order forms from the golden file once its expressions match:
    they must be exactly the first-order parts of those expressions."""
    golden = json.loads(fp_error.GOLDEN_PATH.read_text())
    assert golden["first_order"] == fresh["first_order"]

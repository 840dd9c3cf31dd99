"""`flashproof check` and `flashproof audit` judge one kernel on one case the same way: same
verdict, same bound, same worst error (issue 16). One case is the Triton interpreter's truncating
bf16 (docs/findings.md F1), where a bound that ignored the target's round_toward_zero (the old
audit's own ``_bound``) would fail a kernel that check passes."""
import numpy as np
import pytest

from flashproof import audit
from flashproof.audit_cells import Cell
from flashproof.properties import oracle, replay
from flashproof.properties.context import Context
from flashproof.properties.cases import Case, MaskSpec, Problem, Shape


@pytest.fixture
def judged(monkeypatch):
    """Every Context.judge call: (inputs, o, lse, (o_bound, lse_bound), exact, raised)."""
    calls = []
    original = Context.judge

    def spy(self, inp, o, lse, **kw):
        rec = dict(inp=inp, o=oracle.to_np(o), bounds=kw.get("bounds"), ex=kw.get("ex"), raised=None)
        calls.append(rec)
        try:
            out = original(self, inp, o, lse, **kw)
        except oracle.Violation as exc:
            rec["raised"] = exc
            raise
        rec["ex"], rec["bounds"] = out
        return out
    monkeypatch.setattr(Context, "judge", spy)
    return calls


def _default():
    from flashproof.properties.builtin_targets import default_target

    return default_target()


def _truncating():
    import audit_targets

    from flashproof.kernels import runtime

    if not runtime.interpreting():
        pytest.skip("the truncating bf16 cast is the Triton interpreter's (docs/findings.md F1); compiled here")
    return audit_targets.truncating_kernel()


def _shifted():
    """torch's SDPA plus 1e-3 on every output: outside the fp32 bound, a violation for both."""
    import torch

    from flashproof.properties.targets import from_sdpa

    def fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                                                is_causal=is_causal, scale=scale) + 1e-3
    return from_sdpa(fn, name="shifted", backward=False)


CASES = {
    "kernel-fp16-tiles": (_default, Case(Problem(shape=Shape(1, 2, 2, 45, 45, 40, 40), dtype="float16",
                                                 mask=MaskSpec(causal="top_left"), seed=7),
                                         tile=dict(block_m=16, block_n=16, num_warps=4, num_stages=2))),
    "interpreter-truncating-bf16": (_truncating, Case(Problem(shape=Shape(1, 2, 2, 64, 64, 64, 64), dtype="bfloat16",
                                                              mask=MaskSpec(causal="top_left"), seed=1))),
    "violating-fp32": (_shifted, Case(Problem(shape=Shape(1, 2, 2, 20, 20, 16, 16), dtype="float32", seed=3))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_check_and_audit_agree(name, judged):
    """check (replay of output_within_error_bound, what `flashproof check` runs per example) and the
    audit (one cell of the same case) give the same verdict, judge against the same bound arrays
    and the same exact values, and the audit reports the error check saw."""
    make, case = CASES[name]
    target = make()
    try:
        replay(audit.PROPERTY, case, target=target)
        check_ok = True
    except oracle.Violation:
        check_ok = False
    assert len(judged) == 1
    seen = judged[0]
    rep = audit.audit([audit.Audited(target, "target", "t")], cells=[Cell("L", case.problem.shape.lq, case)],
                      progress=False)
    assert len(judged) == 2
    mine = judged[1]
    rows = [r for r in rep["cells"] if r["label"] == "t"]
    assert len(rows) == 1 and rows[0]["status"] == "judged", rows
    row = rows[0]
    assert (row["violation"] is None) == check_ok, (row["violation"], check_ok)
    assert (rep["violations"] == []) == check_ok
    np.testing.assert_array_equal(mine["bounds"][0], seen["bounds"][0])
    np.testing.assert_array_equal(mine["bounds"][1], seen["bounds"][1])
    np.testing.assert_array_equal(mine["ex"].o, seen["ex"].o)
    np.testing.assert_array_equal(mine["o"], seen["o"])
    err = np.abs(seen["o"] - seen["ex"].o)
    m = row["metrics"]
    assert m["max_abs"] == float(err.max())
    tol = seen["bounds"][0] + seen["ex"].o_rad
    assert m["bound_max"] == float(tol.max())
    assert m["tightness"] == float((err / tol).max())
    assert (m["above_bound"] == 0) == bool((err <= tol).all())
    if name == "violating-fp32":
        assert not check_ok and m["above_bound"] > 0


def test_truncating_case_needs_the_targets_round_toward_zero():
    """The bf16 case above discriminates: the kernel truncates (its Target says so), it passes the
    bound at the doubled unit roundoff that round_toward_zero declares, and it breaks the
    round-to-nearest bound that the old audit's own _bound used, so a judge ignoring the
    declaration would call FAIL where check says PASS."""
    from flashproof.properties.gen import judge_case
    from flashproof.properties.inputs import build

    target = _truncating()
    assert target.round_toward_zero == ("bfloat16",)
    case = CASES["interpreter-truncating-bf16"][1]
    ctx = audit._context(target, "ci", "cpu")
    j = judge_case(ctx, case)
    assert j.violation is None
    nearest, _ = oracle.bound(build(case.problem), accumulator=target.accumulator_for(case.problem.dtype), toward_zero=False)
    err = np.abs(j.o - j.exact.o)
    assert (err > nearest + j.exact.o_rad).any(), "the case does not tell the two bounds apart"

"""Target domain declarations (properties/targets.py: causal_equal_lengths, min_lq/min_lk, accepts):
the suite stays inside a declared domain, and a refusal inside it fails with a hint to declare it.

The fakes wrap torch's CPU SDPA and raise "No available kernel" the way torch's flash and cuDNN
backends do on the GPU (torch/sdp_utils: non-square is_causal; head dims not multiple of 8; Lk = 1).
"""
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from flashproof.properties import gen, replay, run_suite
from flashproof.properties.cases import Case, MaskSpec, Problem, Shape
from flashproof.properties.context import make_context
from flashproof.properties.inputs import build
from flashproof.properties.outcomes import FAILED, NOT_APPLICABLE
from flashproof.properties.registry import CouldNotRun
from flashproof.properties.targets import (DECLARE_HINT, TORCH_CPU_DEVIATIONS, Call, OutsideDomain, Target,
                                           from_sdpa)

F = torch.nn.functional


def _flash_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if is_causal and query.shape[-2] != key.shape[-2]:
        raise RuntimeError("No available kernel. Aborting execution. (is_causal with seqlen_q != seqlen_k)")
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


def _cudnn_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if query.shape[-1] % 8 or value.shape[-1] % 8 or key.shape[-2] < 2:
        raise RuntimeError("No available kernel. Aborting execution. (head dim % 8, or Lk = 1)")
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


def _target(fn, **declared):
    t = from_sdpa(fn, name=fn.__name__, backward=True, known_deviations=TORCH_CPU_DEVIATIONS)
    return dataclasses.replace(t, **declared)


def _cudnn_accepts(call):
    if call.e % 8 or call.ev % 8:
        return f"head dims must be multiples of 8 (E={call.e}, Ev={call.ev})"
    return None


# ------------------------------------------------------------------ the declaration's logic
def test_refusal_names_each_declared_limit():
    t = Target(name="t", sdpa=_flash_like, causal_equal_lengths=True, min_lk=2, head_dims=(16, 32), value_dim=False,
               accepts=lambda c: "no batch 3" if c.batch == 3 else True)
    ok = Call(dtype="float16", lq=5, lk=5, e=16, ev=16, causal="top_left")
    assert t.refusal(ok) is None and t.in_domain(ok)
    cases = {
        "causal_equal_lengths": dataclasses.replace(ok, lk=6),
        "min_lk=2": dataclasses.replace(ok, lk=1, lq=1),
        "head_dims": dataclasses.replace(ok, e=24, ev=24),
        "value_dim=False": dataclasses.replace(ok, ev=32),
        "no batch 3": dataclasses.replace(ok, batch=3),
        "float64": dataclasses.replace(ok, dtype="float64"),
        "no GQA": dataclasses.replace(ok, heads=2, kv_heads=1),
        "top-left causal only": dataclasses.replace(ok, causal="bottom_right"),
        "no window": dataclasses.replace(ok, window=(2, 0)),
    }
    for word, call in cases.items():
        why = t.refusal(call)
        assert why is not None and word.split()[-1] in why, (word, why)
    # non-causal unequal lengths are fine for a causal_equal_lengths target
    assert t.refusal(dataclasses.replace(ok, causal=False, lk=9)) is None


def test_accepts_false_and_bad_verdicts():
    t = Target(name="t", sdpa=_flash_like, accepts=lambda c: c.lk != 7)
    assert "accepts()" in t.refusal(Call(dtype="float16", lk=7))
    assert t.refusal(Call(dtype="float16", lk=6)) is None
    bad = Target(name="t", sdpa=_flash_like, accepts=lambda c: 3)
    with pytest.raises(TypeError, match="accepts"):
        bad.refusal(Call(dtype="float16"))


@pytest.mark.parametrize("kw, exc, word", [
    (dict(min_lq=-1), ValueError, "min_lq"),
    (dict(min_lk=1.5), ValueError, "min_lk"),
    (dict(accepts=3), TypeError, "accepts"),
    (dict(causal_equal_lengths="yes"), TypeError, "causal_equal_lengths"),
])
def test_domain_fields_are_validated(kw, exc, word):
    with pytest.raises(exc, match=word):
        Target(name="t", sdpa=_flash_like, **kw)


def test_call_of_problem_equals_call_of_its_tensors():
    pr = Problem(shape=Shape(2, 4, 2, 5, 9, 24, 16), dtype="bfloat16",
                 mask=MaskSpec(causal="bottom_right", window=(3, 0), attn_mask="additive", density=0.5),
                 softcap=30.0, scale=0.5)
    inp = build(pr)
    a = Call.of_problem(pr)
    b = Call.of_tensors(inp.q, inp.k, inp.v, **inp.opts())
    assert a == b
    assert Call.of_tensors(inp.q, inp.k, inp.v, causal=True).causal == "top_left"
    assert Call.of_tensors(inp.q, inp.k, inp.v, window=(-1, -1), softcap=float("inf")).window is None
    with pytest.raises(ValueError, match="causal"):
        Call(dtype="float16", causal="diagonal")


def test_target_call_outside_the_domain_raises_before_the_kernel():
    calls = []

    def spy(query, key, value, **kw):
        calls.append(1)
        return _flash_like(query, key, value, **kw)
    t = Target(name="spy", sdpa=spy, causal_equal_lengths=True)
    q, k, v = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
    with pytest.raises(OutsideDomain, match="causal_equal_lengths"):
        t(q, k, v, causal=True)
    assert not calls
    t(q, k, v)  # non-causal unequal lengths: in the domain
    assert calls


# ------------------------------------------------------------------ generation respects it
def test_strategies_generate_inside_the_domain():
    t = _target(_cudnn_like, causal_equal_lengths=True, min_lk=2, accepts=_cudnn_accepts)
    ctx = make_context(t, "ci")
    seen = {"causal": 0}

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(gen.case_strategy(ctx))
    def check(case):
        p = case.problem
        assert t.refusal(Call.of_problem(p)) is None
        if p.mask.causal:
            seen["causal"] += 1
            assert p.shape.lq == p.shape.lk
        assert p.shape.lk >= 2 and p.shape.e % 8 == 0
    check()
    assert seen["causal"] > 0  # constrained, not filtered away


def test_corners_are_conformed():
    t = _target(_flash_like, causal_equal_lengths=True)
    ctx = make_context(t, "ci")
    c = gen.corner(ctx, shape=Shape(1, 1, 1, 9, 35, 16, 16), mask=MaskSpec(causal="top_left"))
    assert c.problem.shape.lq == c.problem.shape.lk == 9


# ------------------------------------------------------------------ the suite, end to end
def test_flash_like_target_passes_once_it_declares_causal_equal_lengths():
    t = _target(_flash_like, causal_equal_lengths=True)
    res = run_suite(t, profile="ci")
    assert res.ok, res.details()
    assert res["causal_alignment_on_unequal_lengths"].status == NOT_APPLICABLE
    assert "causal_equal_lengths" in res["causal_alignment_on_unequal_lengths"].message
    assert res["output_within_error_bound"].examples > 0


def test_flash_like_target_fails_with_the_hint_when_it_does_not_declare():
    t = _target(_flash_like)
    res = run_suite(t, profile="ci", select=["output_within_error_bound", "causal_alignment_on_unequal_lengths"])
    assert all(o.status == FAILED for o in res.outcomes), res.table()
    for o in res.outcomes:
        assert "No available kernel" in o.message and DECLARE_HINT in o.message


def test_cudnn_like_target_passes_with_an_accepts_predicate():
    t = _target(_cudnn_like, min_lk=2, accepts=_cudnn_accepts)
    res = run_suite(t, profile="ci", select=["output_within_error_bound", "tail_tiles_every_residue",
                                             "head_dim_zero_padding_invariant", "gradients_match_reference",
                                             "single_key_with_sentinel_logit", "attended_set_exact"])
    assert res.ok, res.details()
    undeclared = _target(_cudnn_like)
    res = run_suite(undeclared, profile="ci", select=["output_within_error_bound"])
    assert res["output_within_error_bound"].status == FAILED
    assert DECLARE_HINT in res["output_within_error_bound"].message


def test_replay_of_an_undeclared_case_says_why():
    t = _target(_flash_like, causal_equal_lengths=True)
    case = Case(problem=Problem(shape=Shape(1, 1, 1, 3, 7, 16, 16), mask=MaskSpec(causal="top_left")))
    with pytest.raises(CouldNotRun, match="outside .*declared domain.*causal_equal_lengths"):
        replay("output_within_error_bound", case, target=t)

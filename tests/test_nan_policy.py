"""The declared NaN policy (Target.nan_policy; properties/props_nan.py; spec/README.md "NaN and inf
policy"): what each kind of target declares by default, that the report names the policy judged,
that each policy's properties run and the other's are "not declared", that a correct naive
attention (tests/fakes/myattn.py) passes the whole ci suite as a plain SDPA callable, and that the
"ieee" properties still catch what "ieee" does not allow: a NaN crossing batch elements or heads, a
masked P that is not an exact 0 (finite garbage changes the output), a NaN in an allowed q that is
swallowed. Planted bugs are plain SDPA callables built on the naive fixture.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fakes import attention_apis as fakes
from fakes.myattn import attention as naive
from flashproof.cli import main
from flashproof.properties import PROPERTIES, run_suite
from flashproof.properties.adapters import blhd, fla_style, flash_attn_style
from flashproof.properties.builtin_targets import tiled_peer
from flashproof.properties.loading import load_target
from flashproof.properties.outcomes import FAILED, NOT_DECLARED, PASSED, XFAIL
from flashproof.properties.props_nan import IEEE_HINT
from flashproof.properties.suite import run_property
from flashproof.properties.targets import NAN_POLICIES, Target, from_sdpa

STRICT = ("garbage_in_masked_keys_isolated", "nan_propagates_only_to_attending_rows")
IEEE = ("garbage_in_masked_keys_ieee", "nan_propagates_ieee")


# ============================================================================ declarations
def test_defaults_follow_what_each_kind_of_target_computes():
    assert NAN_POLICIES == ("strict", "ieee")
    assert from_sdpa(naive).nan_policy == "ieee" and not from_sdpa(naive).batch_invariant
    assert load_target("torch.nn.functional:scaled_dot_product_attention").nan_policy == "ieee"
    assert flash_attn_style(fakes.flash_attn_func).nan_policy == "ieee"
    assert fla_style(fakes.parallel_attn).nan_policy == "ieee" and blhd(fakes.sdpa_blhd).nan_policy == "ieee"
    assert flash_attn_style(fakes.flash_attn_func, nan_policy="strict").nan_policy == "strict"
    assert tiled_peer().nan_policy == "strict" and tiled_peer().batch_invariant
    assert Target(name="t", sdpa=naive).nan_policy == "strict"  # a hand-written Target: spec's own unless declared
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        from_sdpa(naive, nan_policy="IEEE")


def test_the_default_kernel_declares_strict():
    from flashproof.properties.builtin_targets import default_target

    t = default_target()
    assert t.nan_policy == "strict" and t.batch_invariant


@pytest.mark.parametrize("policy", NAN_POLICIES)
def test_each_policy_runs_its_properties_and_reports_the_others_not_declared(policy):
    t = from_sdpa(naive, name=f"naive_{policy}", nan_policy=policy)
    res = run_suite(t, profile="ci", select=list(STRICT + IEEE))
    mine, other = (STRICT, IEEE) if policy == "strict" else (IEEE, STRICT)
    for name in other:
        assert res[name].status == NOT_DECLARED and f"nan_policy={policy!r}" in res[name].message, res[name]
    for name in mine:
        assert res[name].status in (PASSED, FAILED), res[name]
    assert f"nan_policy {policy}" in res.table()


def test_check_names_the_policy_in_its_header_and_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["check", "fakes.myattn:attention", "--select", "nan_propagates_*", "--quiet", "--json", str(out),
                 "--state-dir", str(tmp_path / "state")])
    assert code == 0
    assert "judged by nan_policy 'ieee'" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["nan_policy"] == "ieee" and doc["domain"]["nan_policy"] == "ieee"
    assert {o["name"]: o["status"] for o in doc["outcomes"]} == {"nan_propagates_only_to_attending_rows": NOT_DECLARED,
                                                                  "nan_propagates_ieee": PASSED}


# ============================================================================ a correct naive attention
def test_a_correct_naive_attention_passes_the_whole_ci_suite():
    """softmax(masked_fill(s, -inf)) @ V, fp32, a row with no key set to 0: judged as a plain SDPA callable
    ("ieee", no batch-invariance claim): every declared property passes, 0 failed, 0 errors."""
    res = run_suite("fakes.myattn:attention", profile="ci")
    bad = res.failures + res.errors
    assert not bad, "\n\n".join(f"{o.name} {o.status}: {o.message}\n{o.reproducer}" for o in bad)
    assert res.nan_policy == "ieee" and res["garbage_in_masked_keys_ieee"].status == PASSED
    assert res["nan_propagates_ieee"].status == PASSED and res["fully_masked_rows_zero_and_neg_inf"].status == PASSED


def test_the_naive_attention_is_not_strict_and_the_message_says_how_to_declare_it():
    t = from_sdpa(naive, name="naive_declared_strict", nan_policy="strict")
    out = run_property(PROPERTIES["garbage_in_masked_keys_isolated"], t, profile="ci")
    assert out.status == FAILED and IEEE_HINT in out.message, out.message


def test_torch_cpu_sdpa_under_ieee():
    """torch's CPU SDPA multiplies masked P = 0 by V (allowed by "ieee"), and returns 0 for a row whose q
    holds a NaN although it attends keys (not allowed by either policy: an XFAIL with its reason)."""
    res = run_suite("torch.nn.functional:scaled_dot_product_attention", profile="ci", select=list(IEEE))
    assert res["garbage_in_masked_keys_ieee"].status == PASSED, res["garbage_in_masked_keys_ieee"].message
    o = res["nan_propagates_ieee"]
    assert o.status == XFAIL and "must be NaN" in o.message and "returns 0 (not NaN)" in o.message, o.message


# ============================================================================ what "ieee" still catches
def leaks_across_the_batch(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                           enable_gqa=False):
    """A planted bug: a NaN/inf anywhere in K or V reaches every batch element and head (a reduction over
    the whole tensor, as a norm or a finiteness guard computed globally)."""
    o = naive(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return o + (key.float().sum() + value.float().sum()).to(o.dtype) * 0


def masked_p_not_zero(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False):
    """A planted bug: masked keys get the finite logit -80 (P = e^-80 relative, not 0): with 1e30 in a masked
    value, 0 x 1e30 is no longer 0."""
    k, v = key.float(), value.float()
    if enable_gqa and key.shape[1] != query.shape[1]:
        k, v = (x.repeat_interleave(query.shape[1] // key.shape[1], dim=1) for x in (k, v))
    s = query.float() @ k.transpose(-1, -2) * (scale if scale is not None else query.shape[-1] ** -0.5)
    allowed = torch.ones(s.shape[-2:], dtype=torch.bool)
    if is_causal:
        allowed = allowed.tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            s = s + attn_mask.float().clamp(min=-1e4)
            allowed = allowed & ~torch.isneginf(attn_mask)
    allowed = allowed.expand(s.shape)
    s = torch.where(allowed, s, s.amax(-1, keepdim=True) - 80.0)
    p = torch.where(allowed.any(-1, keepdim=True), s.softmax(-1), torch.zeros_like(s))
    return (p @ v).to(query.dtype)


def swallows_nan_queries(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):
    """A planted bug: a row whose q holds a NaN returns 0 (NaN logits skipped), as torch's CPU SDPA does."""
    bad = torch.isnan(query).any(dim=-1, keepdim=True)
    o = naive(torch.where(torch.isnan(query), torch.zeros_like(query), query), key, value, attn_mask, dropout_p,
              is_causal, scale, enable_gqa)
    return torch.where(bad, torch.zeros_like(o), o)


@pytest.mark.parametrize("bug, prop, why", [
    (leaks_across_the_batch, "garbage_in_masked_keys_ieee", "NaN allowed only in that slice's rows"),
    (leaks_across_the_batch, "nan_propagates_ieee", "NaN allowed only in its own batch element"),
    (masked_p_not_zero, "garbage_in_masked_keys_ieee", "finite garbage: 0 x it is 0, nothing may change"),
    (swallows_nan_queries, "nan_propagates_ieee", "rows that attend a NaN (q) must be NaN"),
], ids=lambda x: getattr(x, "__name__", "")[:30])
def test_ieee_properties_still_catch_what_ieee_does_not_allow(bug, prop, why):
    t = from_sdpa(bug, name=bug.__name__, spec=f"{__name__}:{bug.__name__}", backward=False)
    out = run_property(PROPERTIES[prop], t, profile="ci")
    assert out.status == FAILED and why in out.message, (bug.__name__, prop, out.status, out.message)
    assert "replay(" in out.reproducer


def test_the_correct_naive_attention_passes_what_the_planted_bugs_fail():
    t = from_sdpa(naive, name="naive", backward=False)
    for prop in IEEE:
        out = run_property(PROPERTIES[prop], t, profile="ci")
        assert out.status == PASSED, (prop, out.message)


def test_strict_implies_ieee():
    """A strict kernel (the tiled peer) passes the "ieee" properties too when it declares "ieee"."""
    t = dataclasses.replace(tiled_peer(), nan_policy="ieee", name="tiled_peer_as_ieee")
    res = run_suite(t, profile="ci", select=list(IEEE))
    assert [o.status for o in res.outcomes] == [PASSED, PASSED], res.details()

"""properties/adapters.py against in-repo fakes with the exact signatures of the real APIs
(tests/fakes/attention_apis.py): the detection rule, what each adapter declares, the translation
of spec's options (bitwise against the fakes' own engine), the refusals, and the ci property suite.

Suite runs: the correct fakes pass the whole ci suite (0 failed, 0 errors; the fla-style fake,
causal only with one length, reports what needs other calls as "not applicable"); planted
deviations (top-left causal, a log2 LSE) fail the property that names them.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from fakes import attention_apis as fakes
from flashproof.properties import adapters
from flashproof.properties.adapters import blhd, detect, fla_style, flash_attn_style, get_adapter, with_adapter
from flashproof.properties.peers import tiled_attention
from flashproof.properties.outcomes import NOT_APPLICABLE
from flashproof.properties.suite import ERROR, FAILED, PASSED, replay, run_suite
from flashproof.properties.loading import load_target
from flashproof.properties.targets import OutsideDomain, Target, TargetLoadError

MOD = "fakes.attention_apis"


def _qkv(b=1, h=2, hkv=1, lq=5, lk=9, e=16, ev=None, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda n, hh, d: torch.randn(b, hh, n, d, generator=g).to(dtype)  # noqa: E731
    return mk(lq, h, e), mk(lk, hkv, e), mk(lk, hkv, e if ev is None else ev)


# ============================================================================ detection
def _qkvpacked(qkv, dropout_p=0.0, softmax_scale=None, causal=False):
    raise AssertionError("never called")


def _varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0, softmax_scale=None,
            causal=False):
    raise AssertionError("never called")


def _sdpa_py(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    raise AssertionError("never called")


def _flash_with_mask(q, k, v, attn_mask=None, softmax_scale=None, causal=False):
    raise AssertionError("never called")


def _kwargs_only(q, k, v, **kwargs):
    raise AssertionError("never called")


@pytest.mark.parametrize("fn, want", [
    (fakes.flash_attn_func, "flash_attn"), (fakes.flash_attn3_func, "flash_attn"),
    (fakes.flash_attn3_always_lse, "flash_attn"), (fakes.parallel_attn, "fla"),
    (torch.nn.functional.scaled_dot_product_attention, None), (_sdpa_py, None), (fakes.sdpa_blhd, None),
    (_qkvpacked, None), (_varlen, None), (_flash_with_mask, None), (_kwargs_only, None),
], ids=lambda x: getattr(x, "__name__", str(x)))
def test_detection_rule(fn, want):
    assert detect(fn) == want


def test_load_target_applies_the_detected_adapter():
    t = load_target(f"{MOD}:flash_attn_func")
    assert t.alignments == ("bottom_right",) and t.lse and t.window and t.softcap and t.gqa and t.backward
    assert t.spec == f"{MOD}:flash_attn_func" and "flash_attn_style" in t.description
    assert t.dtypes == ("float16", "bfloat16") and not t.attn_mask and not t.value_dim
    f = load_target(f"{MOD}:parallel_attn")
    assert f.causal_only and f.equal_lengths and f.alignments == ("top_left",) and f.window and f.backward
    assert not (f.lse or f.softcap or f.attn_mask)
    s = load_target(f"{MOD}:sdpa_blhd")  # an SDPA signature: no layout in it, so plain SDPA unless named
    assert s.description == "plain SDPA callable"


def test_lse_is_detected_from_the_returned_type():
    assert load_target(f"{MOD}:flash_attn3_always_lse").lse  # no flag: (out, lse) always
    assert load_target(f"{MOD}:flash_attn3_func").lse  # (out, lse) with return_attn_probs
    assert not load_target(f"{MOD}:flash_attn_func_lse_none").lse  # (out, None, None), as flash-attn-triton
    with pytest.raises(TargetLoadError, match="returned dict; this adapter knows out"):
        load_target(f"{MOD}:flash_attn_func_dict")


# ============================================================================ naming adapters
def test_named_adapter_round_trips_through_the_spec():
    t = load_target(f"{MOD}:sdpa_blhd@blhd")
    assert t.spec == f"{MOD}:sdpa_blhd@blhd" and t.attn_mask and t.gqa and "blhd" in t.description
    assert load_target(f"{MOD}:sdpa_blhd", adapter="blhd").spec == t.spec
    assert with_adapter(f"{MOD}:sdpa_blhd", "blhd") == t.spec
    assert with_adapter("a:b", None) == "a:b"


@pytest.mark.parametrize("call, word", [
    (lambda: load_target(f"{MOD}:flash_attn_func@bogus"), "unknown adapter 'bogus'; known adapters: flash_attn, fla"),
    (lambda: get_adapter("bogus"), "known adapters: flash_attn, fla, blhd, sdpa"),
    (lambda: with_adapter(None, "flash_attn"), "needs a target module:attr"),
    (lambda: with_adapter("a:b", "nope"), "unknown adapter 'nope'"),
    (lambda: load_target(None, adapter="blhd"), "needs a target module:attr"),
    (lambda: load_target(f"{MOD}:sdpa_blhd@blhd", adapter="fla"), "names adapter 'blhd'"),
    (lambda: load_target("flashproof.properties.targets:tiled_peer@flash_attn"), "applies to a kernel function"),
])
def test_adapter_errors_are_clear(call, word):
    with pytest.raises(TargetLoadError, match=word):
        call()


def test_unknown_declaration_is_a_type_error():
    with pytest.raises(TypeError, match="unknown or adapter-set declaration"):
        flash_attn_style(fakes.flash_attn_func, windoww=True)
    with pytest.raises(TypeError, match="unknown or adapter-set declaration"):
        fla_style(fakes.parallel_attn, alignments=("bottom_right",))


def test_every_adapter_is_documented_and_keyword_only():
    for name, fn in adapters.ADAPTERS.items():
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].kind == params[0].POSITIONAL_OR_KEYWORD and fn.__doc__, name
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[1:]), name


# ============================================================================ translation
_FLASH = [f"{MOD}:flash_attn_func", f"{MOD}:flash_attn3_func", f"{MOD}:flash_attn3_always_lse"]
_OPTS = [
    dict(lq=5, lk=9, causal="bottom_right"),
    dict(lq=9, lk=4, causal="bottom_right"),  # rows 0-4 have no key: O = 0, LSE -inf (the kernel gives +inf)
    dict(lq=7, lk=7, window=(2, 1)),
    dict(lq=6, lk=11, causal="bottom_right", window=(3, 0)),
    dict(lq=9, lk=6, causal="bottom_right", window=(1, 5)),  # right capped at 0 under causal
    dict(lq=5, lk=9, softcap=2.0, scale=0.3),
    dict(lq=4, lk=4, causal="bottom_right", window=(0, 0)),
]


@pytest.mark.parametrize("spec", _FLASH)
@pytest.mark.parametrize("opts", _OPTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_flash_translation_is_bitwise_the_engines(spec, opts):
    """The adapter's call equals the fake's engine (tiled_attention on (B, H, L, D)) run with spec's
    options bitwise: the layout, the alignment, the window, the softcap, the scale and the LSE
    (with the empty-row +inf mapped to -inf) are translated exactly."""
    opts = dict(opts)
    q, k, v = _qkv(lq=opts.pop("lq"), lk=opts.pop("lk"))
    t = load_target(spec)
    o, lse = t(q, k, v, return_lse=True, **opts)
    ro, rl = tiled_attention(q, k, v, return_lse=True, **opts)
    assert o.shape == ro.shape and o.dtype == q.dtype
    assert torch.equal(o, ro)
    assert torch.equal(lse, rl), (lse, rl)


def test_empty_rows_map_only_structurally_empty_rows():
    """+inf on a row that has keys is the kernel's error: it stays +inf (the suite then fails it)."""
    def bad_lse(q, k, v, softmax_scale=None, causal=False, return_attn_probs=False):
        out, lse, _ = fakes.flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, return_attn_probs=True)
        return out, torch.full_like(lse, math.inf)

    t = flash_attn_style(bad_lse)
    q, k, v = _qkv(lq=6, lk=3)
    _, lse = t(q, k, v, causal="bottom_right", return_lse=True)
    assert torch.isneginf(lse[..., :3]).all() and torch.isposinf(lse[..., 3:]).all()


def test_lse_layout_is_declared_not_guessed():
    def blh(q, k, v, softmax_scale=None, causal=False, return_attn_probs=False):
        out, lse, _ = fakes.flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal, return_attn_probs=True)
        return (out, lse.transpose(1, 2).contiguous()) if return_attn_probs else out

    q, k, v = _qkv(h=2, hkv=2, lq=5, lk=9)
    with pytest.raises(TypeError, match=r"softmax_lse of shape \(1, 5, 2\).*declare lse_layout='blh'"):
        flash_attn_style(blh)(q, k, v, return_lse=True)
    o, lse = flash_attn_style(blh, lse_layout="blh")(q, k, v, return_lse=True)
    assert torch.equal(lse, tiled_attention(q, k, v, return_lse=True)[1])


def test_declared_top_left_kernel_aligns_windows_top_left():
    t = flash_attn_style(fakes.flash_attn_func_top_left, alignment="top_left")
    q, k, v = _qkv(lq=5, lk=9)
    o, _ = t(q, k, v, causal="top_left", window=(2, 0))
    assert torch.equal(o, tiled_attention(q, k, v, causal="top_left", window=(2, 0)))
    assert t.accepts(_call(lq=5, lk=9, window=(2, 0))) is None  # a top-left non-causal window is its own


def _call(**kw):
    from flashproof.properties.targets import Call

    return Call(dtype="float16", **kw)


def test_refusals_are_outside_the_domain_never_a_different_computation():
    t = load_target(f"{MOD}:flash_attn_func")
    q, k, v = _qkv(lq=5, lk=9)
    # the suite aligns a non-causal window top-left; flash-attn aligns it bottom-right: refused when they differ
    assert "aligns every window bottom-right" in t.refusal(_call(lq=5, lk=9, window=(2, 1)))
    with pytest.raises(OutsideDomain, match="bottom-right"):
        t(q, k, v, window=(2, 1))
    assert t.refusal(_call(lq=7, lk=7, window=(2, 1))) is None
    assert t.refusal(_call(lq=5, lk=9, window=(-2, 0))) is None  # invalid: the kernel must reject it
    with pytest.raises(ValueError, match="window"):
        t(q, k, v, window=(-2, 0))  # reached the fake, which rejects it (spec's make_mask)
    f = load_target(f"{MOD}:parallel_attn")
    assert "causal_only" in f.refusal(_call(lq=4, lk=4))
    assert "Lq=4 != Lk=5" in f.refusal(_call(lq=4, lk=5, causal="top_left"))
    with pytest.raises(OutsideDomain, match="causal only"):
        f.forward(*_qkv(lq=4, lk=4))


def test_fla_translation_is_bitwise_the_engines():
    f = load_target(f"{MOD}:parallel_attn")
    q, k, v = _qkv(h=4, hkv=2, lq=7, lk=7, ev=8)
    for opts in (dict(causal="top_left"), dict(causal="top_left", window=(2, 0)), dict(causal="top_left", scale=0.2),
                 dict(causal="top_left", window=(3, 4))):
        o, lse = f(q, k, v, **opts)
        assert lse is None and torch.equal(o, tiled_attention(q, k, v, **opts)), opts


def test_blhd_translation_is_bitwise_the_engines():
    from mutants.peers import sdpa_math_fp32

    t = load_target(f"{MOD}:sdpa_blhd@blhd")
    q, k, v = _qkv(h=4, hkv=2, lq=5, lk=9, dtype=torch.float32)
    mask = torch.rand(5, 9, generator=torch.Generator().manual_seed(3)) > 0.4
    for opts, ref in ((dict(causal=True), dict(is_causal=True)), (dict(attn_mask=mask), dict(attn_mask=mask)),
                      (dict(scale=0.5), dict(scale=0.5))):
        o, _ = t(q, k, v, **opts)
        assert torch.equal(o, sdpa_math_fp32(q, k, v, enable_gqa=True, **ref)), opts


def test_wrong_output_layout_is_named():
    def bhld_out(q, k, v, softmax_scale=None, causal=False):
        return fakes.flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal).transpose(1, 2)

    q, k, v = _qkv(h=2, hkv=2, lq=5, lk=9)
    with pytest.raises(TypeError, match=r"out of shape \(1, 2, 5, 16\), expected \(B, L, H, D\) = \(1, 5, 2, 16\)"):
        flash_attn_style(bhld_out, lse=False)(q, k, v)


# ============================================================================ the property suite
@pytest.mark.parametrize("spec", _FLASH + [f"{MOD}:sdpa_blhd@blhd"])
def test_correct_fakes_pass_the_ci_suite(spec):
    res = run_suite(spec, profile="ci")
    bad = res.failures + res.errors
    assert not bad, "\n\n".join(f"{o.name} {o.status}: {o.message}\n{o.reproducer}" for o in bad)
    assert sum(o.status == PASSED for o in res.outcomes) >= 25, res.table()


def test_fla_fake_passes_the_ci_suite_inside_its_domain():
    """Causal only with one length: the whole suite, no subset; what needs other calls is not applicable
    (with its reason), and the properties that drew non-causal problems before draw causal ones."""
    res = run_suite(f"{MOD}:parallel_attn", profile="ci")
    bad = res.failures + res.errors
    assert not bad, "\n\n".join(f"{o.name} {o.status}: {o.message}\n{o.reproducer}" for o in bad)
    assert res["gradients_match_reference"].status == PASSED and res["attended_set_exact"].status == PASSED
    for name in ("kv_permutation_invariant", "duplicate_key_adds_ln2", "invalid_window_rejected",
                 "nan_propagates_ieee"):
        assert res[name].status == PASSED, (name, res[name].message)
    for name in ("fully_masked_rows_zero_and_neg_inf", "grad_masked_rows_zero", "garbage_in_masked_keys_ieee",
                 "causal_alignment_on_unequal_lengths"):
        assert res[name].status == NOT_APPLICABLE and "Lq" in res[name].message, (name, res[name].message)


def test_top_left_fake_is_not_accepted_as_flash_attn():
    """flash-attn's causal is bottom-right: a kernel with that API and top-left causal fails, and the
    message says it looks top-left; its reproducer (module:attr, adapter detected) replays."""
    res = run_suite(f"{MOD}:flash_attn_func_top_left", profile="ci", select=["causal_alignment_on_unequal_lengths"])
    o = res["causal_alignment_on_unequal_lengths"]
    assert o.status == FAILED and "closer to top_left causal" in o.message, o.message
    with pytest.raises(Exception, match="violates the running error bound"):
        replay(o.name, o.case, target=f"{MOD}:flash_attn_func_top_left")
    assert replay(o.name, o.case, target=f"{MOD}:flash_attn_func")  # the correct fake passes the same case


def test_log2_lse_fails_the_natural_log_property():
    res = run_suite(f"{MOD}:flash_attn_func_lse_log2", profile="ci", select=["lse_is_natural_log"])
    assert res["lse_is_natural_log"].status == FAILED, res.table()


def test_named_adapter_is_kept_in_the_reproducer():
    res = run_suite(f"{MOD}:flash_attn_func_top_left@flash_attn", profile="ci",
                    select=["causal_alignment_on_unequal_lengths"])
    o = res["causal_alignment_on_unequal_lengths"]
    assert o.status == FAILED and f"target='{MOD}:flash_attn_func_top_left@flash_attn'" in o.reproducer
    assert ERROR not in {x.status for x in res.outcomes}


def test_adapted_targets_are_targets():
    for spec in _FLASH + [f"{MOD}:parallel_attn", f"{MOD}:sdpa_blhd@blhd"]:
        assert isinstance(load_target(spec), Target)


def test_signature_options_can_be_declared_absent():
    """A port whose wrapper raises on window_size / softcap declares them absent (not probed as failures)."""
    t = flash_attn_style(fakes.flash_attn_func, window=False, softcap=False, causal=False)
    assert not (t.window or t.softcap or t.alignments) and t.lse
    with pytest.raises(TypeError, match="window=True, and .* has no `window_size`"):
        flash_attn_style(lambda q, k, v, softmax_scale=None, causal=False: q, window=True)

"""The declared empty-row policy (Target.empty_rows; spec/README.md "Fully masked rows"): "zero" is
spec's O = 0, LSE = -inf on a row with no allowed key; "unspecified" makes no claim on that row's O and
LSE, and nothing else changes. Fakes are plain SDPA callables built on the naive fixture
(tests/fakes/myattn.py), like cuDNN on the H200 (docs/peers.md): a fully masked row returns the mean of V
over all keys (uniform weights), its backward by autograd.

- declared "unspecified" that fake passes the whole ci suite, and the empty-row value property is
  "not declared"; declared "zero" (the default) it fails that property;
- "unspecified" excuses only the empty rows: a wrong value on a row that attends keys, or an empty
  row's garbage leaking into another row, still fails.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fakes import attention_apis as fakes
from fakes.myattn import _logits
from flashproof.properties import PROPERTIES, run_suite
from flashproof.properties.adapters import blhd, fla_style, flash_attn_style
from flashproof.properties.builtin_targets import tiled_peer
from flashproof.properties.outcomes import FAILED, NOT_DECLARED
from flashproof.properties.suite import run_property
from flashproof.properties.targets import EMPTY_ROW_POLICIES, Target, from_sdpa

VALUE_PROPERTY = "fully_masked_rows_zero_and_neg_inf"
#: properties that draw rows with no allowed key among others and judge the other rows
_ROW_JUDGES = ["output_within_error_bound", "ones_values_give_ones", "output_in_convex_hull", "attended_set_exact",
               "kv_permutation_invariant"]


def _mean_v(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    """(O (fp32), empty (B, H, Lq) bool): correct attention, except that a row with no allowed key gets
    uniform weights over all keys (the mean of V), as cuDNN does."""
    s, allowed, v = _logits(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    empty = ~allowed.any(dim=-1)
    s = torch.where(empty[..., None], torch.zeros_like(s), s)
    return s.softmax(dim=-1) @ v, empty


def cudnn_like(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    o, _ = _mean_v(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    return o.to(query.dtype)


def wrong_after_empty(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                      enable_gqa=False):
    """A planted bug: the row after each empty row (one that attends keys) is off by 0.01."""
    o, empty = _mean_v(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    after = torch.zeros_like(empty)
    after[..., 1:] = empty[..., :-1] & ~empty[..., 1:]
    return (o + 0.01 * after[..., None]).to(query.dtype)


def empty_leaks(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """A planted bug: the empty rows' garbage is added into the first row of their (b, h) that attends keys."""
    o, empty = _mean_v(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    leak = (o * empty[..., None]).sum(dim=-2)                      # (B, H, Ev)
    live = ~empty
    first = live & (live.cumsum(dim=-1) == 1)                      # (B, H, Lq): the first row with a key
    return (o + first[..., None] * leak[..., None, :]).to(query.dtype)


def _target(fn, policy=None):
    kw = {} if policy is None else {"empty_rows": policy}
    return from_sdpa(fn, name=f"{fn.__name__}_{policy or 'default'}", **kw)


def _report(res):
    return "\n\n".join(f"{o.name} {o.status}: {o.message}\n{o.reproducer}" for o in res.failures + res.errors)


# ============================================================================ declarations
def test_policies_defaults_and_pass_through():
    assert EMPTY_ROW_POLICIES == ("zero", "unspecified")
    assert Target(name="t", sdpa=cudnn_like).empty_rows == "zero"
    assert from_sdpa(cudnn_like).empty_rows == "zero" and tiled_peer().empty_rows == "zero"
    assert from_sdpa(cudnn_like, empty_rows="unspecified").empty_rows == "unspecified"
    assert flash_attn_style(fakes.flash_attn_func).empty_rows == "zero"
    assert flash_attn_style(fakes.flash_attn_func, empty_rows="unspecified").empty_rows == "unspecified"
    assert fla_style(fakes.parallel_attn, empty_rows="unspecified").empty_rows == "unspecified"
    assert blhd(fakes.sdpa_blhd, empty_rows="unspecified").empty_rows == "unspecified"
    assert from_sdpa(cudnn_like, empty_rows="unspecified").capabilities()["empty_rows"] == "unspecified"


def test_builtin_declarations():
    from flashproof.properties import sdpa_backends
    from flashproof.properties.builtin_targets import default_target

    assert default_target().empty_rows == "zero"
    assert sdpa_backends.cudnn().empty_rows == "unspecified"  # static on the CPU, probed on a GPU: the same claim
    assert sdpa_backends.math().empty_rows == "zero"


@pytest.mark.parametrize("bad", ["Unspecified", "nan", "", None, 0])
def test_an_invalid_policy_is_refused_at_construction(bad):
    with pytest.raises(ValueError, match="empty_rows must be one of"):
        Target(name="t", sdpa=cudnn_like, empty_rows=bad)
    with pytest.raises(ValueError, match="empty_rows must be one of"):
        from_sdpa(cudnn_like, empty_rows=bad)
    t = Target(name="t", sdpa=cudnn_like)
    with pytest.raises(ValueError, match="empty_rows must be one of"):
        dataclasses.replace(t, empty_rows=bad)


# ============================================================================ the cuDNN-like fake
def test_declared_zero_the_cudnn_like_fake_fails_the_value_property():
    out = run_property(PROPERTIES[VALUE_PROPERTY], _target(cudnn_like), profile="ci")
    assert out.status == FAILED and "must be exactly 0" in out.message, out.message


def test_declared_unspecified_the_cudnn_like_fake_passes_the_whole_ci_suite():
    res = run_suite(_target(cudnn_like, "unspecified"), profile="ci")
    assert not (res.failures + res.errors), _report(res)
    o = res[VALUE_PROPERTY]
    assert o.status == NOT_DECLARED and "empty_rows='unspecified'" in o.message, o.message
    assert res.empty_rows == "unspecified" and "empty_rows unspecified" in res.table()
    # the rows with a key were judged: the gradients ran (the fake declares backward through autograd)
    assert res["gradients_match_reference"].status == "passed", res["gradients_match_reference"]
    assert res["grad_masked_rows_zero"].status == "passed", res["grad_masked_rows_zero"]


def test_the_excuse_is_real_nan_on_empty_rows_is_not_judged():
    """An empty row's NaN (not only a finite value) is no claim's business under "unspecified"."""
    def nan_rows(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        o, empty = _mean_v(query, key, value, attn_mask, is_causal, scale, enable_gqa)
        return torch.where(empty[..., None], torch.full_like(o, float("nan")), o).to(query.dtype)

    res = run_suite(from_sdpa(nan_rows, name="nan_rows", empty_rows="unspecified", backward=False), profile="ci",
                    select=_ROW_JUDGES)
    assert not (res.failures + res.errors), _report(res)
    out = run_property(PROPERTIES[VALUE_PROPERTY], from_sdpa(nan_rows, name="nan_rows_zero", backward=False),
                       profile="ci")
    assert out.status == FAILED and "= np.float64(nan)" in out.message, out.message  # declared "zero": a violation


# ============================================================================ what "unspecified" still catches
@pytest.mark.parametrize("fn", [wrong_after_empty, empty_leaks])
def test_unspecified_excuses_only_the_empty_rows(fn):
    res = run_suite(_target(fn, "unspecified"), profile="ci", select=_ROW_JUDGES)
    failed = [o.name for o in res.failures]
    assert failed, res.table()
    for name in failed:  # a row with a key is off the bound (the empty rows themselves are never judged)
        assert "violates" in res[name].message, res[name].message


def test_the_gradients_of_rows_with_keys_stay_judged():
    """dQ of an empty row is excused, dK and dV are not: a backward whose dV takes something from the empty
    rows although their dO is 0 (it treats their dO as ones under its uniform weights) fails."""
    class Leak(torch.autograd.Function):
        @staticmethod
        def forward(ctx_, o, v, empty):
            ctx_.save_for_backward(empty)
            ctx_.vshape = v.shape
            return o.clone()

        @staticmethod
        def backward(ctx_, g):
            (empty,) = ctx_.saved_tensors
            b, hkv, lk, ev = ctx_.vshape
            n = empty.reshape(b, hkv, -1).sum(dim=-1).to(g.dtype)        # empty rows per (b, KV head)
            return g, (n / lk)[..., None, None].expand(b, hkv, lk, ev).clone(), None

    def bad_backward(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                     enable_gqa=False):
        o, empty = _mean_v(query, key, value, attn_mask, is_causal, scale, enable_gqa)
        return Leak.apply(o, value, empty).to(query.dtype)

    t = from_sdpa(bad_backward, name="bad_backward", empty_rows="unspecified", backward=True)
    res = run_suite(t, profile="ci", select=["gradients_match_reference", "grad_masked_rows_zero"])
    assert res.failures and all("dV" in o.message for o in res.failures), res.table()


def test_decode_rows_with_no_key_follow_the_policy():
    """Decode's empty rows (a sequence of length 0, or Lq > its length: bottom-right causal to each sequence's
    own length) are excused under "unspecified" and judged under "zero"; the other rows stay judged."""
    from flashproof.properties.peers import tiled_decode

    def nan_on_empty(q, k_cache, v_cache, *, seqlens, causal, **kw):
        out = tiled_decode(q, k_cache, v_cache, seqlens=seqlens, causal=causal, **kw)
        o, lse = out if isinstance(out, tuple) else (out, None)
        lq = q.shape[2]
        n = torch.as_tensor(seqlens).to("cpu", torch.int64)
        empty = (torch.arange(lq)[None, :] < (lq - n)[:, None])[:, None, :, None]
        o = torch.where(empty, torch.full_like(o, float("nan")), o)
        return (o, lse) if isinstance(out, tuple) else o

    def off_by(q, k_cache, v_cache, *, seqlens, causal, **kw):
        out = tiled_decode(q, k_cache, v_cache, seqlens=seqlens, causal=causal, **kw)
        o, lse = out if isinstance(out, tuple) else (out, None)
        o = o + 0.01  # every row, those with keys included
        return (o, lse) if isinstance(out, tuple) else o

    prop = PROPERTIES["decode_within_error_bound"]
    base = tiled_peer()
    ok = run_property(prop, dataclasses.replace(base, name="nan_empty_decode", decode=nan_on_empty,
                                                empty_rows="unspecified"), profile="ci")
    assert ok.status == "passed", ok.message
    zero = run_property(prop, dataclasses.replace(base, name="nan_empty_decode_zero", decode=nan_on_empty),
                        profile="ci")
    assert zero.status == FAILED and "NaN" in zero.message, zero.message
    bad = run_property(prop, dataclasses.replace(base, name="off_decode", decode=off_by, empty_rows="unspecified"),
                       profile="ci")
    assert bad.status == FAILED and "violates" in bad.message, bad.message

"""properties/targets.py: load_target errors, SDPA wrapping, Target validation and calling."""
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from flashproof.properties.loading import load_target
from flashproof.properties.targets import Target, TargetLoadError, from_sdpa

F = torch.nn.functional


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=enable_gqa)


@pytest.fixture
def fake_module(monkeypatch):
    mod = types.ModuleType("fp_fake_targets")
    mod.sdpa = _sdpa
    mod.not_callable = 3.0
    mod.factory = lambda: Target(name="fac", sdpa=_sdpa)
    mod.bad_factory = lambda: 42

    def raising_factory():
        raise RuntimeError("no GPU here")
    mod.raising_factory = raising_factory
    mod.ns = types.SimpleNamespace(inner=_sdpa)
    monkeypatch.setitem(sys.modules, "fp_fake_targets", mod)
    return mod


@pytest.mark.parametrize("spec, word", [
    ("no_colon_here", "module:attr"),
    ("a:b:c", "module:attr"),
    (":attr", "module:attr"),
    ("mod:", "module:attr"),
    ("fp_no_such_module_xyz:fn", "cannot import module 'fp_no_such_module_xyz'"),
    ("fp_fake_targets:missing", "has no attribute 'missing'"),
    ("fp_fake_targets:not_callable", "is a float, not a Target or a callable"),
    ("fp_fake_targets:bad_factory", "must return a Target"),
    ("fp_fake_targets:raising_factory", "the factory raised RuntimeError: no GPU here"),
])
def test_load_target_errors_name_the_problem(fake_module, spec, word):
    with pytest.raises(TargetLoadError, match=word.replace("(", r"\(")):
        load_target(spec)


def test_load_target_error_is_a_value_error():
    assert issubclass(TargetLoadError, ValueError)
    with pytest.raises(TypeError, match="module:attr"):
        load_target(3)


def test_module_that_fails_to_import_reports_its_error(monkeypatch, tmp_path):
    (tmp_path / "fp_broken_mod.py").write_text("raise ImportError('needs CUDA')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TargetLoadError, match="needs CUDA"):
        load_target("fp_broken_mod:fn")


def test_load_target_accepts_sdpa_callables_factories_and_targets(fake_module):
    t = load_target("fp_fake_targets:sdpa")
    assert t.sdpa is _sdpa and t.spec == "fp_fake_targets:sdpa"
    assert load_target("fp_fake_targets:ns.inner").sdpa is _sdpa
    f = load_target("fp_fake_targets:factory")
    assert f.name == "fac" and f.spec == "fp_fake_targets:factory"
    assert load_target(f) is f


def test_torch_sdpa_declares_only_what_its_signature_offers():
    t = load_target("torch.nn.functional:scaled_dot_product_attention")
    assert t.alignments == ("top_left",) and t.attn_mask and t.gqa and t.backward
    assert not (t.lse or t.window or t.softcap or t.decode or t.tile_configs)
    assert t.nan_policy == "ieee" and not t.batch_invariant  # what torch does: judged by it, not against it
    assert "nan_propagates_ieee" in t.known_deviations  # documented, reported as XFAIL
    assert "garbage_in_masked_keys_isolated" not in t.known_deviations  # 0 * NaN is what "ieee" allows


def test_a_callable_without_attn_mask_or_gqa_declares_neither():
    def plain(query, key, value, is_causal=False, scale=None):
        return F.scaled_dot_product_attention(query, key, value, is_causal=is_causal, scale=scale)
    t = from_sdpa(plain)
    assert not t.attn_mask and not t.gqa and t.known_deviations == {}


def test_sdpa_target_call_folds_causal_into_the_mask_and_enables_gqa():
    t = from_sdpa(_sdpa)
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    m = torch.rand(5, 7) > 0.3
    o, lse = t(q, k, v, causal=True, attn_mask=m)
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                                          attn_mask=m & torch.ones(5, 7, dtype=torch.bool).tril())
    assert lse is None and torch.allclose(o, want, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="window"):
        t(q, k, v, window=(2, 0))
    with pytest.raises(ValueError, match="lse"):
        t(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="top-left"):
        t(q, k, v, causal="bottom_right")


@pytest.mark.parametrize("kw, exc, word", [
    (dict(name=""), TypeError, "name"),
    (dict(name="x"), ValueError, "sdpa"),
    (dict(name="x", sdpa=3), TypeError, "sdpa"),
    (dict(name="x", sdpa=_sdpa, alignments=("diag",)), ValueError, "alignments"),
    (dict(name="x", sdpa=_sdpa, alignments=("bottom_right",)), ValueError, "top_left"),
    (dict(name="x", sdpa=_sdpa, lse=True), ValueError, "lse"),
    (dict(name="x", sdpa=_sdpa, accumulator="fp16"), ValueError, "accumulator"),
    (dict(name="x", sdpa=_sdpa, dtypes=("int8",)), ValueError, "dtypes"),
    (dict(name="x", sdpa=_sdpa, split_range=(0, 4)), ValueError, "split_range"),
    (dict(name="x", sdpa=_sdpa, paged=True), ValueError, "decode"),
    (dict(name="x", sdpa=_sdpa, c_exp=-1), ValueError, "c_exp"),
])
def test_target_validates_its_declaration(kw, exc, word):
    with pytest.raises(exc, match=word):
        Target(**kw)


def test_tiled_peer_is_a_correct_rich_target():
    from flashproof.reference import forward_fp64

    t = load_target("flashproof.properties.builtin_targets:tiled_peer")
    assert t.lse and t.window and t.softcap and t.decode is not None and t.paged and len(t.tile_configs) >= 2
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 21, 16), torch.randn(2, 2, 21, 16)
    o, lse = t(q, k, v, causal="bottom_right", window=(3, 1), return_lse=True, tile={"block_m": 8, "block_n": 8})
    ro, rl = forward_fp64(q, k, v, causal="bottom_right", window=(3, 1))
    assert abs(o.double().numpy() - ro).max() < 1e-5
    fin = rl > -math.inf
    assert abs(lse.double().numpy()[fin] - rl[fin]).max() < 1e-5 and (lse.numpy()[~fin] == -math.inf).all()


def test_default_target_is_flashproofs_kernel():
    t = load_target(None)
    assert t.name == "flashproof.kernels" and t.lse and t.decode is not None and t.backward
    assert t.tile_configs and all("block_m" in c and "block_n" in c for c in t.tile_configs)


def test_names_from_before_the_split_still_load_and_import():
    """Reproducer files written before properties/ was split name the built-in targets as
    flashproof.properties.targets:NAME and import the value objects from strategies: both work."""
    from flashproof.properties import builtin_targets, cases, strategies

    for name in ("tiled_peer", "torch_sdpa"):
        old = load_target(f"flashproof.properties.targets:{name}")
        new = getattr(builtin_targets, name)()
        assert old.name == new.name and old.spec == new.spec
    assert new.spec == "torch.nn.functional:scaled_dot_product_attention"
    assert load_target("flashproof.properties.targets:tiled_peer").spec == "flashproof.properties.builtin_targets:tiled_peer"
    ns = {}
    exec("from flashproof.properties.strategies import Case, MaskSpec, Problem, Regime, Shape, build", ns)
    assert ns["Case"] is cases.Case and ns["Problem"] is cases.Problem and callable(ns["build"])
    assert "Case" not in strategies.__all__  # strategies.py holds strategies only
    with pytest.raises(AttributeError, match="no_such_name"):
        strategies.no_such_name  # noqa: B018


# ============================================================================ a module of the current directory
_MYATTN = '''\
"""A user's repo: a correct attention on torch's SDPA signature (fp32 inside), and a flash-attn-style
kernel whose causal is top-left (flash-attn's is bottom-right)."""
import math

import torch
import torch.nn.functional as F


def good(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    mask = attn_mask if attn_mask is None or attn_mask.dtype == torch.bool else attn_mask.float()
    return F.scaled_dot_product_attention(query.float(), key.float(), value.float(), attn_mask=mask,
                                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa).to(query.dtype)


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    if tuple(window_size) != (-1, -1) or softcap:
        raise NotImplementedError("no window, no softcap")
    qh, kh, vh = (x.transpose(1, 2).float() for x in (q, k, v))
    rep = qh.shape[1] // kh.shape[1]
    kh, vh = kh.repeat_interleave(rep, 1), vh.repeat_interleave(rep, 1)
    s = qh @ kh.transpose(-1, -2) * (softmax_scale or qh.shape[-1] ** -0.5)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
    o = (s.softmax(-1) @ vh).to(q.dtype).transpose(1, 2)
    return (o, torch.logsumexp(s, -1), None) if return_attn_probs else o
'''
_BIN = Path(sys.executable).parent


def _in_repo(tmp_path, argv):
    """``argv`` run in a fresh repo folder holding myattn.py, as a user types it there: no PYTHONPATH, and
    the installed console scripts (``python -m`` would put the folder on sys.path by itself)."""
    (tmp_path / "myattn.py").write_text(_MYATTN)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "PYTHONPATH"}
    return subprocess.run([str(_BIN / argv[0]), *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


_PYTEST = ["pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flashproof.properties"]


@pytest.mark.parametrize("argv", [
    ["flashproof", "check", "myattn:good", "--select", "output_within_error_bound", "--quiet"],
    [*_PYTEST, "--flashproof-target=myattn:good", "-k", "test_output_within_error_bound"],
], ids=["check", "pytest"])
def test_a_target_module_of_the_current_directory_is_found(tmp_path, argv):
    r = _in_repo(tmp_path, argv)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "passed" in r.stdout


@pytest.mark.parametrize("argv", [
    ["flashproof", "check", "myattn:flash_attn_func", "--adapter", "flash_attn", "--select",
     "causal_alignment_on_unequal_lengths", "--quiet"],
    [*_PYTEST, "--flashproof-target=myattn:flash_attn_func", "--flashproof-adapter=flash_attn", "-k",
     "test_causal_alignment_on_unequal_lengths"],
], ids=["check", "pytest"])
def test_a_named_adapter_applies_from_the_command_line(tmp_path, argv):
    r = _in_repo(tmp_path, argv)
    out = r.stdout + r.stderr
    assert r.returncode == 1, f"exit {r.returncode}\n{out[-4000:]}"
    assert "closer to top_left causal" in out and "myattn:flash_attn_func@flash_attn" in out, out[-4000:]


def test_sys_path_is_left_alone_when_the_module_is_nowhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    with pytest.raises(TargetLoadError, match="cannot import module 'fp_nowhere_xyz'"):
        load_target("fp_nowhere_xyz:fn")
    assert sys.path == before

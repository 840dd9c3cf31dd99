"""benchmarks/peers/: the real third-party kernels declared for the GPU runs.

Without a GPU (and without their wheels) each factory must fail at load with a TargetLoadError that
says what is missing; the FlexAttention peer's wiring (block mask for causal and windows in both
alignments, score_mod for softcap, the LSE) is checked here on flex's eager CPU path, which runs
the same mask_mod/score_mod as the compiled peer.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from flashproof.properties.suite import PASSED, run_suite
from flashproof.properties.loading import load_target
from flashproof.properties.targets import TargetLoadError

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["benchmarks.peers.flex:target", "benchmarks.peers.torch_sdpa:flash", "benchmarks.peers.torch_sdpa:cudnn",
         "benchmarks.peers.torch_sdpa:efficient", "benchmarks.peers.fla:target",
         "benchmarks.peers.flash_attention_triton:target"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("spec", PEERS)
def test_peer_factories_say_what_is_missing(spec, monkeypatch):
    monkeypatch.chdir(ROOT)  # as the README's commands run: from the repository root
    with pytest.raises(TargetLoadError, match=r"runs on a CUDA GPU; none is available|does not import .*pip install "
                                              r"--no-deps --no-index \.whl/"):
        load_target(spec)


def test_peer_modules_import_nothing_heavy(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    for spec in PEERS:
        mod = importlib.import_module(spec.split(":")[0])
        assert callable(getattr(mod, spec.split(":")[1])) and mod.__doc__ and hasattr(mod, "__all__")


def test_flex_wiring_on_the_eager_path(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.peers.flex import flex_target

    t = flex_target(compiled=False, devices=("cpu",))
    names = ["causal_alignment_on_unequal_lengths", "attended_set_exact", "window_wider_than_sequence_is_causal",
             "softcap_applied_as_spec", "lse_is_natural_log", "fully_masked_rows_zero_and_neg_inf"]
    res = run_suite(t, profile="ci", select=names)
    bad = [o for o in res.outcomes if o.status != PASSED]
    assert not bad, "\n\n".join(f"{o.name} {o.status}: {o.message}\n{o.reproducer}" for o in bad)

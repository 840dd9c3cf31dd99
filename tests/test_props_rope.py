"""The RoPE property (issue 14, item 8): it passes the correct targets at ci, and it is live: a wrong
re-encoding of the cache, or a target that mishandles rotated keys, fails it."""
import dataclasses

import numpy as np
import pytest

from flashproof import spec
from flashproof.properties.builtin_targets import default_target, tiled_peer
from flashproof.properties.outcomes import FAILED, PASSED
from flashproof.properties.registry import PROPERTIES
from flashproof.properties.suite import load_properties, run_property
from flashproof.properties.sdpa_backends import math as sdpa_math

load_properties()
P = PROPERTIES["rope_reencoded_cache_matches"]


@pytest.mark.parametrize("make", [default_target, tiled_peer, sdpa_math], ids=["kernel", "tiled_peer", "sdpa_math"])
def test_rope_property_passes_correct_targets(make):
    out = run_property(P, make(), profile="ci")
    assert out.status == PASSED, out.message


def test_a_wrong_cache_reencoding_fails(monkeypatch):
    from flashproof.properties import props_rope

    def off_by_one(k, delta, **kw):  # rotates by delta + 1: the classic position off-by-one
        return spec.apply_rope(k, delta + 1, **kw)

    monkeypatch.setattr(props_rope.spec, "reposition_keys", off_by_one)
    out = run_property(P, tiled_peer(), profile="ci")
    assert out.status == FAILED and "reencoding_error_bound" in out.message, out.message


def test_a_target_that_rounds_keys_coarsely_fails():
    """A target that truncates every key to bf16 while declaring fp32 (a kernel caching rotated keys in a
    narrower format) is caught on fp32 inputs."""
    import torch

    base = tiled_peer()

    def forward(q, k, v, **kw):
        return base.forward(q, k.to(torch.bfloat16).to(k.dtype), v, **kw)

    t = dataclasses.replace(base, name="bf16_keys", forward=forward, dtypes=("float32",), decode=None,
                            split_range=None, paged=False)
    out = run_property(P, t, profile="ci")
    assert out.status == FAILED, out.message

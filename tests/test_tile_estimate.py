"""kernels.tiles' shared-memory estimate with an attn_mask bias, and the suite's use of it.

The H200 gpu profile (docs/gpu-runs.md, session 6) found flashproof's own Target declaring
(256, 64, 8, 2) at E=128, Ev=256, fp16 with a bool attn_mask: the estimate accepted it and the GPU
refused it (262168 B of shared memory), a raise on a valid input (docs/findings.md F5).
"""
import dataclasses

import pytest
import torch

from flashproof.kernels import attention, sdpa
from flashproof.kernels.tiles import TileConfig, accepts_tile_config, check_tile_config, default_forward_config
from flashproof.properties import builtin_targets
from flashproof.properties.cases import Case, MaskSpec, Problem, Shape
from flashproof.properties.registry import _applicable

REFUSED_ON_H200 = TileConfig(256, 64, 8, 2)


def test_the_config_the_h200_refused_is_refused_with_a_bias():
    assert not accepts_tile_config(REFUSED_ON_H200, head_dim=128, head_dim_v=256, dtype=torch.float16, has_bias=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_defaults_fit_with_a_bias(dtype):
    """A masked call never has its own default tiles refused (the default is picked knowing the bias)."""
    for e in (1, 16, 40, 64, 65, 96, 128, 129, 192, 256):
        for ev in (1, 24, 64, 128, 256):
            c = default_forward_config(head_dim=e, head_dim_v=ev, dtype=dtype, interpret=False, has_bias=True)
            check_tile_config(*c, head_dim=e, head_dim_v=ev, dtype=dtype, has_bias=True)


def test_a_masked_call_with_a_tile_too_big_for_its_bias_is_refused_before_launch():
    q = torch.randn(1, 1, 4, 128, dtype=torch.float16)
    k = torch.randn(1, 1, 4, 128, dtype=torch.float16)
    v = torch.randn(1, 1, 4, 256, dtype=torch.float16)
    mask = torch.ones(4, 4, dtype=torch.bool)
    target = builtin_targets.default_target()
    with pytest.raises(ValueError, match="with attn_mask"):
        target.forward(q, k, v, attn_mask=mask, **REFUSED_ON_H200._asdict())
    # the same config without a mask is the estimate's to accept, and the plain call still runs
    assert accepts_tile_config(REFUSED_ON_H200, head_dim=128, head_dim_v=256, dtype=torch.float16)
    assert torch.isfinite(sdpa(q, k, v, attn_mask=mask)).all()
    assert torch.isfinite(attention(q, k, v)).all()


def test_the_suite_never_draws_or_pins_a_declared_tile_the_dims_rule_out():
    target = builtin_targets.default_target()
    cfg = dict(REFUSED_ON_H200._asdict())
    target = dataclasses.replace(target, tile_configs=(cfg,))
    assert not target.accepts_tile(cfg, head_dim=128, head_dim_v=256, dtype=torch.float16)
    case = Case(problem=Problem(shape=Shape(lq=1, lk=257, e=128, ev=256), dtype="float16",
                                mask=MaskSpec(attn_mask="bool", density=0.3)), tile=tuple(sorted(cfg.items())))
    assert _applicable(case, target).tile is None
    small = Case(problem=dataclasses.replace(case.problem, shape=Shape(lq=1, lk=33, e=16, ev=16)), tile=case.tile)
    assert _applicable(small, target).tile == case.tile

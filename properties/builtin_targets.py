"""The built-in targets: flashproof's own Triton kernel (the suite's default), torch's SDPA, and
the tiled peer (a correct tiled FlashAttention in torch, properties/peers.py).

Each is a zero-argument factory, so ``--flashproof-target flashproof.properties.builtin_targets:NAME``
names it. flashproof's kernel: ``attention()`` carries every option but attn_mask; with an
attn_mask the same kernel runs through the additive bias path that ``sdpa()`` uses, so masks
combine with bottom-right causal, windows and softcap.
"""
from __future__ import annotations

import importlib

from flashproof import spec

from .accumulators import declared_accumulator
from .cases import DEFAULT_DTYPES
from .peers import PEER_TILES, tiled_attention, tiled_decode
from .targets import Target, TargetLoadError, from_sdpa

__all__ = ["default_target", "torch_sdpa", "tiled_peer", "kernel_accumulator"]


def default_target() -> Target:
    """flashproof's own Triton kernel (flashproof.kernels), with every capability it declares."""
    try:
        kernels = importlib.import_module("flashproof.kernels")
    except ImportError as exc:
        raise TargetLoadError(f"default target: cannot import flashproof.kernels ({exc})") from exc
    return _kernel_target(kernels)


def torch_sdpa() -> Target:
    """torch.nn.functional.scaled_dot_product_attention as a target (top-left causal)."""
    import torch

    return from_sdpa(torch.nn.functional.scaled_dot_product_attention,
                     name="torch.nn.functional:scaled_dot_product_attention",
                     spec="torch.nn.functional:scaled_dot_product_attention", backward=True)


def tiled_peer() -> Target:
    """A correct tiled FlashAttention in torch (properties/peers.py): every capability."""

    def forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None,
                attn_mask=None, return_lse=False, block_m=16, block_n=16):
        return tiled_attention(q, k, v, causal=causal, alignment=alignment, window=window, scale=scale,
                               softcap=softcap, attn_mask=attn_mask, return_lse=return_lse,
                               block_m=block_m, block_n=block_n)

    return Target(
        name="tiled_peer",
        forward=forward,
        tile_configs=PEER_TILES,
        lse=True,
        alignments=("top_left", "bottom_right"),
        window=True,
        softcap=True,
        attn_mask=True,
        gqa=True,
        backward=True,
        decode=tiled_decode,
        split_range=(1, 16),
        paged=True,
        accumulator="fp32",
        nan_policy="strict",  # masked keys are dropped (peers.TorchRowOps.weighted_sum), never multiplied by 0
        spec="flashproof.properties.builtin_targets:tiled_peer",
        description="correct tiled FlashAttention-2 in torch (properties/peers.py)",
    )


# ----------------------------------------------------------------------------- flashproof's kernel
def _bf16_store_truncates(kernels) -> bool:
    """Whether the kernel's bf16 output store truncates (the Triton interpreter's fp32 -> bf16 cast,
    docs/findings.md F1) instead of rounding to nearest even: two tied keys with v = 1 and
    1 + 3 * 2^-7 give o = 1 + 1.5 * 2^-7 exactly in fp32, a bf16 midpoint."""
    import torch

    q = torch.zeros(1, 1, 1, 16, dtype=torch.bfloat16)
    k = torch.zeros(1, 1, 2, 16, dtype=torch.bfloat16)
    v = torch.ones(1, 1, 2, 16, dtype=torch.bfloat16)
    v[0, 0, 1] = 1 + 3 * 2.0 ** -7
    try:
        o = kernels.attention(q, k, v)
    except Exception:
        return False
    return float(o[0, 0, 0, 0]) == 1 + 2.0 ** -7


def kernel_accumulator(*, interpreting: bool, capability=None, dtypes=DEFAULT_DTYPES) -> dict:
    """The accumulation model flashproof's kernel declares, {dtype: name}.

    Under the interpreter ``tl.dot`` is numpy's fp32 matmul (BLAS fp32 FMAs, any order) plus an fp32
    add: IEEE "fp32" for every dtype (the kernel upcasts bf16 operands there; tests/test_devices.py
    runs the probe under the interpreter). Compiled on a CUDA device of ``capability``: fp16/bf16 dots
    on the tensor cores follow the model measured there (proofs.devices.MEASURED; SM90:
    fp32_blockfma_k16_x2_rz), fp32 dots (input_precision="ieee") are IEEE "fp32"; an unmeasured
    architecture gets the most pessimistic measured model, with a warning (accumulators.py)."""
    return declared_accumulator(dtypes, cuda=not interpreting, capability=capability, who="flashproof's kernel")


def _kernel_target(kernels) -> Target:
    attention_mod = __import__("flashproof.kernels.attention", fromlist=["_plan", "_run"])
    sdpa_mod = __import__("flashproof.kernels.sdpa", fromlist=["_bias_from_mask"])
    tiles_mod = __import__("flashproof.kernels.tiles", fromlist=["accepts_tile_config"])
    interp = kernels.runtime.interpreting() if hasattr(kernels, "runtime") else True

    def forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None, attn_mask=None,
                return_lse=False, block_m=None, block_n=None, num_warps=None, num_stages=None):
        if attn_mask is None:
            return kernels.attention(q, k, v, causal=causal, alignment=alignment, window=window, scale=scale,
                                     softcap=softcap, return_lse=return_lse, block_m=block_m, block_n=block_n,
                                     num_warps=num_warps, num_stages=num_stages)
        b, h, lq, _ = q.shape
        lk = k.shape[2]
        bias = sdpa_mod._bias_from_mask(attn_mask, b, h, lq, lk, q.device)
        mask = spec.make_mask(causal=causal, window=window, alignment=alignment)
        plan = attention_mod._plan(q, k, v, mask=mask, scale=scale, softcap=softcap, block_m=block_m,
                                   block_n=block_n, num_warps=num_warps, num_stages=num_stages, allow_tf32=False,
                                   has_bias=True)
        return attention_mod._run(q, k, v, bias, plan, return_lse)

    def accepts(cfg, *, head_dim, head_dim_v, dtype):
        c = dict(cfg)
        tc = tiles_mod.TileConfig(c["block_m"], c["block_n"], c.get("num_warps", 4), c.get("num_stages", 1))
        # has_bias: the suite draws attn_mask problems with any declared config
        return tiles_mod.accepts_tile_config(tc, head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype, has_bias=True)

    configs = [dict(c._asdict()) for c in kernels.TILE_CONFIGS]
    if interp:
        # Under the interpreter num_warps/num_stages change nothing: one config per (block_m, block_n),
        # blocks up to 64 (bigger ones equal a single tile at the ci profile's lengths).
        seen, uniq = set(), []
        for c in configs:
            key = (c["block_m"], c["block_n"])
            if key not in seen and max(key) <= 64:
                seen.add(key)
                uniq.append(c)
        configs = uniq
    split = kernels.SPLIT_RANGE
    return Target(
        name="flashproof.kernels",
        forward=forward,
        tile_configs=configs,
        lse=True,
        alignments=("top_left", "bottom_right"),
        window=True,
        softcap=True,
        attn_mask=True,
        gqa=True,
        backward=True,
        decode=kernels.decode,
        split_range=(int(split[0]), int(split[-1])),
        paged=True,
        accumulator=kernel_accumulator(interpreting=interp),
        devices=("cpu",) if interp else ("cuda",),
        accepts_tile=accepts,
        round_toward_zero=("bfloat16",) if _bf16_store_truncates(kernels) else (),
        head_dims=tuple(range(1, 257)),
        nan_policy="strict",  # masked keys are skipped or masked before P @ V (kernels/attention.py)
        spec="flashproof.properties.builtin_targets:default_target",
        description="flashproof's Triton FlashAttention (interpreted on CPU)" if interp else
                    "flashproof's Triton FlashAttention",
    )


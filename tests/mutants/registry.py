"""The zoo as flashproof.properties Targets: every mutant, and the correct peers.

Mutants derived from base.TiledAttention declare everything the base does (forward with tiles,
LSE, both alignments, window, softcap, attn_mask, GQA, backward, split-KV and paged decode,
fp32/fp16/bf16, fp32 accumulator, exp within 1 ulp): the bug of each lives in one of those
paths, so no declaration hides it, and the correct base passes under the same declaration. A
mutant with ``sdpa_only`` is wrapped as a plain SDPA callable (its bug is in is_causal).
"""
from __future__ import annotations

from flashproof.properties.targets import Target, from_sdpa

from . import peers
from .base import SPLIT_RANGE, TILE_CONFIGS, TiledAttention
from .zoo import LONG_MUTANTS, MUTANTS

__all__ = ["target_of", "mutant_targets", "long_mutant_targets", "peer_targets", "describe", "markdown_rows"]


def describe(cls) -> str:
    """The first line of a kernel's docstring: what its bug is."""
    return (cls.__doc__ or "").strip().splitlines()[0]


def target_of(impl: TiledAttention) -> Target:
    """A Target declaring every capability of the tiled implementation ``impl``."""
    name = f"zoo.{impl.name}"
    if getattr(impl, "sdpa_only", False):
        return from_sdpa(impl.sdpa, name=name, backward=True)
    return Target(
        name=name,
        sdpa=impl.sdpa,
        forward=impl.forward,
        tile_configs=getattr(impl, "declared_tiles", TILE_CONFIGS),
        lse=True,
        alignments=("top_left", "bottom_right"),
        window=True,
        softcap=True,
        attn_mask=True,
        gqa=True,
        backward=True,
        decode=impl.decode,
        split_range=SPLIT_RANGE,
        paged=True,
        dtypes=getattr(impl, "declared_dtypes", ("float32", "float16", "bfloat16")),
        devices=("cpu",),
        accumulator="fp32",
        # exp and log are computed in float64 and rounded once to float32 (spec.Float32Ops).
        c_exp=1,
        description=describe(type(impl)),
    )


def mutant_targets() -> list[Target]:
    return [target_of(cls()) for cls in MUTANTS]


def long_mutant_targets() -> list[Target]:
    """zoo.LONG_MUTANTS as Targets (also in mutant_targets(): see zoo.LONG_MUTANTS)."""
    return [target_of(cls()) for cls in LONG_MUTANTS.values()]


def peer_targets() -> list[Target]:
    """The correct peers run in this file's test: the tiled base and torch SDPA math fp32/fp64.

    (flashproof's own kernel is the default target of the property suite's own tests.)
    """
    # The math peers drop masked keys and run each batch element alone: they declare the strict NaN policy
    # and batch invariance (more than a plain SDPA callable claims), so both are checked on them.
    return [
        target_of(TiledAttention()),
        from_sdpa(peers.sdpa_math_fp32, name="zoo.sdpa_math_fp32", backward=True, nan_policy="strict",
                  batch_invariant=True),
        from_sdpa(peers.sdpa_math_fp64, name="zoo.sdpa_math_fp64", backward=True, nan_policy="strict",
                  batch_invariant=True),
    ]


def markdown_rows(killers=None) -> list[str]:
    """One markdown table row per mutant: name | class | bug | trigger | killers (from ``killers``)."""
    killers = killers or {}
    rows = []
    for cls in MUTANTS:
        doc = (cls.__doc__ or "").strip().splitlines()
        trig = next((ln.strip()[len("Trigger:"):].strip() for ln in doc if ln.strip().startswith("Trigger:")), "")
        cells = (f"`{cls.__name__}`", cls.bug_class, describe(cls), trig, killers.get(cls.__name__, ""))
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return rows

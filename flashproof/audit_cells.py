"""The audit's grid: sweeps over sequence length, head dim, logit scale, softmax temperature, the
suite's logit regimes and tilings. Every cell is a ``properties.strategies.Case``, built into
tensors by ``strategies.build`` exactly as the property suite builds its examples.

- *logit scale* s: q is drawn with standard deviation s (``Regime("standard", spread=s)``), so the
  scaled logits have standard deviation ~s at the default scale 1/sqrt(E).
- *temperature* T: softmax temperature, logits divided by T, i.e. the softmax scale
  1 / (T sqrt(E)) passed to the kernel (``Problem.scale``); a higher T gives a smoother softmax.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from flashproof.properties.cases import REGIMES, Case, MaskSpec, Problem, Regime, Shape

__all__ = ["Cell", "SWEEPS", "REGIME_POINTS", "LOGIT_SCALES", "TEMPERATURES", "TILES_PER_CELL", "cells",
           "temperature_scale", "with_tile"]

#: the sweeps, in report order
SWEEPS = ("L", "E", "logit_scale", "temperature", "regime", "tiling")
#: standard deviations of q (and so of the logits at the default scale) in the logit-scale sweep
LOGIT_SCALES = (0.25, 1.0, 4.0, 16.0, 64.0)
#: softmax temperatures of the temperature sweep
TEMPERATURES = (0.5, 2.0, 8.0)
#: (offset, spread) of each of the suite's regimes but standard: values its strategy draws
#: (strategies.logit_regimes) that every dtype reaches at E >= 16
REGIME_POINTS = {"large": (0.0, 1e3), "very_negative": (-1e4, 1.0), "spread": (0.0, 1e3), "ties": (0.0, 1.0),
                 "rising": (0.0, 30.0), "sentinel": (-1e4, 2.0 ** -6)}
#: the tiling sweep runs up to this many of a target's tile configs (an even spread of those that fit)
TILES_PER_CELL = 3


@dataclass(frozen=True)
class Cell:
    """One point of a sweep: ``case`` is the problem (its tile None: each target's default);
    ``tiles``: how many of a target's tile configs to run (the tiling sweep), 0 for its default."""

    sweep: str
    value: Any
    case: Case
    tiles: int = 0

    def __post_init__(self):
        if self.sweep not in SWEEPS:
            raise ValueError(f"Cell.sweep must be one of {SWEEPS}, got {self.sweep!r}")
        if not isinstance(self.case, Case):
            raise TypeError(f"Cell.case must be a strategies.Case, got {type(self.case).__name__}")

    @property
    def problem(self) -> Problem:
        return self.case.problem

    @property
    def temperature(self) -> float:
        """The softmax temperature the problem's scale amounts to (1: the default scale)."""
        p = self.problem
        return 1.0 if p.scale is None else 1.0 / (p.scale * math.sqrt(p.shape.e))

    def params(self) -> dict:
        """The cell's coordinates, for the report."""
        p = self.problem
        reg = p.regime
        return dict(sweep=self.sweep, x=self.value, dtype=p.dtype, L=p.shape.lq, E=p.shape.e,
                    causal=bool(p.mask.causal), batch=p.shape.batch, heads=p.shape.heads,
                    logit_scale=reg.spread if reg.name == "standard" else None, temperature=self.temperature,
                    regime=reg.name, regime_params=reg.describe(), seed=p.seed, case=repr(self.case))


def temperature_scale(t: float, e: int) -> float:
    """The softmax scale of temperature ``t`` at head dim ``e``: 1 / (t sqrt(e))."""
    if not (isinstance(t, (int, float)) and t > 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a positive finite number, got {t!r}")
    return 1.0 / (t * math.sqrt(e))


def _grid(quick: bool, device: str):
    """(lengths, base length, head dims, length of the tiling cell, E of the L sweep)."""
    if device == "cuda":  # sized so the full sweep of 5 backends x 3 dtypes fits one 10-minute sitting on an H100
        ls = [512, 1024, 2048] if quick else [512, 1000, 2048, 4096, 8192]
        return ls, 2048, [40, 64, 128, 256], 2048 + 333, 128
    ls = [16, 64, 100, 128, 256] if quick else [16, 64, 100, 128, 256, 333, 512]
    return ls, 128, [16, 40, 64, 128], 128 + 37, 64


def cells(*, quick=True, device="cpu", dtypes=("bfloat16", "float16", "float32"), seed=0, batch=1,
          heads=None) -> list:
    """The audit's cells for each dtype (dtype-major), seeded ``seed``, ``seed + 1``, ... in order."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    h = heads or (8 if device == "cuda" else 2)
    ls, base, es, tiling_l, l_e = _grid(quick, device)
    missing = set(REGIMES) - {"standard"} - set(REGIME_POINTS)
    if missing:  # a regime the suite added must be placed on the audit's grid too
        raise ValueError(f"REGIME_POINTS has no point for the suite's regimes {sorted(missing)}")
    plan = []  # (sweep, value, L, E, causal, regime, scale, tiles)
    for n in ls:
        for causal in (False, True):
            plan.append(("L", n, n, l_e, causal, Regime(), None, 0))
    for e in es:
        plan.append(("E", e, base, e, False, Regime(), None, 0))
    for s in LOGIT_SCALES:
        plan.append(("logit_scale", s, base, 64, False, Regime("standard", 0.0, s), None, 0))
    for t in TEMPERATURES:
        plan.append(("temperature", t, base, 64, False, Regime(), temperature_scale(t, 64), 0))
    for name in REGIMES:
        if name != "standard":
            plan.append(("regime", name, base, 64, True, Regime(name, *REGIME_POINTS[name]), None, 0))
    plan.append(("tiling", "tile configs", tiling_l, 64, True, Regime(), None, TILES_PER_CELL))
    out = []
    for dt in dtypes:
        for sweep, value, n, e, causal, reg, scale, tiles in plan:
            pr = Problem(shape=Shape(batch, h, h, n, n, e, e), dtype=dt, regime=reg,
                         mask=MaskSpec(causal="top_left" if causal else False), scale=scale, seed=seed + len(out))
            out.append(Cell(sweep, value, Case(problem=pr), tiles))
    return out


def with_tile(cell: Cell, tile) -> Case:
    """The cell's case run with ``tile`` (a dict, or None for the target's default)."""
    return replace(cell.case, tile=tile)

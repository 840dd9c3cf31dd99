"""flashproof.properties: Hypothesis strategies, targets, the property suite and its pytest plugin.

Public API (imported lazily: the pytest plugin imports this package in every pytest run):

- ``Target``, ``from_sdpa``   the kernel under test and what it declares (targets.py)
- ``load_target``                            a target named "module:attr[@adapter]" (loading.py)
- ``default_target``, ``torch_sdpa``, ``tiled_peer``   the built-in targets (builtin_targets.py)
- ``run_suite(target, *, profile, select, fail_fast) -> SuiteResult``   (suite.py)
- ``replay(name, case, *, target)``          re-run one falsifying example (suite.py)
- ``PROPERTIES``                             the registry, name -> Property (registry.py)
- ``Case``, ``Problem``, ``Shape``, ``Regime``, ``MaskSpec``   the value objects (cases.py)
- ``flash_attn_style``, ``fla_style``, ``blhd``   adapters of FlashAttention-style APIs (adapters.py)
- ``strategies``                             shapes, regimes, masks, values, tilings, problems

The modules, from the bottom up: cases (value objects), inputs (tensors of a problem),
strategies, profiles, domain (what a target takes, as the strategies draw inside it), targets,
adapters, loading, peers, builtin_targets, sdpa_backends and flex (FlexAttention), oracle (the
judge), registry, memory (device memory), outcomes, context, timeouts, state, hypothesis_internals,
length_budget, gen (shared builders), the property catalogues props_*.py (props_nan: the properties
judged by the target's NaN policy) and pins.py, suite, then check (the CLI command) and plugin (pytest).
"""
import importlib

__all__ = ["Target", "TargetLoadError", "load_target", "from_sdpa", "run_suite", "run_property", "replay",
           "SuiteResult", "Outcome", "PROPERTIES", "property_names", "tiled_peer", "torch_sdpa", "default_target",
           "Case", "Problem", "Shape", "Regime", "MaskSpec", "flash_attn_style", "fla_style", "blhd"]

_LAZY = {
    "Target": "targets", "TargetLoadError": "targets", "load_target": "loading", "from_sdpa": "targets",
    "tiled_peer": "builtin_targets", "torch_sdpa": "builtin_targets", "default_target": "builtin_targets",
    "run_suite": "suite", "run_property": "suite", "replay": "suite", "property_names": "suite",
    "SuiteResult": "outcomes", "Outcome": "outcomes",
    "Case": "cases", "Problem": "cases", "Shape": "cases", "Regime": "cases", "MaskSpec": "cases",
    "flash_attn_style": "adapters", "fla_style": "adapters", "blhd": "adapters",
}
_RENAMED = {"property_names": "select_properties"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), _RENAMED.get(name, name))
    if name == "PROPERTIES":
        importlib.import_module(f"{__name__}.suite").load_properties()
        return importlib.import_module(f"{__name__}.registry").PROPERTIES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""flashproof.properties: Hypothesis strategies, targets, the property suite and its pytest plugin.

Public API (imported lazily: the pytest plugin imports this package in every pytest run):

- ``Target``, ``load_target``              the kernel under test and what it declares
- ``flash_attn_style``, ``fla_style``, ``blhd``  adapters of FlashAttention-style APIs (adapters.py)
- ``run_suite(target, *, profile, select, fail_fast) -> SuiteResult``
- ``replay(name, case, *, target)``         re-run one falsifying example
- ``PROPERTIES``                            the registry (name -> Property)
- ``strategies``                            shapes, regimes, masks, values, tilings, problems
"""
import importlib

__all__ = ["Target", "TargetLoadError", "load_target", "run_suite", "run_property", "replay", "SuiteResult",
           "Outcome", "PROPERTIES", "property_names", "tiled_peer", "torch_sdpa", "default_target", "flash_attn_style",
           "fla_style", "blhd"]

_LAZY = {
    "Target": "targets", "TargetLoadError": "targets", "load_target": "targets", "tiled_peer": "targets",
    "torch_sdpa": "targets", "default_target": "targets",
    "flash_attn_style": "adapters", "fla_style": "adapters", "blhd": "adapters",
    "run_suite": "suite", "run_property": "suite", "replay": "suite", "SuiteResult": "suite", "Outcome": "suite",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name == "PROPERTIES":
        suite = importlib.import_module(f"{__name__}.suite")
        suite._load_properties()
        return suite.PROPERTIES
    if name == "property_names":
        suite = importlib.import_module(f"{__name__}.suite")
        return suite.select_properties
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

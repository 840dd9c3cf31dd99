"""Loading a target named on the command line: "module:attr[@adapter]", a Target, a factory or an
SDPA callable, with the module found in the current directory too (as ``python -m`` would).

Kept apart from targets.py because it applies the adapters (adapters.py), which build Targets.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect

from .adapters import detect, get_adapter
from .targets import Target, TargetLoadError, from_sdpa

__all__ = ["load_target", "DEFAULT_TARGET"]

#: What ``--flashproof-target`` means when it is not given: flashproof's own Triton kernel.
DEFAULT_TARGET = "flashproof.properties.builtin_targets:default_target"
#: Targets named before the built-in ones moved to builtin_targets.py (saved reproducer files name
#: them): load_target reads the old name as the new one.
_MOVED_TARGETS = {f"flashproof.properties.targets:{n}": f"flashproof.properties.builtin_targets:{n}"
                  for n in ("default_target", "torch_sdpa", "tiled_peer")}


def load_target(spec, *, adapter=None) -> Target:
    """A Target from "module:attr" (or from a Target / factory / SDPA callable object).

    ``attr`` may be dotted. "module:attr@NAME" (or ``adapter=NAME``) applies the adapter NAME of
    flashproof.properties.adapters to the callable; without one, a callable whose signature is
    FlashAttention-style is adapted by ``adapters.detect``'s rule. A module that is not importable
    is looked for in the current directory too, as ``python -m`` would find it. Raises
    :class:`TargetLoadError` (a ValueError) with the reason when the module does not import, the
    attribute is missing, it is not callable, or the adapter is unknown.
    """
    if spec is None:
        if adapter is not None:
            raise TargetLoadError(f"an adapter ({adapter!r}) needs a target module:attr to apply to")
        spec = DEFAULT_TARGET
    if isinstance(spec, Target):
        if adapter is not None:
            raise TargetLoadError(f"adapter {adapter!r}: {spec.name!r} is already a Target")
        return spec
    if not isinstance(spec, str):
        if callable(spec):
            return _coerce(spec, spec=None, adapter=adapter)
        raise TypeError(f"target must be a 'module:attr' string, a Target or a callable, got {type(spec).__name__}")
    text = spec.strip()
    if "@" in text:
        text, named = (x.strip() for x in text.rsplit("@", 1))
        if adapter is not None and adapter != named:
            raise TargetLoadError(f"target {spec!r} names adapter {named!r}, and adapter={adapter!r} was given too")
        adapter = named
    text = _MOVED_TARGETS.get(text, text)
    if text.count(":") != 1:
        raise TargetLoadError(f"target must be given as 'module:attr' (e.g. "
                              f"'torch.nn.functional:scaled_dot_product_attention'), got {spec!r}")
    modname, attr = text.split(":")
    if not modname or not attr:
        raise TargetLoadError(f"target must be given as 'module:attr', got {spec!r}")
    if adapter is not None:
        get_adapter(adapter)  # an unknown name is said before any import
    try:
        obj = _import_module(modname)
    except Exception as exc:  # any import-time failure is the user's module's, report it
        raise TargetLoadError(f"target {spec!r}: cannot import module {modname!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetLoadError(f"target {spec!r}: module {modname!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, Target) or callable(obj)):
        raise TargetLoadError(f"target {spec!r} is a {type(obj).__name__}, not a Target or a callable")
    return _coerce(obj, spec=text if adapter is None else f"{text}@{adapter}", adapter=adapter)


def _import_module(modname):
    """importlib.import_module, and when the module's top-level package is not found, again with the
    current directory on sys.path (appended, so it never shadows an installed module), as ``python -m
    pytest`` finds a module of the directory it runs in; sys.path is restored if that fails too."""
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        import os
        import sys

        cwd = os.getcwd()
        on_path = {os.path.abspath(p or os.curdir) for p in sys.path if isinstance(p, str)}
        if exc.name != modname.split(".")[0] or cwd in on_path:
            raise
        sys.path.append(cwd)
        importlib.invalidate_caches()
        try:
            return importlib.import_module(modname)
        except ModuleNotFoundError as again:
            if again.name == modname.split(".")[0]:
                sys.path.remove(cwd)
            raise


def _coerce(obj, *, spec, adapter=None) -> Target:
    if adapter is not None:
        fn = get_adapter(adapter)
        if isinstance(obj, Target) or _is_factory(obj):
            raise TargetLoadError(f"adapter {adapter!r} applies to a kernel function (q, k, v, ...); "
                                  f"{spec or obj!r} is {'a Target' if isinstance(obj, Target) else 'a factory'}")
        return fn(obj, spec=spec)
    if isinstance(obj, Target):
        return dataclasses.replace(obj, spec=obj.spec or spec)
    # A zero-argument factory returns a Target; an SDPA callable takes (query, key, value, ...).
    if _is_factory(obj):
        try:
            t = obj()
        except TargetLoadError:
            raise
        except Exception as exc:
            raise TargetLoadError(f"target {spec or obj!r}: the factory raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(t, Target):
            raise TargetLoadError(f"target {spec or obj!r}: a zero-argument factory must return a Target, "
                                  f"got {type(t).__name__}")
        return dataclasses.replace(t, spec=t.spec or spec)
    detected = detect(obj)  # a FlashAttention-style signature; None for torch's SDPA signature
    if detected is not None:
        return get_adapter(detected)(obj, spec=spec)
    return from_sdpa(obj, spec=spec)


def _is_factory(obj) -> bool:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    required = [p for p in sig.parameters.values()
                if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return not required and not any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())

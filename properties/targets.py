"""Targets: the kernel under test, and what it declares it can do.

A target is either a plain callable with torch's ``scaled_dot_product_attention`` signature
(torch's own function included) or a :class:`Target` descriptor that declares capabilities
(LSE, bottom-right causal, window, softcap, tile configs, split-KV decode, paged KV, backward).
The suite exercises each declared capability and reports the others as "not declared".

``load_target("pkg.mod:attr")`` accepts a Target, a zero-argument factory returning one, or an
SDPA callable. This module imports no torch at import time (the pytest plugin imports it).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "Target",
    "Call",
    "OutsideDomain",
    "TargetLoadError",
    "load_target",
    "from_sdpa",
    "torch_sdpa",
    "default_target",
    "tiled_peer",
    "DTYPES",
    "DEFAULT_DTYPES",
    "DEFAULT_TARGET",
    "DECLARE_HINT",
]

#: Storage dtypes the suite knows how to test (names as in torch); float64's bound is the proofs
#: bound at u = 2^-53 (proofs/bounds.py precision_for), its reference the arb one.
DTYPES = ("float16", "bfloat16", "float32", "float64")
#: What a Target declares when it does not say (float64 is opt-in: most kernels do not take it).
DEFAULT_DTYPES = ("float16", "bfloat16", "float32")
#: Appended to the message when a target raises on an input inside its declared domain.
DECLARE_HINT = ("if the target cannot run such inputs by design, declare the constraint in its Target "
                "(causal_equal_lengths, min_lq / min_lk, head_dims, value_dim, dtypes, gqa, attn_mask, or an "
                "`accepts(call)` predicate) and the suite will stay inside it; as declared, this input is in "
                "the target's domain, so raising on it is a violation")
#: What ``--flashproof-target`` means when it is not given: flashproof's own Triton kernel.
DEFAULT_TARGET = "flashproof.properties.targets:default_target"

_ALIGNMENTS = ("top_left", "bottom_right")


class TargetLoadError(ValueError):
    """The target named on the command line cannot be imported or is not a target."""


class OutsideDomain(ValueError):
    """The suite asked a target for a call outside the domain its Target declares (never a
    violation: the property's example is discarded; see :meth:`Target.refusal`)."""


_CAUSAL = (False, "top_left", "bottom_right")


@dataclass(frozen=True)
class Call:
    """One call as a target's domain declaration sees it: sizes, dtype and options, no tensors.

    ``causal`` is False, "top_left" or "bottom_right" (spec's alignment resolved); ``attn_mask``
    is None, "bool" or "additive"; ``grad``: the inputs require gradients (a backward follows).
    Built from a drawn problem (:meth:`of_problem`, at generation time) or from the tensors of
    the actual call (:meth:`of_tensors`, at call time), so one predicate serves both.
    """

    dtype: str
    batch: int = 1
    heads: int = 1
    kv_heads: int = 1
    lq: int = 1
    lk: int = 1
    e: int = 16
    ev: int = 16
    causal: Any = False
    window: Any = None
    attn_mask: Any = None
    softcap: Any = None
    scale: Any = None
    grad: bool = False

    def __post_init__(self):
        if self.causal not in _CAUSAL:
            raise ValueError(f"Call.causal must be one of {_CAUSAL}, got {self.causal!r}")
        if self.attn_mask not in (None, "bool", "additive"):
            raise ValueError(f"Call.attn_mask must be None, 'bool' or 'additive', got {self.attn_mask!r}")

    @classmethod
    def of_problem(cls, problem, *, grad=False) -> "Call":
        """The call a strategies.Problem describes (duck-typed: no import of strategies here)."""
        sh, m = problem.shape, problem.mask
        return cls(dtype=problem.dtype, batch=sh.batch, heads=sh.heads, kv_heads=sh.kv_heads, lq=sh.lq, lk=sh.lk,
                   e=sh.e, ev=sh.ev, causal=m.causal or False, window=_window(m.window), attn_mask=m.attn_mask,
                   softcap=_cap(problem.softcap), scale=problem.scale, grad=bool(grad))

    @classmethod
    def of_tensors(cls, q, k, v, *, causal=False, alignment=None, window=None, attn_mask=None, softcap=None,
                   scale=None) -> "Call":
        """The call of these tensors with spec's options."""
        kind = None
        if attn_mask is not None:
            kind = "bool" if str(getattr(attn_mask, "dtype", "")).endswith("bool") else "additive"
        grad = any(bool(getattr(x, "requires_grad", False)) for x in (q, k, v))
        return cls(dtype=str(q.dtype).replace("torch.", ""), batch=int(q.shape[0]), heads=int(q.shape[1]),
                   kv_heads=int(k.shape[1]), lq=int(q.shape[2]), lk=int(k.shape[2]), e=int(q.shape[-1]),
                   ev=int(v.shape[-1]), causal=_alignment_of(causal, alignment), window=_window(window),
                   attn_mask=kind, softcap=_cap(softcap), scale=scale, grad=grad)


def _alignment_of(causal, alignment):
    if causal is False or causal is None:
        return False
    if causal is True:
        return alignment or "top_left"
    return causal if causal in _ALIGNMENTS else False


def _window(window):
    if window is None:
        return None
    try:
        w = tuple(int(x) for x in window)
    except (TypeError, ValueError):
        return tuple(window) if isinstance(window, (tuple, list)) else window  # the target judges it
    return None if w == (-1, -1) else w


def _cap(softcap):
    if softcap is None or softcap == 0 or softcap == math.inf:
        return None
    return float(softcap)


@dataclass
class Target:
    """Descriptor of an attention kernel under test.

    Exactly one of ``sdpa`` / ``forward`` is required (both is allowed; ``forward`` is then used).

    - ``sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
      enable_gqa=False)``: torch's signature, top-left causal only.
    - ``forward(q, k, v, *, causal, alignment, window, scale, softcap, attn_mask, return_lse,
      **tile)`` -> o or (o, lse); lse natural log, shape (B, H, Lq).
    - ``decode(q, k_cache, v_cache, *, seqlens, block_table, page_size, num_splits, causal,
      window, scale, softcap, return_lse)``: q (B, H, Lq, E); without ``block_table`` the caches
      are (B, Hkv, Lmax, Ev) and row b holds ``seqlens[b]`` valid keys; with it they are
      (num_pages, Hkv, page_size, E) and logical page p of sequence b is physical page
      ``block_table[b, p]``. The suite passes ``causal="bottom_right"`` (aligned to each
      sequence's own length ``seqlens[b]``).

    Capability flags say what the suite may exercise; ``known_deviations`` maps a property
    name to a documented reason (the property still runs; a failure is reported as XFAIL with
    its reproducer, a pass as XPASS).
    """

    name: str
    sdpa: Callable | None = None
    forward: Callable | None = None
    tile_configs: Sequence[Mapping[str, Any]] = ()
    lse: bool = False
    alignments: tuple = ("top_left",)
    window: bool = False
    softcap: bool = False
    attn_mask: bool = False
    gqa: bool = False
    backward: bool = False
    decode: Callable | None = None
    split_range: tuple | None = None
    paged: bool = False
    #: accepts_tile(config, *, head_dim, head_dim_v, dtype) -> bool: whether a tile config fits
    #: these dims (None: every declared config fits every problem).
    accepts_tile: Callable | None = None
    #: page sizes decode accepts (None: any positive size).
    page_sizes: tuple | None = None
    dtypes: tuple = DEFAULT_DTYPES
    devices: tuple = ("cpu",)
    #: accumulator precision the kernel claims: "fp32" (FlashAttention) or "same" (input dtype).
    accumulator: str = "fp32"
    #: storage dtypes whose conversions (P before P@V, the output store) round toward zero
    #: instead of to nearest: their unit roundoff doubles in the bound (the Triton interpreter's bf16).
    round_toward_zero: tuple = ()
    #: exp error in ulps of the accumulator (None: the error model's default).
    c_exp: float | None = None
    #: head dims the kernel accepts (None: any); the suite draws only from these.
    head_dims: tuple | None = None
    #: whether Ev may differ from E.
    value_dim: bool = True
    #: the longest Lq/Lk the suite should use at the ci profile (interpreter cost).
    max_len: int | None = None
    #: The domain: which calls the target accepts (the declaration is the contract: inside it a
    #: raise is a violation; outside it the suite never asks, or discards the example).
    #: Causal attention only with Lq == Lk (torch's flash backend refuses is_causal otherwise).
    causal_equal_lengths: bool = False
    #: the shortest query / key lengths it takes (0: empty sequences too).
    min_lq: int = 0
    min_lk: int = 0
    #: accepts(call: Call) -> True/None (accepted), False or a str reason (refused): any other
    #: limit. The strategies filter drawn problems with it and every call is checked against it.
    accepts: Callable | None = None
    known_deviations: Mapping[str, str] = field(default_factory=dict)
    #: "module:attr" it was loaded from (used in reproducers), if any.
    spec: str | None = None
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"Target.name must be a non-empty str, got {self.name!r}")
        if self.sdpa is None and self.forward is None:
            raise ValueError(f"Target {self.name!r}: give `sdpa` or `forward` (a callable)")
        for fname in ("sdpa", "forward", "decode", "accepts_tile", "accepts"):
            fn = getattr(self, fname)
            if fn is not None and not callable(fn):
                raise TypeError(f"Target.{fname} must be callable, got {type(fn).__name__}")
        self.alignments = tuple(self.alignments or ())
        for a in self.alignments:
            if a not in _ALIGNMENTS:
                raise ValueError(f"Target.alignments: {a!r} is not one of {_ALIGNMENTS}")
        if self.forward is None and "bottom_right" in self.alignments:
            raise ValueError("Target.alignments: an sdpa-only target has top_left causal only "
                             "(give `forward` for bottom_right)")
        if self.forward is None:
            for cap in ("window", "softcap", "lse"):
                if getattr(self, cap):
                    raise ValueError(f"Target.{cap}=True needs `forward` (the SDPA signature has no {cap})")
        self.tile_configs = tuple(dict(c) for c in (self.tile_configs or ()))
        for c in self.tile_configs:
            for key, val in c.items():
                if not isinstance(key, str):
                    raise TypeError(f"Target.tile_configs: keys must be str, got {key!r}")
        if self.accumulator not in ("fp32", "same"):
            raise ValueError(f"Target.accumulator must be 'fp32' or 'same', got {self.accumulator!r}")
        self.dtypes = tuple(str(d).replace("torch.", "") for d in self.dtypes)
        for d in self.dtypes:
            if d not in DTYPES:
                raise ValueError(f"Target.dtypes: {d!r} is not one of {DTYPES}")
        if not self.dtypes:
            raise ValueError("Target.dtypes is empty")
        if self.split_range is not None:
            lo, hi = self.split_range
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ValueError(f"Target.split_range must be (lo, hi) ints with 1 <= lo <= hi, got {self.split_range!r}")
        if (self.split_range is not None or self.paged) and self.decode is None:
            raise ValueError("Target.split_range / paged need `decode`")
        if self.c_exp is not None and not (isinstance(self.c_exp, (int, float)) and self.c_exp >= 0):
            raise ValueError(f"Target.c_exp must be a non-negative number of ulps, got {self.c_exp!r}")
        if self.head_dims is not None:
            self.head_dims = tuple(int(e) for e in self.head_dims)
        self.known_deviations = dict(self.known_deviations or {})
        for name in ("min_lq", "min_lk"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"Target.{name} must be an int >= 0, got {x!r}")
        if not isinstance(self.causal_equal_lengths, bool):
            raise TypeError(f"Target.causal_equal_lengths must be a bool, got {self.causal_equal_lengths!r}")

    # ------------------------------------------------------------------ capabilities
    @property
    def causal(self) -> bool:
        return bool(self.alignments)

    def capabilities(self) -> dict:
        """The declared capabilities, for reports."""
        return {
            "lse": self.lse, "alignments": self.alignments, "window": self.window,
            "softcap": self.softcap, "attn_mask": self.attn_mask, "gqa": self.gqa,
            "backward": self.backward, "decode": self.decode is not None,
            "split_range": self.split_range, "paged": self.paged, "dtypes": self.dtypes,
            "tile_configs": len(self.tile_configs), "accumulator": self.accumulator,
            "causal_equal_lengths": self.causal_equal_lengths, "min_lq": self.min_lq, "min_lk": self.min_lk,
            "accepts": self.accepts is not None,
        }

    # ------------------------------------------------------------------ domain
    def refusal(self, call: Call) -> str | None:
        """Why the declared domain excludes ``call`` (None: the target must run it correctly)."""
        c = call
        if c.dtype not in self.dtypes:
            return f"dtype {c.dtype} is not among the declared dtypes {self.dtypes}"
        if self.head_dims is not None and (c.e not in self.head_dims or c.ev not in self.head_dims):
            return f"head dims E={c.e}, Ev={c.ev} are not all among the declared head_dims"
        if not self.value_dim and c.ev != c.e:
            return f"Ev={c.ev} differs from E={c.e} (declared value_dim=False)"
        if c.heads != c.kv_heads and not self.gqa:
            return f"H={c.heads} != Hkv={c.kv_heads} and the target declares no GQA"
        if c.causal and c.causal not in self.alignments:
            only = " (the target is top-left causal only)" if self.alignments == ("top_left",) else ""
            return f"{c.causal} causal is not among the declared alignments {self.alignments}{only}"
        if c.causal and self.causal_equal_lengths and c.lq != c.lk:
            return f"causal with Lq={c.lq} != Lk={c.lk} (declared causal_equal_lengths=True)"
        if c.lq < self.min_lq or c.lk < self.min_lk:
            return f"Lq={c.lq}, Lk={c.lk} below the declared min_lq={self.min_lq}, min_lk={self.min_lk}"
        if c.window is not None and not self.window:
            return "a window, and the target declares none"
        if c.softcap is not None and not self.softcap:
            return "a softcap, and the target declares none"
        if c.attn_mask is not None and not self.attn_mask:
            return "an attn_mask, and the target declares none"
        if c.grad and not self.backward:
            return "gradients, and the target declares no backward"
        if self.accepts is not None:
            verdict = self.accepts(c)
            if verdict is False:
                return f"refused by {self.name}'s accepts()"
            if isinstance(verdict, str) and verdict:
                return verdict
            if not (verdict is None or verdict is True or verdict == ""):
                raise TypeError(f"{self.name}: accepts() must return True/None, False or a reason str, "
                                f"got {type(verdict).__name__}")
        return None

    def in_domain(self, call: Call) -> bool:
        return self.refusal(call) is None

    def device(self) -> str:
        """The device tensors are built on: the first declared one that exists here."""
        import torch

        for d in self.devices:
            if str(d).startswith("cuda") and torch.cuda.is_available():
                return str(d)
            if str(d) == "cpu":
                return "cpu"
        raise RuntimeError(f"target {self.name!r} declares devices {self.devices}, none available here")

    # ------------------------------------------------------------------ calling
    def __call__(self, q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None,
                 attn_mask=None, return_lse=False, tile=None):
        """Run the target with spec's option names; returns (o, lse or None).

        Only declared options may be passed (the suite never asks for more): an undeclared one
        raises ValueError rather than silently being dropped.
        """
        tile = dict(tile or {})
        why = self.refusal(Call.of_tensors(q, k, v, causal=causal, alignment=alignment, window=window,
                                           attn_mask=attn_mask, softcap=softcap, scale=scale))
        if why is not None:
            raise OutsideDomain(f"target {self.name!r} does not declare this call: {why}")
        if self.forward is not None:
            out = self.forward(q, k, v, causal=causal, alignment=alignment, window=window, scale=scale,
                               softcap=softcap, attn_mask=attn_mask, return_lse=bool(return_lse), **tile)
            if return_lse:
                if not (isinstance(out, tuple) and len(out) == 2):
                    raise TypeError(f"{self.name}.forward(return_lse=True) must return (o, lse), got {type(out).__name__}")
                return out
            return (out[0], None) if isinstance(out, tuple) else (out, None)
        if window is not None and tuple(window) != (-1, -1):
            raise ValueError(f"target {self.name!r} declares no window")
        if softcap not in (None, 0, math.inf):
            raise ValueError(f"target {self.name!r} declares no softcap")
        if return_lse:
            raise ValueError(f"target {self.name!r} declares no lse")
        is_causal = _is_causal(causal, alignment)
        if is_causal and alignment not in (None, "top_left") or causal == "bottom_right":
            raise ValueError(f"target {self.name!r} is top-left causal only")
        if tile:
            raise ValueError(f"target {self.name!r} declares no tile parameters, got {tile}")
        gqa = q.shape[1] != k.shape[1]
        kw = {}
        if gqa:
            kw["enable_gqa"] = True
        if attn_mask is not None and is_causal:
            # torch's signature forbids attn_mask with is_causal: fold causal into the mask.
            attn_mask = _fold_causal(attn_mask, q.shape[2], k.shape[2])
            is_causal = False
        o = self.sdpa(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal, scale=scale, **kw)
        return o, None


def _is_causal(causal, alignment) -> bool:
    return causal is True or causal in _ALIGNMENTS


def _fold_causal(attn_mask, lq, lk):
    import torch

    tri = torch.ones(lq, lk, dtype=torch.bool, device=attn_mask.device).tril()
    if attn_mask.dtype == torch.bool:
        return attn_mask & tri
    return attn_mask.masked_fill(~tri, float("-inf"))


# ---------------------------------------------------------------------- plain SDPA callables
def _accepts(fn, name) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True  # builtins without a signature: assume torch's full signature
    return name in sig.parameters or any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _probe_backward(fn) -> bool:
    """Whether fn's output carries a gradient when its inputs require one (tiny probe)."""
    import torch

    try:
        q = torch.randn(1, 1, 2, 4, requires_grad=True)
        k = torch.randn(1, 1, 2, 4, requires_grad=True)
        v = torch.randn(1, 1, 2, 4, requires_grad=True)
        o = fn(q, k, v)
        return bool(getattr(o, "requires_grad", False))
    except Exception:
        return False


#: Deviations of torch's CPU SDPA (2.13) from spec/README.md, measured on this machine and kept as
#: XFAIL with their reproducer (docs/properties.md, "Known deviations of torch"). A fix in torch
#: shows up as XPASS.
TORCH_CPU_DEVIATIONS: dict = {
    "garbage_in_masked_keys_isolated":
        "torch's CPU SDPA multiplies masked probabilities (0) by V and adds the mask to NaN logits, so NaN/inf "
        "in keys or values that no row attends (beyond the causal diagonal, or in attn_mask=False columns) "
        "leaks into every row (0 * NaN = NaN); the spec drops masked keys",
    "nan_propagates_only_to_attending_rows":
        "torch's CPU SDPA returns 0 (not NaN) for a row whose q contains NaN, and NaN for a fully masked "
        "row whose q is NaN; the spec propagates NaN to exactly the rows that attend it",
    "batch_invariant":
        "torch's CPU SDPA (default dispatch and the math backend, fp32) is not bitwise batch invariant: at "
        "B=2 H=1 Lq=Lk=5 E=24 a row's O differs by 1 ulp from the same row run alone (docs/findings.md F4)",
}
_TORCH_CPU_GRAD_NAN = (
    "torch's CPU SDPA backward returns NaN in dQ/dK/dV at logits near 1e30 (bf16 q, k ~ 1e15: the spread "
    "regime at the gpu profile, e.g. B=2 Lq=Lk=78 E=8) where the exact gradients are finite; the forward is right")
for _name in ("gradients_match_reference", "grad_dk_sums_to_zero", "grad_dv_sums_to_do", "grad_masked_rows_zero"):
    TORCH_CPU_DEVIATIONS[_name] = _TORCH_CPU_GRAD_NAN
del _name


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def from_sdpa(fn, *, name=None, spec=None, backward=None, known_deviations=None) -> Target:
    """Wrap a callable with torch's SDPA signature as a Target with only what it offers:
    top-left causal, attn_mask (bool and additive), scale, GQA through ``enable_gqa``.

    ``backward=None`` probes whether the output carries gradients.
    """
    if not callable(fn):
        raise TypeError(f"an SDPA target must be callable, got {type(fn).__name__}")
    import torch

    name = name or spec or getattr(fn, "__qualname__", None) or repr(fn)
    is_torch = fn is torch.nn.functional.scaled_dot_product_attention
    if backward is None:
        backward = _probe_backward(fn)
    deviations = dict(TORCH_CPU_DEVIATIONS if is_torch and not _cuda() else {})
    deviations.update(known_deviations or {})
    return Target(
        name=name,
        sdpa=fn,
        alignments=("top_left",),
        attn_mask=_accepts(fn, "attn_mask"),
        gqa=_accepts(fn, "enable_gqa"),
        backward=bool(backward),
        accumulator="fp32",
        devices=("cuda", "cpu"),  # the GPU when there is one
        known_deviations=deviations,
        spec=spec,
        description="plain SDPA callable",
    )


def torch_sdpa() -> Target:
    """torch.nn.functional.scaled_dot_product_attention as a target (top-left causal)."""
    import torch

    return from_sdpa(torch.nn.functional.scaled_dot_product_attention,
                     name="torch.nn.functional:scaled_dot_product_attention",
                     spec="torch.nn.functional:scaled_dot_product_attention", backward=True)


def tiled_peer() -> Target:
    """A correct tiled FlashAttention in torch (properties/peers.py): every capability."""
    from .peers import tiled_peer_target

    return tiled_peer_target()


def default_target() -> Target:
    """flashproof's own Triton kernel (flashproof.kernels), with every capability it declares."""
    try:
        kernels = importlib.import_module("flashproof.kernels")
    except ImportError as exc:
        raise TargetLoadError(f"default target: cannot import flashproof.kernels ({exc})") from exc
    factory = getattr(kernels, "target", None)
    if callable(factory):
        t = factory()
        if isinstance(t, Target):
            return t
    from .kernel_target import kernel_target

    return kernel_target(kernels)


# ---------------------------------------------------------------------- load_target
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
    if text.count(":") != 1:
        raise TargetLoadError(f"target must be given as 'module:attr' (e.g. "
                              f"'torch.nn.functional:scaled_dot_product_attention'), got {spec!r}")
    modname, attr = text.split(":")
    if not modname or not attr:
        raise TargetLoadError(f"target must be given as 'module:attr', got {spec!r}")
    if adapter is not None:
        from .adapters import get_adapter

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
        from .adapters import get_adapter

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
    from .adapters import detect, get_adapter

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

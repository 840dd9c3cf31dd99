"""Targets: the kernel under test, and what it declares it can do.

A target is either a plain callable with torch's ``scaled_dot_product_attention`` signature
(torch's own function included) or a :class:`Target` descriptor that declares capabilities
(LSE, bottom-right causal, window, softcap, tile configs, split-KV decode, paged KV, backward)
and its domain (``domain.Call``: the calls it takes). The suite exercises each declared
capability and reports the others as "not declared". The built-in targets (flashproof's kernel,
torch, the tiled peer) are in builtin_targets.py.

Loading one by name (``load_target``) is loading.py's. This module imports no torch at import time
(the pytest plugin imports it).
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from flashproof.spec import ALIGNMENTS, dtype_name

from .accumulators import declared_accumulator
from .cases import DEFAULT_DTYPES, DTYPES
from .domain import DECLARE_HINT, Call, OutsideDomain

__all__ = [
    "Target",
    "NAN_POLICIES",
    "EMPTY_ROW_POLICIES",
    "Call",
    "OutsideDomain",
    "TargetLoadError",
    "from_sdpa",
    "DECLARE_HINT",
    "TORCH_CPU_DEVIATIONS",
]

#: The NaN policies a Target may declare (spec/README.md, "NaN and inf policy").
NAN_POLICIES = ("strict", "ieee")
#: What a Target may declare about a fully masked row (spec/README.md, "Fully masked rows"): "zero", spec's
#: O = 0 and LSE = -inf (zero gradients); "unspecified", no claim on that row's O and LSE (NaN included).
EMPTY_ROW_POLICIES = ("zero", "unspecified")


class TargetLoadError(ValueError):
    """The target named on the command line cannot be imported or is not a target."""


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
    #: accumulation model the kernel claims, by any name ``flashproof.proofs.precision_for`` accepts
    #: ("fp32" IEEE round to nearest, "fp32_rz", "same" (the input dtype), "fp64", or a matrix unit
    #: "fp32_blockfma_k<K>_x<X>_<rn|rz>"): one name for every declared dtype, or a dict {dtype: name}
    #: covering each declared dtype (fp32 inputs on IEEE FMAs, fp16/bf16 on tensor cores).
    accumulator: Any = "fp32"
    #: the kernel combines partial results (split-KV, flash-decoding) through their LSEs: the bound
    #: then covers one LSE-combine level (proofs.running_forward_bound(lse_combine=True)), and has no
    #: claim at logits whose LSE rounding may overflow the combine's weights. False: every merge
    #: combines raw (m, l, acc) states (spec.merge), as flashproof's kernels and the tiled peer do.
    lse_combine: bool = False
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
    #: raise is a violation; outside it the suite never asks). The strategies draw inside it
    #: (domain.Domain); a property that needs a call outside it is "not applicable".
    #: Causal calls only (in one of ``alignments``); a target without causal declares alignments=().
    causal_only: bool = False
    #: Lq == Lk on every call.
    equal_lengths: bool = False
    #: Lq == Lk on causal calls (torch's flash backend refuses is_causal otherwise).
    causal_equal_lengths: bool = False
    #: Lq and Lk are multiples of this (e.g. 64 or 128 for Triton-tutorial-derived kernels).
    length_multiple: int = 1
    #: the shortest query / key lengths it takes (0: empty sequences too), and the longest (None: any).
    min_lq: int = 0
    min_lk: int = 0
    max_lq: int | None = None
    max_lk: int | None = None
    #: accepts(call: Call) -> True/None (accepted), False or a str reason (refused): any other
    #: limit. The strategies filter drawn problems with it and every call is checked against it.
    accepts: Callable | None = None
    #: The claim that a row's O and LSE are bitwise the same whatever batch it runs in (property
    #: batch_invariant): true of a kernel whose schedule never depends on the batch size; not of torch's
    #: CPU SDPA or a plain torch matmul (their BLAS path changes with it, docs/findings.md F4), nor of
    #: kernels that pick split-KV counts from the grid size. Plain SDPA callables and adapters do not claim it.
    batch_invariant: bool = True
    #: What a non-finite value at a masked-but-in-bounds key may do (NAN_POLICIES, spec/README.md):
    #: "strict", spec's own (masked keys are dropped, never multiplied by 0); "ieee", a dense P@V (a
    #: masked P is an exact 0 that may multiply a NaN/inf, and an empty row's NaN query may reach it).
    nan_policy: str = "strict"
    #: What the kernel claims for a row with no allowed key (EMPTY_ROW_POLICIES, spec/README.md "Fully masked
    #: rows"): "zero", spec's O = 0 and LSE = -inf; "unspecified", no claim on that row's O and LSE (any value,
    #: NaN included): the suite then judges every other row as before, and that an empty row affects no other.
    empty_rows: str = "zero"
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
            if a not in ALIGNMENTS:
                raise ValueError(f"Target.alignments: {a!r} is not one of {ALIGNMENTS}")
        if self.forward is None and "bottom_right" in self.alignments:
            raise ValueError("Target.alignments: an sdpa-only target has top_left causal only "
                             "(give `forward` for bottom_right)")
        if self.forward is None:
            for cap in ("window", "softcap", "lse"):
                if getattr(self, cap):
                    raise ValueError(f"Target.{cap}=True needs `forward` (the SDPA signature has no {cap})")
        self.tile_configs = tuple(dict(c) for c in (self.tile_configs or ()))
        for c in self.tile_configs:
            for key in c:
                if not isinstance(key, str):
                    raise TypeError(f"Target.tile_configs: keys must be str, got {key!r}")
        self.dtypes = tuple(dtype_name(d, strict=False) for d in self.dtypes)
        for d in self.dtypes:
            if d not in DTYPES:
                raise ValueError(f"Target.dtypes: {d!r} is not one of {DTYPES}")
        if not self.dtypes:
            raise ValueError("Target.dtypes is empty")
        self.accumulator = _check_accumulator(self.accumulator, self.dtypes)
        if not isinstance(self.lse_combine, bool):
            raise TypeError(f"Target.lse_combine must be a bool, got {self.lse_combine!r}")
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
            if not self.head_dims or min(self.head_dims) < 1:
                raise ValueError(f"Target.head_dims must be positive ints (None: any), got {self.head_dims!r}")
        self.known_deviations = dict(self.known_deviations or {})
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"Target.nan_policy must be one of {NAN_POLICIES} ('strict': masked keys are dropped, "
                             f"as spec says; 'ieee': a dense P @ V, where a masked P = 0 may multiply a NaN), "
                             f"got {self.nan_policy!r}")
        if self.empty_rows not in EMPTY_ROW_POLICIES:
            raise ValueError(f"Target.empty_rows must be one of {EMPTY_ROW_POLICIES} ('zero': a row with no allowed key "
                             f"gives O = 0 and LSE = -inf, as spec says; 'unspecified': the kernel makes no claim on "
                             f"such a row's O and LSE), got {self.empty_rows!r}")
        self._check_domain()

    def _check_domain(self):
        """Each domain declaration is well-typed, and together they admit at least one call:
        contradictions (min above max, no multiple of length_multiple in range, causal_only
        without an alignment, equal lengths over disjoint ranges) are refused here, not found
        later as a property that can draw nothing."""
        for name in ("causal_only", "equal_lengths", "causal_equal_lengths", "batch_invariant"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Target.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("min_lq", "min_lk"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                raise ValueError(f"Target.{name} must be an int >= 0, got {x!r}")
        for name in ("max_lq", "max_lk"):
            x = getattr(self, name)
            if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
                raise ValueError(f"Target.{name} must be an int >= 1 or None (any length), got {x!r}")
        m = self.length_multiple
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"Target.length_multiple must be an int >= 1, got {m!r}")
        if self.causal_only and not self.alignments:
            raise ValueError("Target.causal_only=True needs a causal alignment in Target.alignments (a target with "
                             "no causal attention declares alignments=() instead)")
        spans = {}
        for axis in ("q", "k"):
            lo, hi = getattr(self, f"min_l{axis}"), getattr(self, f"max_l{axis}")
            if hi is not None and lo > hi:
                raise ValueError(f"Target.min_l{axis}={lo} > max_l{axis}={hi}: no length is in the declared domain")
            first = -(-max(lo, 1) // m) * m  # the shortest non-empty length
            if hi is not None and first > hi:
                raise ValueError(f"Target: no L{axis} in [{lo}, {hi}] is a non-zero multiple of length_multiple={m} "
                                 f"(the first one, {first}, is above max_l{axis}={hi})")
            spans[axis] = (first, hi)
        square = self.equal_lengths or (self.causal_only and self.causal_equal_lengths)
        if square:
            lo = max(spans["q"][0], spans["k"][0])
            his = [h for h in (spans["q"][1], spans["k"][1]) if h is not None]
            if his and lo > min(his):
                why = "equal_lengths" if self.equal_lengths else "causal_only with causal_equal_lengths"
                raise ValueError(f"Target: {why} needs Lq == Lk, and the declared ranges (min_lq={self.min_lq}, "
                                 f"max_lq={self.max_lq}, min_lk={self.min_lk}, max_lk={self.max_lk}, "
                                 f"length_multiple={m}) share no non-zero length")

    # ------------------------------------------------------------------ capabilities
    @property
    def causal(self) -> bool:
        return bool(self.alignments)

    def tile_fits(self, tile, *, head_dim, head_dim_v, dtype) -> bool:
        """Whether the tile config ``tile`` (a mapping or items) fits these head dims and dtype (a torch
        dtype) by the target's ``accepts_tile``; True without a tile or without a declared predicate."""
        if self.accepts_tile is None or not tile:
            return True
        return bool(self.accepts_tile(dict(tile), head_dim=int(head_dim), head_dim_v=int(head_dim_v), dtype=dtype))

    def accumulator_for(self, dtype) -> str:
        """The accumulator name declared for inputs of ``dtype``."""
        acc = self.accumulator
        if isinstance(acc, str):
            return acc
        d = dtype_name(dtype, strict=False)
        if d not in acc:
            raise ValueError(f"target {self.name!r} declares no accumulator for {d} (declared: {sorted(acc)})")
        return acc[d]

    def capabilities(self) -> dict:
        """The declared capabilities, for reports."""
        return {
            "lse": self.lse, "alignments": self.alignments, "window": self.window,
            "softcap": self.softcap, "attn_mask": self.attn_mask, "gqa": self.gqa,
            "backward": self.backward, "decode": self.decode is not None,
            "split_range": self.split_range, "paged": self.paged, "dtypes": self.dtypes,
            "tile_configs": len(self.tile_configs), "accumulator": self.accumulator if isinstance(self.accumulator, str) else dict(self.accumulator),
            "lse_combine": self.lse_combine,
            "causal_only": self.causal_only, "equal_lengths": self.equal_lengths,
            "causal_equal_lengths": self.causal_equal_lengths, "length_multiple": self.length_multiple,
            "min_lq": self.min_lq, "min_lk": self.min_lk, "max_lq": self.max_lq, "max_lk": self.max_lk,
            "accepts": self.accepts is not None, "nan_policy": self.nan_policy, "empty_rows": self.empty_rows,
            "batch_invariant": self.batch_invariant,
        }

    # ------------------------------------------------------------------ domain
    def refusal(self, call: Call) -> str | None:
        """Why the declared domain excludes ``call`` (None: the target must run it correctly)."""
        return self.refusal_detail(call)[0]

    def refusal_detail(self, call: Call):
        """(why the domain excludes ``call`` or None, whether the reason is the accepts() predicate's: the
        strategies draw inside the declared fields, so only that predicate's refusals are expected)."""
        why = self._field_refusal(call)
        if why is not None:
            return why, False
        if self.accepts is not None:
            verdict = self.accepts(call)
            if verdict is False:
                return f"refused by {self.name}'s accepts()", True
            if isinstance(verdict, str) and verdict:
                return verdict, True
            if not (verdict is None or verdict is True or verdict == ""):
                raise TypeError(f"{self.name}: accepts() must return True/None, False or a reason str, "
                                f"got {type(verdict).__name__}")
        return None, False

    def _field_refusal(self, call: Call) -> str | None:
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
        if self.causal_only and not c.causal:
            return f"non-causal attention (declared causal_only=True, alignments {self.alignments})"
        if self.equal_lengths and c.lq != c.lk:
            return f"Lq={c.lq} != Lk={c.lk} (declared equal_lengths=True)"
        if c.causal and self.causal_equal_lengths and c.lq != c.lk:
            return f"causal with Lq={c.lq} != Lk={c.lk} (declared causal_equal_lengths=True)"
        m = self.length_multiple
        if c.lq % m or c.lk % m:
            return f"Lq={c.lq}, Lk={c.lk} are not both multiples of the declared length_multiple={m}"
        if c.lq < self.min_lq or c.lk < self.min_lk:
            return f"Lq={c.lq}, Lk={c.lk} below the declared min_lq={self.min_lq}, min_lk={self.min_lk}"
        if (self.max_lq is not None and c.lq > self.max_lq) or (self.max_lk is not None and c.lk > self.max_lk):
            return f"Lq={c.lq}, Lk={c.lk} above the declared max_lq={self.max_lq}, max_lk={self.max_lk}"
        if c.window is not None and not self.window:
            return "a window, and the target declares none"
        if c.softcap is not None and not self.softcap:
            return "a softcap, and the target declares none"
        if c.attn_mask is not None and not self.attn_mask:
            return "an attn_mask, and the target declares none"
        if c.grad and not self.backward:
            return "gradients, and the target declares no backward"
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
        call = Call.of_tensors(q, k, v, causal=causal, alignment=alignment, window=window, attn_mask=attn_mask,
                               softcap=softcap, scale=scale)
        why, by_accepts = self.refusal_detail(call)
        if why is not None:
            raise OutsideDomain(f"target {self.name!r} does not declare this call: {why}", by_fields=not by_accepts)
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


def _check_accumulator(acc, dtypes):
    """The declared accumulator, validated by proofs' own check (precision_for) for every declared
    dtype: a name, or a dict {dtype: name} whose keys cover the declared dtypes."""
    from flashproof.proofs import precision_for

    if isinstance(acc, str):
        table = {d: acc for d in dtypes}
    elif isinstance(acc, Mapping):
        table = {}
        for key, name in acc.items():
            d = dtype_name(key, strict=False)
            if d not in DTYPES:
                raise ValueError(f"Target.accumulator: key {key!r} is not one of {DTYPES}")
            if not isinstance(name, str):
                raise TypeError(f"Target.accumulator[{d!r}] must be an accumulator name (str), got {name!r}")
            table[d] = name
        missing = [d for d in dtypes if d not in table]
        if missing:
            raise ValueError(f"Target.accumulator declares no model for the declared dtypes {missing}")
    else:
        raise TypeError(f"Target.accumulator must be an accumulator name or a dict {{dtype: name}}, got {acc!r}")
    for d, name in table.items():
        try:
            precision_for(d, accumulator=name)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"Target.accumulator for {d}: {exc}") from None
    return acc if isinstance(acc, str) else table


def _is_causal(causal, alignment) -> bool:
    return causal is True or causal in ALIGNMENTS


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


#: Deviations of torch's CPU SDPA (2.13) from spec/README.md under the policy a plain SDPA callable is
#: judged by (nan_policy="ieee": its P = 0 times a NaN value at a masked key is not a deviation), measured
#: on this machine and kept as XFAIL with their reproducer (docs/properties.md, "Known deviations of
#: torch"). A fix in torch shows up as XPASS.
TORCH_CPU_DEVIATIONS: dict = {
    "nan_propagates_ieee":
        "torch's CPU SDPA returns 0 (not NaN) for a row whose q contains NaN although the row attends keys: a "
        "NaN in an allowed input must reach the rows that attend it, under either NaN policy",
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


def from_sdpa(fn, *, name=None, spec=None, backward=None, known_deviations=None, nan_policy="ieee",
              batch_invariant=False, empty_rows="zero", **declare) -> Target:
    """Wrap a callable with torch's SDPA signature as a Target with only what it offers:
    top-left causal, attn_mask (bool and additive), scale, GQA through ``enable_gqa``.

    ``backward=None`` probes whether the output carries gradients. ``nan_policy`` defaults to
    "ieee": what torch's SDPA and a plain ``softmax(s) @ v`` do (a masked P = 0 may multiply a NaN
    value); declare "strict" for a kernel that drops masked keys. ``batch_invariant`` is not
    claimed by default (torch's batched CPU matmul changes a row's rounding with the batch size,
    docs/findings.md F4): declare True to have it checked. ``empty_rows`` defaults to spec's "zero" (a
    fully masked row gives O = 0, LSE = -inf); "unspecified" for a kernel that makes no claim there
    (torch documents none; its cuDNN backend gives a finite non-zero O). Other Target fields (the domain:
    ``causal_only``, ``equal_lengths``, ``length_multiple``, ``min_lq`` ... ``max_lk``, ``head_dims``,
    ``dtypes``, ``accepts``; ``devices``, ...) through ``**declare``.
    """
    own = {"name", "sdpa", "forward", "spec"}
    bad = sorted(set(declare) - ({f.name for f in dataclasses.fields(Target)} - own))
    if bad:
        raise TypeError(f"from_sdpa: unknown Target field(s) {bad} (or set by from_sdpa itself: {sorted(own)})")
    if not callable(fn):
        raise TypeError(f"an SDPA target must be callable, got {type(fn).__name__}")
    import torch

    name = name or spec or getattr(fn, "__qualname__", None) or repr(fn)
    is_torch = fn is torch.nn.functional.scaled_dot_product_attention
    if backward is None:
        backward = _probe_backward(fn)
    deviations = dict(TORCH_CPU_DEVIATIONS if is_torch and not _cuda() else {})
    deviations.update(known_deviations or {})
    fields = dict(
        alignments=("top_left",),
        attn_mask=_accepts(fn, "attn_mask"),
        gqa=_accepts(fn, "enable_gqa"),
        backward=bool(backward),
        # the device's default model: tensor cores for fp16/bf16 on a GPU (accumulators.py)
        accumulator=declared_accumulator(declare.get("dtypes", DEFAULT_DTYPES), cuda=_cuda(), who=name),
        devices=("cuda", "cpu"),  # the GPU when there is one
        known_deviations=deviations,
        nan_policy=nan_policy,
        empty_rows=empty_rows,
        batch_invariant=batch_invariant,
        description="plain SDPA callable",
    )
    return Target(name=name, sdpa=fn, spec=spec, **{**fields, **declare})

"""Adapters: FlashAttention-style kernels as Targets, without hand-written glue.

- :func:`flash_attn_style` — the ``flash_attn_func`` convention (flash-attn 2 and 3, and the
  Triton ports that copy it): (B, L, H, D) tensors, K/V with H_kv heads, ``softmax_scale``,
  ``causal`` aligned bottom-right, ``window_size=(left, right)`` with -1 unbounded, ``softcap``
  (0 = none), the LSE as ``softmax_lse`` (B, H, Lq) in natural log, returned with
  ``return_attn_probs=True`` as ``(out, softmax_lse, S_dmask)`` (flash-attn 2) or
  ``(out, softmax_lse)`` (flash-attn 3 >= 2025-08), or always as ``(out, softmax_lse)``
  (flash-attn 3 before 2025-07) — told apart by the signature and the returned type.
- :func:`fla_style` — flash-linear-attention's ``parallel_attn(q, k, v, g=None, scale=None,
  window_size=None, cu_seqlens=None, ...)``: (B, T, H, D), causal only with one length T, an int
  window (keys i - window_size + 1 .. i), no LSE.
- :func:`blhd` — a kernel with torch's SDPA signature on (B, L, H, D) tensors.

Each returns a :class:`~flashproof.properties.targets.Target` that declares only what the
kernel's signature and its probed return offer; anything the adapter cannot express is refused
(OutsideDomain / a clear TypeError), never computed as something else. ``ADAPTERS`` names them
for ``--flashproof-adapter`` / ``flashproof check --adapter``; :func:`detect` is the rule used
when no adapter is named. No torch import at module level (the pytest plugin loads targets).
"""
from __future__ import annotations

import dataclasses
import inspect
import math

from .accumulators import declared_accumulator
from .targets import Target, TargetLoadError, OutsideDomain, _accepts, from_sdpa

__all__ = ["flash_attn_style", "fla_style", "blhd", "ADAPTERS", "adapter_names", "get_adapter", "detect",
           "with_adapter", "FA_HEAD_DIMS", "ADAPTER_NAN_POLICY"]

#: Head dims flash-attn 2 takes (any d <= 256: its wrapper pads d to a multiple of 8).
FA_HEAD_DIMS = tuple(range(1, 257))
#: Parameter names read as the softmax scale, and as the flag that returns the LSE.
_SCALE_NAMES = ("softmax_scale", "scale", "sm_scale")
_LSE_FLAGS = ("return_attn_probs", "return_softmax_lse", "return_lse")
#: Target fields an adapter sets itself (the rest may be declared through ``**declare``).
_OWN = {"name", "sdpa", "forward", "lse", "alignments", "window", "softcap", "attn_mask", "gqa", "backward",
        "dtypes", "devices", "head_dims", "value_dim", "accepts", "known_deviations", "spec", "description",
        "min_lq", "min_lk", "nan_policy"}
_BLHD_OWN = {"name", "sdpa", "forward", "lse", "alignments", "window", "softcap", "attn_mask", "gqa", "backward",
             "known_deviations", "spec", "description", "nan_policy"}
#: What the adapters declare unless told otherwise: flash-attn, FlexAttention, fla and most ports compute
#: P @ V densely, a masked P being an exact 0 (spec/README.md, "NaN and inf policy").
ADAPTER_NAN_POLICY = "ieee"
#: ... and they do not claim bitwise batch invariance (flash-attn picks its split-KV count from the grid
#: size); ``batch_invariant=True`` through ``**declare`` has it checked.
ADAPTER_DEFAULTS = {"batch_invariant": False}


# ---------------------------------------------------------------------------------------- signatures
def _params(fn) -> dict | None:
    """fn's explicitly named parameters (never **kwargs / *args), or None without a signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _n_required_positional(params) -> int:
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params.values())


def detect(fn) -> str | None:
    """The adapter a callable's signature calls for, or None (then it is an SDPA callable).

    Only explicitly named parameters count (never ``**kwargs``), and exactly three required
    positional ones (q, k, v): packed (qkv / kv) and varlen variants do not match.
    - "flash_attn": ``softmax_scale`` and ``causal``, and neither ``attn_mask`` nor ``is_causal``;
    - "fla": ``scale``, ``window_size`` and ``cu_seqlens``, and none of ``causal``,
      ``softmax_scale``, ``attn_mask``, ``is_causal``.
    torch's SDPA (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) has
    ``attn_mask`` and ``is_causal`` and lacks ``softmax_scale``, ``causal`` and ``cu_seqlens``, so
    neither rule can take it (and its builtin form has no signature: None).
    """
    params = _params(fn)
    if params is None or _n_required_positional(params) != 3:
        return None
    names = set(params)
    sdpa_words = {"attn_mask", "is_causal"}
    if {"softmax_scale", "causal"} <= names and not names & sdpa_words:
        return "flash_attn"
    if {"scale", "window_size", "cu_seqlens"} <= names and not names & (sdpa_words | {"causal", "softmax_scale"}):
        return "fla"
    return None


# ---------------------------------------------------------------------------------------- shared
def _who(fn, name):
    return name or getattr(fn, "__qualname__", None) or repr(fn)


def _signature(adapter: str, fn, name):
    """(parameters, who) of the kernel ``fn`` an adapter wraps; the adapter reads its options from the
    signature, so a non-callable or uninspectable ``fn`` is refused here."""
    if not callable(fn):
        raise TypeError(f"{adapter}: fn must be callable, got {type(fn).__name__}")
    params = _params(fn)
    if params is None:
        raise TargetLoadError(f"{adapter}: {_who(fn, name)} has no inspectable signature; the adapter reads its "
                              f"options from it")
    return params, _who(fn, name)


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def _own_or_declared(declare, adapter, own=None):
    own = _OWN if own is None else own
    bad = sorted(set(declare) - ({f.name for f in dataclasses.fields(Target)} - own))
    if bad:
        raise TypeError(f"{adapter}: unknown or adapter-set declaration(s) {bad}; the adapter sets "
                        f"{sorted(own)} itself (some of them are its own keyword arguments)")
    return dict(declare)


def _bhld_out(o, q, v, who, layout="(B, L, H, D)"):
    """The kernel's (B, Lq, H, Ev) output as the suite's (B, H, Lq, Ev) view, checked."""
    if not _is_tensor(o):
        raise TypeError(f"{who} returned {type(o).__name__} for out, expected a torch.Tensor {layout}")
    want = (q.shape[0], q.shape[2], q.shape[1], v.shape[-1])
    if tuple(o.shape) != tuple(want):
        raise TypeError(f"{who} returned out of shape {tuple(o.shape)}, expected {layout} = {tuple(want)}")
    return o.transpose(1, 2)


def _valid_window(window) -> bool:
    try:
        return all(int(w) >= -1 for w in window)
    except (TypeError, ValueError):
        return False


def _combine(domain, user):
    """accepts() of the adapter's own domain, then the user's."""
    if user is None:
        return domain

    def accepts(call):
        why = domain(call)
        return why if why else user(call)
    return accepts


def _probe_inputs(t: Target, *, lq=8, lk=8, grad=False):
    import torch

    e = next((d for d in (64, 32, 16) if t.head_dims is None or d in t.head_dims), None)
    e = e or min(t.head_dims)
    g = torch.Generator().manual_seed(0)
    dt = getattr(torch, t.dtypes[0])
    dev = t.device()
    mk = lambda n: torch.randn(1, 2, n, e, generator=g).to(dt).to(dev).requires_grad_(grad)  # noqa: E731
    return mk(lq), mk(lk), mk(lk)


def _probe_backward(t: Target, **call) -> bool:
    """Whether t's output carries gradients on a tiny input of its first dtype, on its device
    (a kernel that raises with gradients on is forward-only)."""
    try:
        q, k, v = _probe_inputs(t, grad=True)
        o, _ = dataclasses.replace(t, backward=True)(q, k, v, **call)
        return bool(getattr(o, "requires_grad", False))
    except Exception:
        return False


# ---------------------------------------------------------------------------------------- flash_attn
def flash_attn_style(fn, *, name=None, spec=None, dtypes=("float16", "bfloat16"), head_dims=FA_HEAD_DIMS,
                     value_dim=False, devices=("cuda", "cpu"), alignment="bottom_right", causal=None, window=None,
                     softcap=None, lse=None, backward=None, lse_layout="bhl", empty_row_lse=math.inf, gqa=True,
                     min_lq=1, min_lk=1, accepts=None, known_deviations=None, description=None,
                     nan_policy=ADAPTER_NAN_POLICY, **declare) -> Target:
    """A kernel with flash-attn's ``flash_attn_func`` convention as a Target.

    What it declares comes from ``fn``'s signature: causal in ``alignment`` (flash-attn: bottom-right)
    when it has ``causal``; a window when it has ``window_size``; softcap when it has ``softcap``;
    the scale through ``softmax_scale`` (or ``scale`` / ``sm_scale``); the LSE when it has a
    ``return_attn_probs`` / ``return_softmax_lse`` / ``return_lse`` flag or returns
    ``(out, softmax_lse)`` anyway. ``lse=None`` / ``backward=None`` probe one tiny call on the
    target's device (declare them to skip the probe). The rest is declared: ``dtypes`` (flash-attn:
    fp16/bf16), ``head_dims``, ``value_dim`` (Ev != E), ``gqa``, ``min_lq``/``min_lk``,
    ``devices``, ``accepts`` (further limits), ``nan_policy`` ("ieee" by default: flash-attn multiplies a
    masked P = 0 by V; "strict" for a port that drops masked keys) and any other Target field through
    ``**declare`` (e.g. ``length_multiple``, ``max_lq`` / ``max_lk``, ``causal_only``, ``equal_lengths``).
    ``causal`` / ``window`` / ``softcap``: None reads the signature; False declares the option absent
    although the parameter exists (a port that raises on it); True requires the parameter.

    ``lse_layout``: "bhl" (flash-attn: (B, H, Lq)) or "blh" ((B, Lq, H)); the LSE must be in
    natural log (a log2 LSE fails the suite's LSE properties: there is no option to convert it,
    because the conversion's rounding is outside the derived bound). ``empty_row_lse``: the value
    the kernel gives a row with no allowed key: flash-attn 2/3 give +inf (mapped to spec's -inf on
    exactly the structurally empty rows; +inf anywhere else stays and fails), -inf is spec's own.

    Every window is aligned to the kernel's diagonal, so a non-causal window with Lq != Lk (which
    the suite aligns top-left) is outside the domain of a bottom-right kernel.
    """
    params, who = _signature("flash_attn_style", fn, name)
    if alignment not in ("bottom_right", "top_left"):
        raise ValueError(f"flash_attn_style: alignment must be 'bottom_right' or 'top_left', got {alignment!r}")
    if lse_layout not in ("bhl", "blh"):
        raise ValueError(f"flash_attn_style: lse_layout must be 'bhl' (B, H, Lq) or 'blh' (B, Lq, H), got {lse_layout!r}")
    if empty_row_lse not in (math.inf, -math.inf):
        raise ValueError(f"flash_attn_style: empty_row_lse must be math.inf or -math.inf, got {empty_row_lse!r}")
    scale_name = next((n for n in _SCALE_NAMES if n in params), None)
    flag = next((n for n in _LSE_FLAGS if n in params), None)
    has = {n: n in params for n in ("causal", "window_size", "softcap", "dropout_p")}
    for opt, param, want in (("causal", "causal", causal), ("window", "window_size", window),
                             ("softcap", "softcap", softcap)):
        if want is True and not has[param]:
            raise TypeError(f"flash_attn_style: {opt}=True, and {who} has no `{param}` parameter")
        if want is False:
            has[param] = False

    kernel = alignment
    # on a GPU its matmuls run on the tensor cores: the device's measured model (accumulators.py). flash-attn
    # 2's forward may also combine split-KV partials through their LSEs (a heuristic on small batches):
    # declare lse_combine=True for a bound that covers it (it has no claim at logits near 1e30 then)
    declare.setdefault("accumulator", declared_accumulator(tuple(dtypes), cuda=_cuda_here(devices), who=who))

    def domain(call):
        if (call.window is not None and _valid_window(call.window) and not call.causal and call.lq != call.lk
                and kernel == "bottom_right"):
            return (f"a non-causal window with Lq={call.lq} != Lk={call.lk}: the suite aligns it top-left, {who} "
                    f"aligns every window bottom-right")
        if call.scale is not None and scale_name is None:
            return f"an explicit scale, and {who} takes no softmax_scale"
        return None

    def forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None, attn_mask=None,
                return_lse=False, **tile):
        return _fa_call(fn, who, q, k, v, causal=causal, alignment=alignment, window=window, scale=scale,
                        softcap=softcap, attn_mask=attn_mask, return_lse=return_lse, kernel=kernel,
                        names=(scale_name, flag, has), lse_layout=lse_layout, empty_row_lse=empty_row_lse, tile=tile)

    t = Target(name=who if spec is None else spec, forward=forward, lse=False, alignments=(kernel,) if has["causal"]
               else (), window=has["window_size"], softcap=has["softcap"], attn_mask=False, gqa=bool(gqa),
               backward=False, dtypes=tuple(dtypes), devices=tuple(devices), head_dims=head_dims,
               value_dim=bool(value_dim), min_lq=min_lq, min_lk=min_lk, accepts=_combine(domain, accepts),
               known_deviations=dict(known_deviations or {}), spec=spec, nan_policy=nan_policy,
               description=description or f"{who} through flashproof.properties.adapters.flash_attn_style",
               **{**ADAPTER_DEFAULTS, **_own_or_declared(declare, "flash_attn_style")})
    if lse is None:
        lse = _probe_fa_lse(fn, who, t, flag, lse_layout)
    if backward is None:
        backward = _probe_backward(t)
    return dataclasses.replace(t, lse=bool(lse), backward=bool(backward))


def _fa_kwargs(mask, *, lq, lk, scale, softcap, return_lse, kernel, names, who):
    """The flash_attn_func keyword arguments for spec's options (only parameters fn names)."""
    from flashproof import spec as spec_mod

    scale_name, flag, has = names
    structural = mask.causal or not mask.is_full
    if structural and lq != lk and mask.alignment != kernel:
        raise OutsideDomain(f"{who}: {mask.alignment} {'causal' if mask.causal else 'window'} with Lq={lq} != "
                            f"Lk={lk}, and the kernel aligns {kernel}")
    kw = {"dropout_p": 0.0} if has["dropout_p"] else {}
    if mask.causal:
        if not has["causal"]:
            raise ValueError(f"{who} takes no `causal`")
        kw["causal"] = True
    if not mask.is_full and not (mask.causal and mask.left == -1):
        if not has["window_size"]:
            raise ValueError(f"{who} takes no `window_size`")
        kw["window_size"] = (mask.left, mask.right)  # right is capped at 0 under causal, as flash-attn does
    if scale is not None:
        if scale_name is None:
            raise ValueError(f"{who} takes no softmax_scale")
        kw[scale_name] = float(scale)
    cap = spec_mod.normalize_softcap(softcap)
    if cap is not None:
        if not has["softcap"]:
            raise ValueError(f"{who} takes no `softcap`")
        kw["softcap"] = cap
    if return_lse and flag is not None:
        kw[flag] = True
    return kw


def _fa_split(out, who, flag, want_lse):
    """(out, softmax_lse or None) of what flash_attn_func returned."""
    if isinstance(out, (tuple, list)):
        if len(out) not in (2, 3) or not _is_tensor(out[0]):
            raise TypeError(f"{who} returned a {type(out).__name__} of {len(out)} items; this adapter knows out, "
                            f"(out, softmax_lse) and (out, softmax_lse, S_dmask)")
        if want_lse and not _is_tensor(out[1]):
            raise TypeError(f"{who} returned softmax_lse = {type(out[1]).__name__}, not a tensor; declare lse=False")
        return out[0], (out[1] if want_lse else None)
    if _is_tensor(out):
        if want_lse:
            asked = f" with {flag}=True" if flag else ""
            raise TypeError(f"{who} returned only out{asked}; declare lse=False")
        return out, None
    raise TypeError(f"{who} returned {type(out).__name__}; expected out or (out, softmax_lse[, S_dmask])")


def _fa_call(fn, who, q, k, v, *, causal, alignment, window, scale, softcap, attn_mask, return_lse, kernel, names,
             lse_layout, empty_row_lse, tile):
    import numpy as np
    import torch

    from flashproof import spec as spec_mod

    if tile:
        raise ValueError(f"{who}: no tile parameters in the flash_attn convention, got {sorted(tile)}")
    if attn_mask is not None:
        raise ValueError(f"{who}: the flash_attn convention has no attn_mask")
    lq, lk = int(q.shape[2]), int(k.shape[2])
    if window is not None and not _valid_window(window):
        # an invalid window reaches the kernel as given: rejecting it is the kernel's job (spec: an error)
        if not names[2]["window_size"]:
            raise ValueError(f"{who} takes no `window_size`")
        kw = {"window_size": tuple(window), **({"causal": True} if causal else {})}
        return _bhld_out(_fa_split(fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw), who,
                                   names[1], False)[0], q, v, who)
    mask = spec_mod.make_mask(causal=causal, window=window, alignment=alignment)
    kw = _fa_kwargs(mask, lq=lq, lk=lk, scale=scale, softcap=softcap, return_lse=return_lse, kernel=kernel,
                    names=names, who=who)
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw)
    o, lse = _fa_split(out, who, names[1], bool(return_lse))
    o = _bhld_out(o, q, v, who)
    if not return_lse:
        return o
    b, h = int(q.shape[0]), int(q.shape[1])
    want = (b, h, lq) if lse_layout == "bhl" else (b, lq, h)
    if tuple(lse.shape) != want:
        other = "blh" if lse_layout == "bhl" else "bhl"
        raise TypeError(f"{who} returned softmax_lse of shape {tuple(lse.shape)}, expected {want} with "
                        f"lse_layout={lse_layout!r}; declare lse_layout={other!r} if that is its layout")
    if lse_layout == "blh":
        lse = lse.transpose(1, 2)
    if empty_row_lse == math.inf:
        lo, hi = mask.key_range(np.arange(lq), lq, lk)
        empty = torch.from_numpy(np.asarray(lo >= hi)).to(lse.device)
        lse = torch.where(empty & (lse == math.inf), torch.full_like(lse, -math.inf), lse)
    return o, lse


def _probe_fa_lse(fn, who, t, flag, lse_layout) -> bool:
    """Whether fn returns a softmax_lse tensor: one tiny call, with the LSE flag when it has one."""
    try:
        t.device()
    except RuntimeError as exc:
        raise TargetLoadError(f"flash_attn_style: {exc}, and probing {who} for its softmax_lse needs one "
                              f"(declare lse= and backward= to load it without probing)") from None
    try:
        q, k, v = _probe_inputs(t)
        out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **({flag: True} if flag else {}))
    except Exception as exc:
        raise TargetLoadError(f"flash_attn_style: probing {who} for its softmax_lse failed: {type(exc).__name__}: "
                              f"{exc}; declare lse=True or lse=False to skip the probe") from exc
    if isinstance(out, (tuple, list)) and len(out) in (2, 3) and _is_tensor(out[0]):
        return _is_tensor(out[1])
    if _is_tensor(out):
        return False
    raise TargetLoadError(f"flash_attn_style: {who} returned {type(out).__name__}; this adapter knows out, "
                          f"(out, softmax_lse) and (out, softmax_lse, S_dmask)")


# ---------------------------------------------------------------------------------------- fla
def fla_style(fn, *, name=None, spec=None, dtypes=("float16", "bfloat16"), head_dims=FA_HEAD_DIMS, value_dim=True,
              devices=("cuda", "cpu"), backward=None, gqa=True, min_len=1, accepts=None, known_deviations=None,
              description=None, nan_policy=ADAPTER_NAN_POLICY, **declare) -> Target:
    """flash-linear-attention's ``parallel_attn(q, k, v, g=None, scale=None, window_size=None,
    cu_seqlens=None, ...)`` as a Target.

    It is causal with one length T for q, k and v, so the Target declares ``causal_only`` and
    ``equal_lengths`` (both alignments coincide there; the suite draws only such calls). Its
    window is an int: key j is attended by query i when i - window_size < j <= i, which is spec's
    causal window (window_size - 1, 0). It returns O only (no LSE). ``g``, ``cu_seqlens`` and
    ``sink_bias`` are left at None. Declared: ``dtypes`` (default fp16/bf16: its fp32 Q K^T runs
    through tl.dot's default TF32), ``head_dims`` (it asserts E <= 256), ``value_dim``, ``gqa``,
    ``min_len``, ``devices``, ``accepts``, ``nan_policy`` (default "ieee"), and other Target fields
    through ``**declare``.
    """
    params, who = _signature("fla_style", fn, name)
    scale_name = next((n for n in _SCALE_NAMES if n in params), None)
    has_window = "window_size" in params

    def domain(call):
        if not call.causal:
            return f"non-causal attention: {who} is causal only"
        if call.lq != call.lk:
            return f"Lq={call.lq} != Lk={call.lk}: {who} takes one length T for q, k and v"
        if call.scale is not None and scale_name is None:
            return f"an explicit scale, and {who} takes no scale"
        return None

    def forward(q, k, v, *, causal=False, alignment=None, window=None, scale=None, softcap=None, attn_mask=None,
                return_lse=False, **tile):
        from flashproof import spec as spec_mod

        why = domain(_call_of(q, k, causal=bool(causal), scale=scale))
        if why:
            raise OutsideDomain(f"{who}: {why}")
        if tile or attn_mask is not None or spec_mod.normalize_softcap(softcap) is not None or return_lse:
            raise ValueError(f"{who}: parallel_attn takes no tile parameters, attn_mask, softcap or LSE request")
        kw = {} if scale is None else {scale_name: float(scale)}
        left = -1
        if window is not None:
            if not _valid_window(window):
                if int(window[1]) < -1:  # parallel_attn has no right side to pass it on to
                    raise OutsideDomain(f"{who}: window={tuple(window)}: an invalid right side cannot be expressed")
                left = int(window[0])  # passed on as an invalid size (<= -1): rejecting it is the kernel's job
            else:
                left = spec_mod.make_mask(causal=True, window=window).left  # causal: right is 0 whatever was asked
        if left != -1:
            if not has_window:
                raise ValueError(f"{who} takes no `window_size`")
            kw["window_size"] = left + 1
        out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), **kw)
        if not _is_tensor(out):
            raise TypeError(f"{who} returned {type(out).__name__}; this adapter knows parallel_attn's o only "
                            f"(B, T, H, V)")
        return _bhld_out(out, q, v, who, "(B, T, HQ, V)")

    t = Target(name=who if spec is None else spec, forward=forward, alignments=("top_left",), causal_only=True,
               equal_lengths=True, window=has_window, softcap=False, lse=False, attn_mask=False, gqa=bool(gqa),
               backward=False, dtypes=tuple(dtypes), devices=tuple(devices), head_dims=head_dims,
               value_dim=bool(value_dim), min_lq=min_len, min_lk=min_len, accepts=_combine(domain, accepts),
               known_deviations=dict(known_deviations or {}), spec=spec, nan_policy=nan_policy,
               description=description or f"{who} through flashproof.properties.adapters.fla_style",
               **{**ADAPTER_DEFAULTS, **_own_or_declared(declare, "fla_style")})
    if backward is None:
        backward = _probe_backward(t, causal="top_left")
    return dataclasses.replace(t, backward=bool(backward))


def _call_of(q, k, *, causal, scale):
    from .targets import Call

    return Call(dtype=str(q.dtype).replace("torch.", ""), lq=int(q.shape[2]), lk=int(k.shape[2]),
                causal="bottom_right" if causal else False, scale=scale)


# ---------------------------------------------------------------------------------------- blhd
def blhd(fn, *, name=None, spec=None, backward=None, known_deviations=None, description=None,
         nan_policy=ADAPTER_NAN_POLICY, **declare) -> Target:
    """A kernel with torch's SDPA signature (``attn_mask``, ``is_causal`` top-left, ``scale``,
    ``enable_gqa``) on (B, L, H, D) tensors, as a Target: the suite's (B, H, L, D) tensors reach it
    as (B, L, H, D) views, its (B, Lq, H, Ev) output comes back as (B, H, Lq, Ev). attn_mask and
    GQA are declared when the signature has them (the mask stays (..., Lq, Lk): it is over logits,
    not over the layout). ``backward=None`` probes on the target's device; ``nan_policy`` defaults to
    "ieee" (as for any SDPA callable); other Target fields (dtypes, devices, head_dims, accepts, ...)
    through ``**declare``.
    """
    if not callable(fn):
        raise TypeError(f"blhd: fn must be callable, got {type(fn).__name__}")
    who = _who(fn, name)

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        # only what differs from the defaults: a kernel need not name what the suite does not use
        kw = {"attn_mask": attn_mask} if attn_mask is not None else {}
        kw.update({n: x for n, x in (("dropout_p", dropout_p), ("is_causal", is_causal), ("enable_gqa", enable_gqa))
                   if x})
        if scale is not None:
            kw["scale"] = scale
        out = fn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), **kw)
        return _bhld_out(out, query, value, who)

    t = from_sdpa(sdpa, name=who if spec is None else spec, spec=spec, backward=False,
                  known_deviations=known_deviations, nan_policy=nan_policy)
    t = dataclasses.replace(t, attn_mask=_accepts(fn, "attn_mask"), gqa=_accepts(fn, "enable_gqa"),
                            description=description or f"{who} through flashproof.properties.adapters.blhd",
                            **_own_or_declared(declare, "blhd", _BLHD_OWN))
    if backward is None:
        backward = _probe_backward(t)
    return dataclasses.replace(t, backward=bool(backward))


# ---------------------------------------------------------------------------------------- registry
#: name -> adapter, for ``--flashproof-adapter=NAME`` / ``flashproof check --adapter NAME``.
ADAPTERS = {"flash_attn": flash_attn_style, "fla": fla_style, "blhd": blhd, "sdpa": from_sdpa}


def adapter_names() -> tuple:
    return tuple(ADAPTERS)


def get_adapter(name):
    """The adapter called ``name``; TargetLoadError listing the known ones otherwise."""
    try:
        return ADAPTERS[name]
    except (KeyError, TypeError):
        raise TargetLoadError(f"unknown adapter {name!r}; known adapters: {', '.join(ADAPTERS)}") from None


def with_adapter(target, adapter):
    """The target string that loads ``target`` through ``adapter``: "module:attr@adapter"
    (what reproducers and journals keep, so a replay applies the same adapter)."""
    if adapter is None:
        return target
    get_adapter(adapter)
    if target is None:
        raise TargetLoadError(f"an adapter ({adapter!r}) needs a target module:attr to apply to")
    if not isinstance(target, str):
        raise TypeError(f"an adapter applies to a 'module:attr' target string, got {type(target).__name__}")
    return f"{target.strip()}@{adapter}"


def _cuda_here(devices) -> bool:
    """Whether the target will run on a CUDA device here (its first declared device that exists)."""
    import torch

    return any(str(d).startswith("cuda") for d in devices) and torch.cuda.is_available()

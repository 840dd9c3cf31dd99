"""torch SDPA's GPU backends as targets, each pinned to one backend with ``sdpa_kernel``.

    pytest --pyargs flashproof.properties --flashproof-target=flashproof.properties.sdpa_backends:flash

Each declares the domain torch's dispatcher admits for that backend (aten/src/ATen/native/
transformers/cuda/sdp_utils.cpp, read at torch 2.11; sm_90), so the suite stays inside it and a
refusal inside it is a violation:

- flash (can_use_flash_attention): fp16/bf16; no attn_mask; E == Ev <= 256
  (check_head_dim_size_flash); is_causal only with Lq == Lk (check_flash_causal_non_square_seqlens:
  FlashAttention-2's causal diagonal is bottom-right, torch's is_causal top-left); Lq, Lk >= 1
  (check_nonzero_sequence_lengths_dense); GQA through enable_gqa.
- cuDNN (can_use_cudnn_attention): fp16/bf16; E and Ev multiples of 8 and <= 128, or <= 256 with
  cuDNN > 9.22 on sm_90 (check_cudnn_tensor_shapes), backward then only for E, Ev <= 128 or
  (192, 128) or (256, 256) (check_cudnn_d256_bprop_head_dim); Lk >= 2 (Lk == 1 refused);
  Lq, Lk >= 1.
- efficient: fp16/bf16/fp32, attn_mask, E and Ev multiples of 8 (4 for fp32) (check_head_dim_size_mem_efficient).
- math: everything, float64 included.

Versions differ in these details, so on a CUDA machine each factory also *probes* the optional
parts on tiny inputs (non-square causal, Lk = 1, Ev != E, GQA, attn_mask, each head dim forward
and backward, fp32/fp64) and declares what this torch actually runs; ``PROBES[name]`` keeps what
each probe said. Without CUDA (tests) the static declaration above stands. A refusal ("No
available kernel") is re-raised with the reasons torch printed, so an undeclared limit names itself.
"""
from __future__ import annotations

import dataclasses
import warnings

from .accumulators import declared_accumulator
from .domain import OutsideDomain
from .targets import TORCH_CPU_DEVIATIONS, from_sdpa

__all__ = ["flash", "cudnn", "efficient", "math", "PROBES", "STATIC", "EMPTY_ROWS", "backend_accumulator"]

#: head dims probed on a GPU (the profiles' head dims; a target declares the ones that run)
_PROBE_DIMS = (8, 16, 24, 32, 40, 64, 72, 80, 96, 128, 160, 192, 256)

#: The declaration read from torch 2.11's sdp_utils.cpp for sm_90 (used as is without CUDA).
STATIC = {
    "flash": dict(dtypes=("float16", "bfloat16"), attn_mask=False, gqa=True, value_dim=False,
                  head_dims=tuple(range(1, 257)), causal_equal_lengths=True, min_lq=1, min_lk=1,
                  bwd_head_dims=None),
    "cudnn": dict(dtypes=("float16", "bfloat16"), attn_mask=False, gqa=False, value_dim=True,
                  head_dims=tuple(range(8, 129, 8)), causal_equal_lengths=True, min_lq=1, min_lk=2,
                  bwd_head_dims=tuple(range(8, 129, 8))),
    "efficient": dict(dtypes=("float16", "bfloat16", "float32"), attn_mask=True, gqa=False, value_dim=True,
                      head_dims=tuple(range(8, 257, 8)), causal_equal_lengths=False, min_lq=1, min_lk=1,
                      bwd_head_dims=None),
    "math": dict(dtypes=("float16", "bfloat16", "float32", "float64"), attn_mask=True, gqa=True, value_dim=True,
                 head_dims=None, causal_equal_lengths=False, min_lq=0, min_lk=0, bwd_head_dims=None),
}
#: What each backend declares for a fully masked row (Target.empty_rows): torch documents no value; cuDNN
#: returns a finite non-zero O there on the H200 (docs/peers.md), the others spec's O = 0 or NaN (math).
EMPTY_ROWS = {"cudnn": "unspecified"}
#: name -> {probe: None (ran) or the refusal's message}, filled by the factories on a GPU
PROBES: dict = {}
_DECLARED: dict = {}


def _rows_aligned(t) -> bool:
    """Every row (last dim) of t starts on a 16-byte boundary."""
    elt = t.element_size()
    return t.data_ptr() % 16 == 0 and all((st * elt) % 16 == 0 for st in t.stride()[:-1])


def _call(backend, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    import torch
    from torch.nn.attention import sdpa_kernel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([backend]):
                return torch.nn.functional.scaled_dot_product_attention(
                    query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    enable_gqa=enable_gqa)
        except RuntimeError as exc:
            if "No available kernel" not in str(exc) and "No viable backend" not in str(exc):
                raise
            why = "; ".join(dict.fromkeys(str(w.message).strip() for w in caught))
            raise RuntimeError(f"{exc} torch said: {why or '(no reason printed)'}") from None


def _probe(backend, *, lq=4, lk=4, e=16, ev=None, causal=False, mask=None, hkv=2, dtype="float16", grad=False):
    """None if the backend runs this tiny call (and its backward with ``grad``), else why not."""
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float32).to(dt).requires_grad_(grad)  # noqa: E731
    q, k, v = mk(1, 2, lq, e), mk(1, hkv, lk, e), mk(1, hkv, lk, ev or e)
    am = None
    if mask == "bool":
        am = torch.ones(lq, lk, dtype=torch.bool, device="cuda").tril()
        am[:, 0] = True
    elif mask == "additive":
        am = torch.zeros(lq, lk, dtype=dt, device="cuda")
    try:
        o = _call(backend, q, k, v, attn_mask=am, is_causal=causal, enable_gqa=hkv != 2)
        if grad:
            o.float().sum().backward()
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # any refusal narrows the declaration; the message is kept in PROBES
        return f"{type(exc).__name__}: {str(exc)[:300]}"


def _probed(name, backend, static):
    """The static declaration, corrected by probes where this torch runs more or less (probed once
    per process: the pytest plugin and its fixture both load the target)."""
    if name in _DECLARED:
        return dict(_DECLARED[name])
    d = dict(static)
    p = {}
    p["causal Lq != Lk"] = _probe(backend, lq=3, lk=5, causal=True)
    p["Lk = 1"] = _probe(backend, lq=4, lk=1)
    p["Ev != E"] = _probe(backend, e=16, ev=32)
    p["GQA"] = _probe(backend, hkv=1)
    p["attn_mask bool"] = _probe(backend, mask="bool")
    p["attn_mask additive"] = _probe(backend, mask="additive")
    for dt in ("float16", "bfloat16", "float32", "float64"):
        p[f"dtype {dt}"] = _probe(backend, dtype=dt)
    fwd, bwd = [], []
    for e in _PROBE_DIMS:
        p[f"E={e}"] = _probe(backend, e=e)
        if p[f"E={e}"] is None:
            fwd.append(e)
            p[f"E={e} backward"] = _probe(backend, e=e, grad=True)
            if p[f"E={e} backward"] is None:
                bwd.append(e)
    d["causal_equal_lengths"] = p["causal Lq != Lk"] is not None
    d["min_lk"] = max(d["min_lk"], 1) if p["Lk = 1"] is None else max(d["min_lk"], 2)
    d["value_dim"] = p["Ev != E"] is None
    d["gqa"] = p["GQA"] is None
    d["attn_mask"] = p["attn_mask bool"] is None and p["attn_mask additive"] is None
    d["dtypes"] = tuple(dt for dt in ("float16", "bfloat16", "float32", "float64") if p[f"dtype {dt}"] is None)
    if static["head_dims"] is not None or len(fwd) < len(_PROBE_DIMS):
        # between probed dims, keep the static rule's dims (e.g. multiples of 8) up to the largest that ran
        top = max(fwd) if fwd else 0
        rule = static["head_dims"] or tuple(range(1, 257))
        d["head_dims"] = tuple(sorted(set(fwd) | {x for x in rule if x <= top and x not in _PROBE_DIMS}))
    d["bwd_head_dims"] = None if len(bwd) == len(fwd) else tuple(sorted(
        set(bwd) | {x for x in (static["bwd_head_dims"] or ()) if x <= max(bwd, default=0) and x not in _PROBE_DIMS}))
    PROBES[name] = p
    _DECLARED[name] = dict(d)
    return d


def _backend(name, backend_name, *, devices=("cuda",)):
    import torch
    from torch.nn.attention import SDPBackend

    backend = getattr(SDPBackend, backend_name)

    def fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if name == "flash" and not all(_rows_aligned(t) for t in (query, key, value) if t.shape[-1] % 8 == 0):
            # E % 8 == 0 is not padded by torch: its flash kernel dies with "misaligned address" and
            # poisons the CUDA context for every later call (docs/findings.md F2); reported, not run.
            # OutsideDomain, not a raise of the target's: ctx.call passes it on as a refusal (H200 run 2026-12-03)
            raise OutsideDomain("flash: q/k/v rows not 16-byte aligned (declared outside the domain: docs/findings.md F2)")
        return _call(backend, query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                     scale=scale, enable_gqa=enable_gqa)

    spec = f"flashproof.properties.sdpa_backends:{name}"
    cuda = torch.cuda.is_available()
    d = _probed(name, backend, STATIC[name]) if cuda else dict(STATIC[name])
    bwd = d.pop("bwd_head_dims")

    def accepts(call):
        if call.grad and bwd is not None and (call.e not in bwd or call.ev not in bwd):
            return f"backward with E={call.e}, Ev={call.ev} (this backend's backward runs head dims {bwd})"
        return None

    t = from_sdpa(fn, name=f"torch SDPA {name} backend", spec=spec, backward=True,
                  known_deviations=None if cuda else TORCH_CPU_DEVIATIONS, empty_rows=EMPTY_ROWS.get(name, "zero"))
    how = "probed on this GPU" if cuda else "static (torch 2.11 sdp_utils.cpp, sm_90)"
    return dataclasses.replace(t, devices=devices, accepts=accepts if bwd is not None else None,
                               accumulator=backend_accumulator(d["dtypes"], cuda=cuda),
                               description=f"torch SDPA, {backend_name} backend only; domain {how}", **d)


def backend_accumulator(dtypes, *, cuda: bool, capability=None) -> dict:
    """{dtype: accumulator name} a backend declares (accumulators.declared_accumulator). On a CUDA device
    the fp16/bf16 matmuls run on the tensor cores: the model measured there for Triton's ``tl.dot``
    (SM90: fp32_blockfma_k16_x2_rz) is INFERRED for torch's kernels from the same hardware, not measured
    on them. fp32: "fp32" (IEEE FMAs; the efficient backend's cutlass kernels use 3xTF32 on sm80+, which
    this model does not describe: not measured)."""
    return declared_accumulator(dtypes, cuda=cuda, capability=capability, who="torch SDPA backends")


def flash():
    """torch SDPA's FlashAttention-2 backend."""
    return _backend("flash", "FLASH_ATTENTION")


def cudnn():
    """torch SDPA's cuDNN backend."""
    return _backend("cudnn", "CUDNN_ATTENTION")


def efficient():
    """torch SDPA's memory-efficient backend."""
    return _backend("efficient", "EFFICIENT_ATTENTION")


def math():
    """torch SDPA's math backend (runs on the CPU too)."""
    return _backend("math", "MATH", devices=("cuda", "cpu"))

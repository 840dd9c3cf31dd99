"""What a property check sees: the :class:`Context` (the target, the profile's limits, the run's
options) with the call contract (``Context.call``: a raise on a valid input is a violation, and O,
LSE must have the contract's shapes and dtype) and the judge glue (``Context.judge``: the oracle's
running bound, exact values and FlashAttention criterion under the target's declared precision).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flashproof import spec

from . import oracle
from .oracle import Violation
from .profiles import Limits, get_profile, profile_name
from .registry import TargetError
from .targets import Target

__all__ = ["Context", "make_context", "limits_for"]


@dataclass
class Context:
    """What a property check sees: the target, the profile's limits, and helpers."""

    target: Target
    limits: Limits
    profile: str
    device: str
    #: per-example time limit in seconds (None: none; each example then runs in the caller's thread)
    example_timeout: float | None = None
    #: Hypothesis database: a directory, None (the profile's own setting) or False (none)
    database: object = None
    #: folder for reproducer files, each written as soon as its failure is known (None: no files)
    reproducer_dir: str | None = None
    #: [(property, thread)] of timed-out examples whose call could not be stopped
    abandoned: list = field(default_factory=list)
    #: target calls under way in Context.call (tells a hang in the target from one elsewhere)
    in_target: int = 0
    #: the device's memory counters (memory.DeviceMemory; None on CPU: nothing is measured)
    memory: object = None
    #: how Limits.max_len was chosen (length_budget.LengthChoice; None: the profile's own)
    length: object = None

    @property
    def hung(self) -> str:
        """Why the target cannot be called now ("" if it can): an abandoned call still runs."""
        alive = [name for name, th in self.abandoned if th.is_alive()]
        if not alive:
            return ""
        return (f"the target hung in {alive[0]!r} (its call is still running in a background thread, so the target "
                f"is not called again in this run)")

    def call(self, inp, *, tile=None, return_lse=None, **override):
        """Run the target on ``inp`` (spec's options, overridable); returns (o, lse or None).

        An exception from the target on a valid input is a violation (TargetError)."""
        t = self.target
        opts = inp.opts()
        opts.update(override)
        q, k, v = opts.pop("q", inp.q), opts.pop("k", inp.k), opts.pop("v", inp.v)
        want_lse = t.lse if return_lse is None else return_lse
        if tile and not self.tile_fits(tile, q, v):
            tile = None  # this config does not fit these dims (declared by the target): its default
        self.in_target += 1
        try:
            o, lse = t(q, k, v, return_lse=want_lse, tile=tile, **opts)
        except Exception as exc:
            raise TargetError(f"target {t.name!r} raised {type(exc).__name__} on a valid input: {exc}") from exc
        finally:
            self.in_target -= 1
        b, h, lq = q.shape[0], q.shape[1], q.shape[2]
        ev = v.shape[-1]
        if not isinstance(o, type(q)):  # the contract: O is a tensor like the inputs
            raise Violation(f"O must be a torch.Tensor, got {type(o).__name__}")
        if tuple(o.shape) != (b, h, lq, ev):
            raise Violation(f"O has shape {tuple(o.shape)}, expected (B, H, Lq, Ev) = {(b, h, lq, ev)}")
        if o.dtype != q.dtype:
            raise Violation(f"O has dtype {o.dtype}, expected the input dtype {q.dtype}")
        if want_lse:
            if lse is None or tuple(lse.shape) != (b, h, lq):
                raise Violation(f"LSE has shape {None if lse is None else tuple(lse.shape)}, expected (B, H, Lq) = "
                                f"{(b, h, lq)}")
        if t.empty_rows == "zero":
            return o, lse
        return self.unjudged_to_spec(inp.with_(q=q, k=k, v=v, **opts), o, lse)

    def unjudged_rows(self, inp):
        """(B, H, Lq) bool: the rows of ``inp`` whose O and LSE the target makes no claim on (declared
        empty_rows="unspecified": the rows with no allowed key), or None when every row is judged."""
        if self.target.empty_rows != "unspecified":
            return None
        try:
            empty = oracle.empty_rows(inp)
        except ValueError:  # options spec refuses (an invalid window the target took): nothing to excuse
            return None
        return empty if empty.any() else None

    def unjudged_to_spec(self, inp, o, lse):
        """(o, lse) with the target's values on :meth:`unjudged_rows` discarded for spec's (O = 0, LSE = -inf):
        no check sees them (what an empty row does to the OTHER rows stays the target's own output), and a
        backward through ``o`` sends those rows dO = 0 (torch.where's gradient)."""
        empty = self.unjudged_rows(inp)
        if empty is None:
            return o, lse
        import torch

        e = torch.from_numpy(empty).to(o.device)
        o = torch.where(e[..., None], torch.zeros((), dtype=o.dtype, device=o.device), o)
        if lse is not None:
            lse = torch.where(e.to(lse.device), torch.full((), float("-inf"), dtype=lse.dtype, device=lse.device), lse)
        return o, lse

    def tile_fits(self, tile, q, v) -> bool:
        return self.target.tile_fits(tile, head_dim=q.shape[-1], head_dim_v=v.shape[-1], dtype=q.dtype)

    def n_tiles(self, tile, lk):
        """Key tiles of a call (for the bound), or None when the target does not say."""
        bn = dict(tile or {}).get("block_n")
        return max(1, -(-lk // int(bn))) if bn else None

    def toward_zero(self, inp) -> bool:
        return inp.dtype_name in self.target.round_toward_zero

    def accumulator(self, inp) -> str:
        """The accumulation model the target declares for ``inp``'s dtype."""
        return self.target.accumulator_for(inp.dtype_name)

    def precision(self, inp):
        """The error model's Precision the target is judged at (proofs.precision_for of its declaration)."""
        return oracle.precision(inp.dtype_name, accumulator=self.accumulator(inp), c_exp=self.target.c_exp,
                                toward_zero=self.toward_zero(inp))

    def u_in(self, inp) -> float:
        return self.precision(inp).u_in

    def bound(self, inp, *, tile=None):
        """proofs.running_forward_bound at the declared precision (Unbounded where it has no claim)."""
        return oracle.bound(inp, accumulator=self.accumulator(inp), c_exp=self.target.c_exp,
                            n_tiles=self.n_tiles(tile, inp.k.shape[2]), toward_zero=self.toward_zero(inp),
                            lse_combine=self.target.lse_combine)

    def backward_bound(self, inp, do, *, tile=None):
        """proofs.running_backward_bound (theorem 4b) at the declared precision: (dq, dk, dv) bounds."""
        return oracle.backward_bound(inp, do, accumulator=self.accumulator(inp), c_exp=self.target.c_exp,
                                     n_tiles=self.n_tiles(tile, inp.k.shape[2]), toward_zero=self.toward_zero(inp))

    def judge(self, inp, o, lse, *, tile=None, label="", fa=True, ex=None, bounds=None):
        """Assert O (and LSE) within the running bound of the exact values, and the FA criterion."""
        o_b, l_b = bounds if bounds is not None else self.bound(inp, tile=tile)
        if ex is None:
            ex = oracle.exact(inp, need_o=o_b, need_lse=l_b if lse is not None else None)
        src = oracle.bound_source()
        note = ("; rows with no allowed key not judged (declared empty_rows 'unspecified')"
                if self.target.empty_rows == "unspecified" else "")
        ctx = f" ({label})" if label else ""
        oracle.assert_within(f"O{ctx}", oracle.to_np(o), ex.o, o_b + ex.o_rad,
                             what=f"the running error bound [{src} bound, {ex.source} reference{note}]")
        if lse is not None:
            lse_np = oracle.to_np(lse)
            lb = l_b + _lse_store(lse, ex.lse, l_b)
            oracle.assert_within(f"LSE{ctx}", lse_np, ex.lse, lb + ex.lse_rad,
                                 what=f"the running LSE bound [{src} bound, {ex.source} reference{note}]",
                                 dims="(b, h, i)")
        if fa:
            nerr = oracle.naive_error(inp, ex)
            prec = self.precision(inp)
            eps = oracle.fa_eps(inp, ex, u_acc=prec.u_acc, c_exp=prec.c_exp, n_tiles=self.n_tiles(tile, inp.k.shape[2]),
                                u_in=prec.u_in)
            oracle.assert_fa_criterion(f"O{ctx}", oracle.to_np(o), ex, nerr, eps)
        return ex, (o_b, l_b)


def _lse_store(lse, want, lb):
    """Extra LSE error when the target stores LSE below fp32 (theorem 6's LSE bound assumes an fp32
    store): one rounding of the computed value, |fl(x) - x| <= u |x| <= u (|exact| + bound)."""
    name = spec.dtype_name(lse.dtype, strict=False)
    u = spec.FORMATS[name].u if name in ("float16", "bfloat16") else 0.0
    return u * (np.where(np.isfinite(want), np.abs(want), 0.0) + lb)


def limits_for(target, profile, *, max_len=None) -> Limits:
    """The profile's limits (``max_len``: a longest length chosen for this run, e.g. by the length
    budget, in place of the profile's), narrowed to the target's declared max_len and head_dims."""
    lim = get_profile(profile).limits
    if max_len is not None:  # the length is chosen: no levels left to choose from
        lim = lim.replace(max_len=int(max_len), length_levels=())
    if target.max_len is not None:
        lim = lim.replace(max_len=min(lim.max_len, target.max_len))
    if target.head_dims is not None:
        hd = tuple(e for e in lim.head_dims if e in target.head_dims) or tuple(sorted(target.head_dims))[:4]
        lim = lim.replace(head_dims=hd)
    return lim


def make_context(target, profile, *, example_timeout=None, database=None, reproducer_dir=None, max_len=None,
                 length=None) -> Context:
    """The Context of ``target`` under ``profile``: :func:`limits_for` and the device's memory
    counters (``length``: how ``max_len`` was chosen, for reports)."""
    from .memory import memory_api

    device = target.device()
    return Context(target=target, limits=limits_for(target, profile, max_len=max_len), profile=profile_name(profile),
                   device=device, example_timeout=example_timeout, database=database, reproducer_dir=reproducer_dir,
                   memory=memory_api(device), length=length)

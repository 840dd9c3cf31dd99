"""The planted-bug kernels: each is base.TiledAttention with ONE hook overridden.

Every class says in its first docstring line what the bug is and which class of
/work/shared/BUG-CLASSES.md (or "extra") it belongs to; ``trigger()`` returns an input on which
the bug shows (tests/test_mutation_score.py checks, independently of the property suite, that
the base agrees with flashproof.reference there and the mutant does not). ``MUTANTS`` lists
them all. Capabilities: every mutant declares what the base does (the bug lives in one of those
paths, so nothing is hidden), except a mutant with ``sdpa_only`` (a plain SDPA callable).
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import torch

from flashproof import spec
from flashproof.spec import Float32Ops, State, round_to

from .base import F32, NEG_INF, TiledAttention

__all__ = ["Mutant", "MUTANTS", "Trigger", "mutant_by_name", "LongMutant", "LONG_MUTANTS"]

LN2 = F32(math.log(2.0))
LOG2E = F32(1.0 / math.log(2.0))


class Trigger(dict):
    """An input that shows a mutant's bug; ``kind`` says how tests compare it (see test file).

    kinds: "forward" (vs reference.forward_fp64), "backward" (vs reference.backward_fp64),
    "decode" (vs forward_fp64 of each row's prefix), "sdpa" (torch SDPA signature),
    "repeat" (two identical calls bitwise equal), "batch" (row 0 alone == row 0 in a batch),
    "reject" (the call must raise ValueError).
    """


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _qkv(b, h, hkv, lq, lk, e, ev=None, *, dtype=torch.float32, seed=0):
    g = _gen(seed)
    ev = e if ev is None else ev
    return (torch.randn(b, h, lq, e, generator=g).to(dtype), torch.randn(b, hkv, lk, e, generator=g).to(dtype),
            torch.randn(b, hkv, lk, ev, generator=g).to(dtype))


def _flat_negative(b, h, lq, lk, e, *, logit=-400.0, dtype=torch.float32, seed=0):
    """All logits equal to ``logit`` (q = -a 1, k = a 1 with scale*E*a^2 = -logit) and random v."""
    a = math.sqrt(-logit * math.sqrt(e) / e)
    q = torch.full((b, h, lq, e), -a, dtype=dtype)
    k = torch.full((b, h, lk, e), a, dtype=dtype)
    v = torch.randn(b, h, lk, e, generator=_gen(seed)).to(dtype)
    return q, k, v


def _structural_no_bounds(call, rows, cols):
    """(rows, cols) allowed by causal/window alone, ignoring j < Lk (as a kernel's diagonal test)."""
    m, d = call.mask, call.mask.diagonal(call.dims.lq, call.dims.lk)
    r, c = rows[:, None], cols[None, :]
    ok = np.ones((len(rows), len(cols)), bool)
    if m.right != -1:
        ok &= c <= r + d + m.right
    if m.left != -1:
        ok &= c >= r + d - m.left
    return ok


class Mutant(TiledAttention):
    """A planted-bug kernel; subclasses set ``bug_class`` and override one hook."""

    bug_class = ""
    #: declared as a plain SDPA callable instead of the rich Target (registry.target_of)
    sdpa_only = False

    @property
    def name(self):
        return type(self).__name__

    def trigger(self) -> Trigger:  # pragma: no cover - every mutant defines one
        raise NotImplementedError


# ------------------------------------------------------------------ 1. fully masked rows
class EmptyRowDiv0(Mutant):
    """Final O = acc / l with no empty-row guard: 0/0 = NaN on fully masked rows (class 1).

    Trigger: causal="bottom_right", Lq=8 > Lk=4: rows 0-3 have no key and must give O = 0.
    """

    bug_class = "1"

    def finalize(self, st, ops):
        with np.errstate(divide="ignore", invalid="ignore"):
            return st.acc / st.l[..., None], st.m + ops.log(st.l)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 4, 16), opts=dict(causal="bottom_right"))


class _NoShiftGuard(Float32Ops):
    def shift(self, m):
        return m  # the bug: -inf stays -inf, and exp(-inf - (-inf)) = NaN


class RescaleUnguarded(Mutant):
    """Running-max rescale exp(m_old - m_new) unguarded: -inf - (-inf) = NaN when a tile is fully masked for a row (class 1).

    Trigger: causal window (2, 0), L=40: row 34's first visited tile [16, 32) is fully masked.
    """

    bug_class = "1"

    def make_ops(self, dtype):
        base = super().make_ops(dtype)
        return _NoShiftGuard(base.p_dtype)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 40, 40, 16), opts=dict(causal=True, window=(2, 0)))


# ------------------------------------------------------------------ 2. guard value as a max
class GuardZeroInit(Mutant):
    """Running max initialised to 0 instead of -inf: logits far below 0 underflow to l = 0 (class 2).

    Trigger: every logit = -400 (q = -a, k = +a): O must be the mean of v, LSE = -400 + log(Lk).
    """

    bug_class = "2"

    def init_state(self, shape, ev, ops):
        st = super().init_state(shape, ev, ops)
        return State(np.zeros(shape, F32), st.l, st.acc)

    def trigger(self):
        return Trigger(kind="forward", qkv=_flat_negative(1, 2, 8, 24, 16))


class _MaskedMaxZero(Float32Ops):
    def row_max(self, s):
        m = super().row_max(s)
        return np.where(np.isneginf(m), F32(0), m)  # the bug: an all-masked tile reports max 0


class MaskedTileMaxZero(Mutant):
    """A fully masked tile reports row max 0 (guard value), later logits far below 0 underflow (class 2, flash-attention#2082).

    Trigger: causal window (3, 0), L=40, every logit -400: rows 34-39 see the fully masked tile [16, 32) first.
    """

    bug_class = "2"

    def make_ops(self, dtype):
        return _MaskedMaxZero(super().make_ops(dtype).p_dtype)

    def trigger(self):
        return Trigger(kind="forward", qkv=_flat_negative(1, 1, 40, 40, 16), opts=dict(causal=True, window=(3, 0)))


# ------------------------------------------------------------------ 3. finite mask sentinels
class _Sentinel(Mutant):
    bug_class = "3"
    sentinel = F32(-1e4)

    def mask_scores(self, s, allowed, in_bounds, rows, cols, call):
        return np.where(allowed, s, self.sentinel)

    def trigger(self):
        # one allowed key with logit -1e6 (additive mask), the others masked with -inf: O = that key's v.
        q, k, v = _qkv(1, 1, 1, 4, 20, 8)
        bias = torch.full((1, 1, 4, 20), -math.inf)
        bias[..., 7] = -1e6
        return Trigger(kind="forward", qkv=(q, k, v), opts=dict(attn_mask=bias))


class Sentinel1e4(_Sentinel):
    """Masked logits set to -1e4 instead of -inf: a real logit below it loses to masked keys (class 3).

    Trigger: a single allowed key with additive bias -1e6 among -inf-masked keys: O must be its v.
    """

    sentinel = F32(-1e4)


class Sentinel5e4(_Sentinel):
    """Masked logits set to -5e4 instead of -inf (class 3, flashinfer#4451).

    Trigger: a single allowed key with additive bias -1e6 among -inf-masked keys: O must be its v.
    """

    sentinel = F32(-5e4)


class SentinelFinfoMin(_Sentinel):
    """Masked logits set to finfo(float32).min: a fully masked row averages the masked v (class 3/1).

    Trigger: bottom-right causal Lq=6 > Lk=3: rows 0-2 have no key and must give O = 0, LSE = -inf.
    """

    sentinel = F32(np.finfo(np.float32).min)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 6, 3, 8), opts=dict(causal="bottom_right"))


# ------------------------------------------------------------------ 4. garbage in masked K/V
class _PlainPV(Float32Ops):
    def weighted_sum(self, s, p, v, dim):
        if self.p_dtype is not None:
            p = round_to(p, self.p_dtype)
        return np.matmul(p[..., None, :], v)[..., 0, :]  # the bug: 0 * NaN of masked v leaks


class MaskedVNanLeak(Mutant):
    """P@V multiplies masked probabilities (0) by v: NaN/inf in a masked v leaks (class 4, pytorch#101967).

    Trigger: causal L=32 with v[20:] = NaN: rows 16-19 visit tile [16, 32) and must stay finite.
    """

    bug_class = "4"

    def make_ops(self, dtype):
        return _PlainPV(super().make_ops(dtype).p_dtype)

    def trigger(self):
        q, k, v = _qkv(1, 2, 2, 32, 32, 16)
        v[:, :, 20:] = math.nan
        return Trigger(kind="forward", qkv=(q, k, v), opts=dict(causal=True), rows=slice(0, 20))


class AdditiveMaskNan(Mutant):
    """Mask applied by adding -inf to the logits: a NaN/inf in a masked k gives NaN + -inf = NaN (class 4).

    Trigger: causal L=32 with k[20:] = inf: rows 0-19 must not see them.
    """

    bug_class = "4"

    def mask_scores(self, s, allowed, in_bounds, rows, cols, call):
        with np.errstate(invalid="ignore"):
            return s + np.where(allowed, F32(0), NEG_INF)

    def trigger(self):
        q, k, v = _qkv(1, 2, 2, 32, 32, 16)
        k[:, :, 20:] = math.inf
        return Trigger(kind="forward", qkv=(q, k, v), opts=dict(causal=True), rows=slice(0, 20))


# ------------------------------------------------------------------ 5. tail tiles
class TailLogitZero(Mutant):
    """Out-of-bounds keys of the tail tile get logit 0 (the zero-padded k) instead of -inf (class 5, pytorch#196678).

    Trigger: Lk=20 (tile 16), every logit -400: the 12 padded keys dominate; O must be mean(v).
    """

    bug_class = "5"

    def mask_scores(self, s, allowed, in_bounds, rows, cols, call):
        s = super().mask_scores(s, allowed, in_bounds, rows, cols, call)
        return np.where(~in_bounds[None, :] & _structural_no_bounds(call, rows, cols), F32(0), s)

    def trigger(self):
        return Trigger(kind="forward", qkv=_flat_negative(1, 2, 8, 20, 16))


class TailTileDropped(Mutant):
    """Key-tile count Lk // block_n (floor): the keys of a partial last tile are never read (class 5).

    Trigger: Lk=20, tile 16: keys 16-19 are skipped.
    """

    bug_class = "5"

    def key_tiles(self, lo, hi, bn, lk):
        return range(lo // bn * bn, min(hi, lk // bn * bn), bn)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16))


class QueryTailDropped(Mutant):
    """Query-tile count Lq // block_m (floor): rows of a partial last query tile are never written (extra: last-tile off-by-one).

    Trigger: Lq=20, tile 16: rows 16-19 come back 0.
    """

    bug_class = "5 (query side)"

    def query_tiles(self, lq, bm):
        return range(0, lq // bm * bm, bm)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 20, 24, 16))


class EvenNWrongBlock(Mutant):
    """EVEN_N fast path decided by Lk % 16 instead of Lk % block_n: with block_n=32 the padded keys are not masked (class 19).

    Trigger: Lk=48, block_n=32: keys 48-63 of the second tile enter with logit 0 and v 0.
    """

    bug_class = "19"

    def mask_scores(self, s, allowed, in_bounds, rows, cols, call):
        s = super().mask_scores(s, allowed, in_bounds, rows, cols, call)
        if call.dims.lk % 16 == 0:  # the bug: the block size is call.block_n, not 16
            s = np.where(~in_bounds[None, :] & _structural_no_bounds(call, rows, cols), F32(0), s)
        return s

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 16, 48, 16), tile=dict(block_m=16, block_n=32))


# ------------------------------------------------------------------ 6. causal alignment
class BottomRightAsTopLeft(Mutant):
    """causal="bottom_right" silently computed top-left (the diagonal offset Lk - Lq dropped) (class 6, pytorch#108108).

    Trigger: causal="bottom_right", Lq=5, Lk=20.
    """

    bug_class = "6"

    def make_mask(self, *, causal, window, alignment):
        causal = True if causal == spec.BOTTOM_RIGHT else causal
        alignment = None if alignment == spec.BOTTOM_RIGHT else alignment
        return super().make_mask(causal=causal, window=window, alignment=alignment)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 5, 20, 16), opts=dict(causal="bottom_right"))


class SdpaCausalBottomRight(Mutant):
    """SDPA-signature kernel whose is_causal is bottom-right aligned, not torch's top-left (class 6, flash-attention#443).

    Declared as a plain SDPA target. Trigger: sdpa(is_causal=True), Lq=4, Lk=12.
    """

    bug_class = "6"
    sdpa_only = True

    def sdpa(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
             enable_gqa=False):
        if is_causal:
            if dropout_p or attn_mask is not None:
                return super().sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
            if query.shape[1] != key.shape[1] and not enable_gqa:
                raise ValueError("pass enable_gqa=True for GQA")
            return self.forward(query, key, value, causal=spec.BOTTOM_RIGHT, scale=scale)
        return super().sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)

    def trigger(self):
        return Trigger(kind="sdpa", qkv=_qkv(1, 2, 2, 4, 12, 16), opts=dict(is_causal=True))


class BackwardTopLeft(Mutant):
    """Backward recomputes P under a top-left causal mask whatever the forward's alignment (class 6, fwd/bwd disagree).

    Trigger: causal="bottom_right", Lq=6, Lk=15, gradients vs reference.backward_fp64.
    """

    bug_class = "6"

    def backward_mask(self, call):
        m = call.mask
        return spec.Mask(causal=m.causal, alignment=spec.TOP_LEFT, window=m.window)

    def trigger(self):
        return Trigger(kind="backward", qkv=_qkv(1, 2, 2, 6, 15, 8), opts=dict(causal="bottom_right"))


class DiagonalTileSkipped(Mutant):
    """Causal/window loop end rounded down to a tile boundary: keys of the partial diagonal tile skipped when block_m != block_n (class 6/19).

    Trigger: causal, L=40, block_m=8, block_n=32: rows 0-7 reach key tile [0, 32) only partially, so it is skipped.
    """

    bug_class = "6/19"

    def key_tiles(self, lo, hi, bn, lk):
        end = hi if hi >= lk else hi // bn * bn
        return range(lo // bn * bn, end, bn)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 40, 40, 16), opts=dict(causal=True),
                       tile=dict(block_m=8, block_n=32))


# ------------------------------------------------------------------ 7. sliding window
class WindowOffByOne(Mutant):
    """Window left edge exclusive/inclusive confusion: one key too many on the left (class 7, transformers#39408).

    Trigger: causal, window (3, 0), L=10: row 5 must see keys 2-5 only.
    """

    bug_class = "7"

    def make_mask(self, *, causal, window, alignment):
        if window is not None and window[0] >= 0:
            window = (window[0] + 1, window[1])
        return super().make_mask(causal=causal, window=window, alignment=alignment)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 10, 10, 16), opts=dict(causal=True, window=(3, 0)))


class WindowZeroGlobal(Mutant):
    """A window side of 0 is taken as 'no window' (truthiness test), so (0, 0) attends everything (class 7).

    Trigger: non-causal window (0, 0), L=12: each row must see only its own key.
    """

    bug_class = "7"

    def make_mask(self, *, causal, window, alignment):
        if window is not None:
            window = tuple(w if w else -1 for w in window)
        return super().make_mask(causal=causal, window=window, alignment=alignment)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 12, 12, 16), opts=dict(window=(0, 0)))


class WindowNegativeGlobal(Mutant):
    """A window side below -1 is silently treated as unbounded instead of raising ValueError (class 7).

    Trigger: window (-2, 0): spec says ValueError.
    """

    bug_class = "7"

    def make_mask(self, *, causal, window, alignment):
        if window is not None:
            window = tuple(max(int(w), -1) for w in window)
        return super().make_mask(causal=causal, window=window, alignment=alignment)

    def trigger(self):
        return Trigger(kind="reject", qkv=_qkv(1, 2, 2, 8, 8, 16), opts=dict(window=(-2, 0)))


class FirstTileSkipped(Mutant):
    """Window loop start rounded up to a tile boundary: the partial first key tile is skipped (class 7).

    Trigger: causal window (5, 0), L=40: rows 16-20 lose keys 11-15.
    """

    bug_class = "7"

    def key_tiles(self, lo, hi, bn, lk):
        return range(-(-lo // bn) * bn, hi, bn)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 40, 40, 16), opts=dict(causal=True, window=(5, 0)))


# ------------------------------------------------------------------ 8. softcap
class SoftcapDropped(Mutant):
    """softcap accepted but never applied (class 8).

    Trigger: softcap=1.0 on logits of size ~3.
    """

    bug_class = "8"

    def scores(self, q, k, call):
        call = dataclasses.replace(call, softcap=None)
        return super().scores(q, k, call)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16), opts=dict(softcap=1.0, scale=1.0))


class SoftcapAfterLog2Fold(Mutant):
    """softcap applied after the log2(e) fold: ln2 * c tanh(log2e s / c) instead of c tanh(s / c) (class 8).

    Trigger: softcap=2.0, scale=1.0, logits of size ~4.
    """

    bug_class = "8"

    def scores(self, q, k, call):
        if call.softcap is None:
            return super().scores(q, k, call)
        s = super().scores(q, k, dataclasses.replace(call, softcap=None))
        c = F32(call.softcap)
        return (LN2 * (c * np.tanh((s * LOG2E) / c))).astype(F32)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16), opts=dict(softcap=2.0, scale=1.0))


class SoftcapBeforeScale(Mutant):
    """softcap applied to the unscaled q.k, then scaled: scale c tanh(q.k / c) (class 8).

    Trigger: softcap=2.0 with the default scale 1/4 (E=16).
    """

    bug_class = "8"

    def scores(self, q, k, call):
        if call.softcap is None:
            return super().scores(q, k, call)
        x = np.matmul(self.load_qk(q), self.load_qk(k).swapaxes(-1, -2))
        c = F32(call.softcap)
        return (F32(call.scale) * (c * np.tanh(x / c))).astype(F32)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16), opts=dict(softcap=2.0))


# ------------------------------------------------------------------ 9. low precision
class Bf16Accumulator(Mutant):
    """Output accumulator kept in bf16 (rounded after every tile) while fp32 is declared (class 9).

    Trigger: fp32 inputs, Lk=64 (4 tiles): error ~1e-3, far above the fp32 bound.
    """

    bug_class = "9"

    def merge(self, a, b, ops):
        st = super().merge(a, b, ops)
        return State(st.m, st.l, round_to(np.asarray(st.acc, F32), "bfloat16"))

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 16, 64, 16))


def _tf32(x: np.ndarray) -> np.ndarray:
    """Round fp32 mantissas to 10 bits (round to nearest even), as TF32 tensor cores read them."""
    u = np.ascontiguousarray(x, F32).view(np.uint32)
    bias = np.uint32(0xFFF) + ((u >> np.uint32(13)) & np.uint32(1))
    r = ((u + bias) & np.uint32(0xFFFFE000)).view(F32)
    return np.where(np.isfinite(x), r, x)


class Tf32Operands(Mutant):
    """Q K^T computed with TF32 operands (mantissas rounded to 10 bits) for fp32 inputs (class 9, tl.dot default).

    Trigger: fp32 random inputs, E=64: logits off by ~1e-3 relative.
    """

    bug_class = "9"

    def load_qk(self, x):
        return _tf32(x)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 16, 32, 64))


class Fp16ScoreOverflow(Mutant):
    """fp16 inputs: Q K^T stored in fp16 before scaling, so dot products above 65504 become inf (class 9, triton#1671).

    Trigger: fp16, q = k = 40 (E=64): q.k = 102400 overflows; the scaled logit 12800 is fine.
    """

    bug_class = "9"

    def scores(self, q, k, call):
        if call.dtype != torch.float16:
            return super().scores(q, k, call)
        x = round_to(np.matmul(q, k.swapaxes(-1, -2)).astype(F32), "float16")
        s = x * F32(call.scale)
        if call.softcap is not None:
            c = F32(call.softcap)
            s = c * np.tanh(s / c)
        return s.astype(F32)

    def trigger(self):
        q = torch.full((1, 1, 4, 64), 40.0, dtype=torch.float16)
        k = torch.full((1, 1, 8, 64), 40.0, dtype=torch.float16)
        v = torch.randn(1, 1, 8, 64, generator=_gen()).half()
        return Trigger(kind="forward", qkv=(q, k, v))


# ------------------------------------------------------------------ 10. inconsistent P
class _Bf16P(Float32Ops):
    def weighted_sum(self, s, p, v, dim):
        return super().weighted_sum(s, round_to(np.asarray(p, F32), "bfloat16"), v, dim)


class InconsistentP(Mutant):
    """l sums the fp32 P but P@V uses P rounded to bf16 whatever the storage dtype (class 10, flash-attention#2716).

    Trigger: fp32 inputs with v = 1: every row must output 1 to fp32 accuracy; it is off by ~1e-3.
    """

    bug_class = "10"

    def make_ops(self, dtype):
        return _Bf16P(None)

    def trigger(self):
        q, k, _ = _qkv(1, 2, 2, 16, 40, 16)
        return Trigger(kind="forward", qkv=(q, k, torch.ones(1, 2, 40, 16)))


# ------------------------------------------------------------------ 11. backward
class BackwardEmptyRowNan(Mutant):
    """Backward P = exp(S - LSE) with LSE = -inf on empty rows: -inf - (-inf) = NaN flows into dV (class 11, flash-attention#1947).

    Trigger: causal="bottom_right", Lq=6 > Lk=3 (rows 0-2 empty): gradients must be finite.
    """

    bug_class = "11"

    def backward_probs(self, s, allowed, lse):
        with np.errstate(invalid="ignore", over="ignore"):
            return Float32Ops().exp(np.where(allowed, s, NEG_INF) - lse[..., None])

    def trigger(self):
        return Trigger(kind="backward", qkv=_qkv(1, 2, 2, 6, 3, 8), opts=dict(causal="bottom_right"))


class BackwardNoDelta(Mutant):
    """Backward drops the D = rowsum(dO * O) term (preprocess output never read): dS = P * dP (class 11).

    Trigger: random inputs, gradients vs reference.backward_fp64.
    """

    bug_class = "11"

    def backward_delta(self, do, o):
        return np.zeros(do.shape[:-1], F32)

    def trigger(self):
        return Trigger(kind="backward", qkv=_qkv(1, 2, 2, 6, 10, 8))


class GqaDkNotSummed(Mutant):
    """dK/dV of a KV head stored (last writer wins) instead of summed over its GQA group (class 15/11).

    Trigger: H=4, Hkv=2 backward.
    """

    bug_class = "15/11"

    def reduce_heads(self, g, kv_heads, kvmap):
        out = np.zeros((g.shape[0], kv_heads) + g.shape[2:], F32)
        for h, kh in enumerate(kvmap):
            out[:, kh] = g[:, h]
        return out

    def trigger(self):
        return Trigger(kind="backward", qkv=_qkv(1, 4, 2, 6, 10, 8))


# ------------------------------------------------------------------ 12. determinism
_LAUNCHES = itertools.count()


class NondeterministicOrder(Mutant):
    """Key tiles visited in an order rotated by a global launch counter (an atomic ticket): reruns differ in the last bits (class 12).

    Trigger: fp32, Lq=16, Lk=64: two identical calls are not bitwise equal.
    """

    bug_class = "12"
    _rotation = 0

    def attend(self, qf, kf, vf, call, ops, *, span=None):
        self._rotation = next(_LAUNCHES)  # one ticket per launch
        return super().attend(qf, kf, vf, call, ops, span=span)

    def tile_order(self, starts):
        r = self._rotation % max(len(starts), 1)
        return list(starts[r:]) + list(starts[:r])

    def trigger(self):
        return Trigger(kind="repeat", qkv=_qkv(1, 2, 2, 16, 64, 16))


#: FlashAttention-2's split heuristic leaves the key loop whole once the grid fills 80% of the
#: GPU's SMs (132 on an H100); below that it splits the keys to occupy the machine.
_FULL_GRID = int(0.8 * 132)


class BatchDependentSchedule(Mutant):
    """Grids below 80% of an H100's 132 SMs (B*H*query tiles < 105) split the key loop in two halves merged at the end: a row's bits depend on its batch-mates (class 12).

    Trigger: fp32, B=128, H=1, Lq=16, Lk=64: batch element 0 alone (grid 1) vs in the batch (grid 128).
    """

    bug_class = "12"

    def attend(self, qf, kf, vf, call, ops, *, span=None):
        bsz, h, lq = qf.shape[:3]
        n_tiles = -(-kf.shape[2] // call.block_n)
        if span is None and bsz * h * -(-lq // call.block_m) < _FULL_GRID and n_tiles > 1:
            half = (n_tiles // 2) * call.block_n
            a = super().attend(qf, kf, vf, call, ops, span=(0, half))
            b = super().attend(qf, kf, vf, call, ops, span=(half, kf.shape[2]))
            return self.merge(a, b, ops)
        return super().attend(qf, kf, vf, call, ops, span=span)

    def trigger(self):
        return Trigger(kind="batch", qkv=_qkv(128, 1, 1, 16, 64, 16))


# ------------------------------------------------------------------ 13. split-KV
class SplitEmptyMergeNan(Mutant):
    """Split-KV partials merged pairwise with no guard for two empty states: NaN (class 13, flashinfer#4051).

    Trigger: decode seqlens [40, 5], num_splits=4: row 1's splits 2 and 3 are both empty.
    """

    bug_class = "13"

    def combine_splits(self, o_part, lse_part, ops):
        bad = _NoShiftGuard(None)
        states = [spec.partial_state(o_, l_, bad) for o_, l_ in zip(o_part, lse_part)]
        while len(states) > 1:
            nxt = [self.merge(states[i], states[i + 1], bad) for i in range(0, len(states) - 1, 2)]
            states = nxt + ([states[-1]] if len(states) % 2 else [])
        return self.finalize(states[0], ops)

    def trigger(self):
        q, k, v = _qkv(2, 2, 2, 1, 40, 16)
        return Trigger(kind="decode", qkv=(q, k, v), opts=dict(seqlens=torch.tensor([40, 5]), num_splits=4))


class SplitBatchStride(Mutant):
    """Split-KV combine reads the partial LSEs with batch stride 0: only batch element 0 is right (class 13, flash-attention#978).

    Trigger: decode B=2, seqlens [40, 40], num_splits=3.
    """

    bug_class = "13"

    def combine_splits(self, o_part, lse_part, ops):
        return super().combine_splits(o_part, np.broadcast_to(lse_part[:, :1], lse_part.shape), ops)

    def trigger(self):
        q, k, v = _qkv(2, 2, 2, 1, 40, 16)
        return Trigger(kind="decode", qkv=(q, k, v), opts=dict(seqlens=torch.tensor([40, 40]), num_splits=3))


class SplitEmptyLsePosInf(Mutant):
    """An empty split writes its partial LSE as +inf instead of -inf: the combine gives NaN (class 13/14).

    Trigger: decode seqlens [40, 5], num_splits=4.
    """

    bug_class = "13"

    def combine_splits(self, o_part, lse_part, ops):
        return super().combine_splits(o_part, np.where(np.isneginf(lse_part), F32(np.inf), lse_part), ops)

    def trigger(self):
        q, k, v = _qkv(2, 2, 2, 1, 40, 16)
        return Trigger(kind="decode", qkv=(q, k, v), opts=dict(seqlens=torch.tensor([40, 5]), num_splits=4))


# ------------------------------------------------------------------ 14. LSE convention
class LseLog2(Mutant):
    """Returned LSE is the kernel's internal base-2 value log2(sum exp) (class 14, vllm#43919).

    Trigger: random inputs, return_lse=True.
    """

    bug_class = "14"

    def finalize(self, st, ops):
        o, lse = super().finalize(st, ops)
        return o, lse * LOG2E

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16))


class EmptyRowLsePosInf(Mutant):
    """Empty rows get LSE = +inf instead of -inf (class 14).

    Trigger: causal="bottom_right", Lq=6 > Lk=3: rows 0-2 must have LSE -inf.
    """

    bug_class = "14"

    def finalize(self, st, ops):
        o, lse = super().finalize(st, ops)
        return o, np.where(np.isneginf(lse), F32(np.inf), lse)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 6, 3, 8), opts=dict(causal="bottom_right"))


# ------------------------------------------------------------------ 15. GQA
class GqaMod(Mutant):
    """Query head h reads KV head h % Hkv instead of h // (H / Hkv) (class 15, pytorch#186434).

    Trigger: H=6, Hkv=2.
    """

    bug_class = "15"

    def kv_map(self, heads, kv_heads):
        super().kv_map(heads, kv_heads)  # keeps the validation
        return np.arange(heads) % kv_heads

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 6, 2, 8, 12, 16))


# ------------------------------------------------------------------ 16. paged KV
class PagedTableIgnored(Mutant):
    """Paged decode reads logical page j // page_size as the physical page: block_table ignored (class 16).

    Trigger: shuffled block table, page_size 5.
    """

    bug_class = "16"

    def gather(self, cache, b, lk, block_table, page_size):
        if block_table is None:
            return super().gather(cache, b, lk, block_table, page_size)
        j = np.arange(lk)
        return self.load(cache)[j // page_size, :, j % page_size].transpose(1, 0, 2)

    def trigger(self):
        return _paged_trigger()


class PagedOffsetPow2(Mutant):
    """Offset in a page computed as j & (page_size - 1): right only for power-of-two page sizes (class 16).

    Trigger: page_size 5.
    """

    bug_class = "16"

    def gather(self, cache, b, lk, block_table, page_size):
        if block_table is None:
            return super().gather(cache, b, lk, block_table, page_size)
        j = np.arange(lk)
        pages = np.asarray(block_table[b].cpu(), np.int64)[j // page_size]
        return self.load(cache)[pages, :, j & (page_size - 1)].transpose(1, 0, 2)

    def trigger(self):
        return _paged_trigger()


def _paged_trigger():
    g = _gen(3)
    ps, n_pages = 5, 12
    k = torch.randn(n_pages, 2, ps, 16, generator=g)
    v = torch.randn(n_pages, 2, ps, 16, generator=g)
    q = torch.randn(2, 2, 1, 16, generator=g)
    table = torch.randperm(n_pages, generator=g)[:10].reshape(2, 5)
    return Trigger(kind="decode", qkv=(q, k, v), opts=dict(block_table=table, seqlens=torch.tensor([23, 17]), num_splits=2))


# ------------------------------------------------------------------ 17. addressing
class StridesIgnored(Mutant):
    """Inputs read as if contiguous (data_ptr + row-major offsets): wrong for strided views (class 17, addressing).

    Trigger: q a transposed view of a (B, L, H, E) tensor.
    """

    bug_class = "17"

    def load(self, t):
        if t.dim() != 4:
            return super().load(t)
        shape = tuple(t.shape)
        strides = (shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1)
        return super().load(torch.as_strided(t, shape, strides, t.storage_offset()))

    def trigger(self):
        q, k, v = _qkv(1, 2, 2, 8, 12, 16)
        q = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, (B, L, H, E) memory
        return Trigger(kind="forward", qkv=(q, k, v))


# ------------------------------------------------------------------ 18. head dim
class ScaleFromPaddedDim(Mutant):
    """Default scale 1/sqrt(E_pad) with E padded to the next power of two (class 18, triton#621).

    Trigger: E=40 with the default scale (1/sqrt(64) used instead of 1/sqrt(40)).
    """

    bug_class = "18"

    def resolve_scale(self, scale, e):
        return super().resolve_scale(scale, 1 << (int(e) - 1).bit_length() if scale is None else e)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 12, 40))


class HeadDimTruncated(Mutant):
    """Only the first 64 head dims enter Q K^T (BLOCK_DMODEL = 64 hard-coded) (class 18).

    Trigger: E=80.
    """

    bug_class = "18"

    def load_qk(self, x):
        x = np.array(x)
        x[..., 64:] = 0
        return x

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 12, 80))


# ------------------------------------------------------------------ extra: the recurrence itself
class MissingAccRescale(Mutant):
    """acc not rescaled by exp(m_old - m_new) when the running max grows (extra: online-softmax recurrence).

    Trigger: Lk=64 (4 tiles) with logits growing along the keys.
    """

    bug_class = "extra"

    def merge(self, a, b, ops):
        st = super().merge(a, b, ops)
        beta = ops.exp(b.m - ops.shift(st.m))
        return State(st.m, st.l, a.acc + ops.vec_scale(beta, b.acc))

    def trigger(self):
        return Trigger(kind="forward", qkv=_growing(), opts=dict(scale=1.0))


class MissingLRescale(Mutant):
    """l not rescaled by exp(m_old - m_new) when the running max grows (extra: online-softmax recurrence).

    Trigger: Lk=64 (4 tiles) with logits growing along the keys.
    """

    bug_class = "extra"

    def merge(self, a, b, ops):
        st = super().merge(a, b, ops)
        beta = ops.exp(b.m - ops.shift(st.m))
        return State(st.m, a.l + beta * b.l, st.acc)

    def trigger(self):
        return Trigger(kind="forward", qkv=_growing(), opts=dict(scale=1.0))


def _growing():
    q, _, v = _qkv(1, 1, 1, 4, 64, 8)
    q = torch.ones(1, 1, 4, 8)
    k = (torch.arange(64, dtype=torch.float32) / 32)[None, None, :, None].expand(1, 1, 64, 8).contiguous()
    return q, k, v


class _ExpSign(Float32Ops):
    def exp_shifted(self, x, m):
        return self.exp(np.asarray(m)[..., None] - x)  # the bug: exp(m - s)


class ExpSignFlip(Mutant):
    """P = exp(m - s) instead of exp(s - m) (extra: wrong sign in the exponent).

    Trigger: random inputs.
    """

    bug_class = "extra"

    def make_ops(self, dtype):
        return _ExpSign(super().make_ops(dtype).p_dtype)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16))


class _Exp2(Float32Ops):
    log2e = F32(1.4427)

    def exp(self, x):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.exp2(np.asarray(x, F32) * self.log2e)


class _Exp2Coarse(_Exp2):
    log2e = F32(1.44)


class Log2eRounded4(Mutant):
    """exp(x) computed as exp2(x * 1.4427): log2(e) rounded to 5 digits (extra; a 3.4e-6 relative error in every exponent).

    Trigger: E=1, logits spread over [-2, 2], v = 1000 s: O off by ~1e-6 relative to max|v|
    (the base's fp32 rounding: 4e-8).
    """

    bug_class = "extra"
    _ops = _Exp2

    def make_ops(self, dtype):
        return self._ops(super().make_ops(dtype).p_dtype)

    def trigger(self):
        # E=1, logits spread over [-2, 2] with comparable weights, v = 1000 s: the error is
        # 3.4e-6 * Cov_p(s, v) ~ 1e-6 of max|v|, ~30x the base's fp32 rounding error of O.
        k = torch.linspace(-2, 2, 64).reshape(1, 1, 64, 1)
        return Trigger(kind="forward", qkv=(torch.ones(1, 1, 4, 1), k, 1000 * k), opts=dict(scale=1.0))


class Log2eRounded2(Log2eRounded4):
    """exp(x) computed as exp2(x * 1.44): log2(e) rounded to 3 digits (extra).

    Trigger: E=1, logits spread over [-2, 2], v = 1000 s.
    """

    _ops = _Exp2Coarse


class ScaleIgnored(Mutant):
    """A caller's explicit scale is ignored; 1/sqrt(E) is always used (extra: scale plumbing).

    Trigger: scale=0.3 with E=16.
    """

    bug_class = "extra"

    def resolve_scale(self, scale, e):
        return super().resolve_scale(None, e)

    def trigger(self):
        return Trigger(kind="forward", qkv=_qkv(1, 2, 2, 8, 20, 16), opts=dict(scale=0.3))


class BoolMaskInverted(Mutant):
    """Boolean attn_mask read with True = masked (the xformers/Keras convention), not torch's True = attend (extra).

    Trigger: a random boolean mask.
    """

    bug_class = "extra"

    def bool_keep(self, mask):
        return ~mask

    def trigger(self):
        q, k, v = _qkv(1, 2, 2, 8, 20, 16)
        m = torch.rand(1, 1, 8, 20, generator=_gen(5)) > 0.3
        return Trigger(kind="forward", qkv=(q, k, v), opts=dict(attn_mask=m))


class BiasScaled(Mutant):
    """Additive attn_mask added before the scale: (q.k + bias) * scale (extra: mask semantics).

    Trigger: a random float mask with scale 0.5.
    """

    bug_class = "extra"

    def add_bias(self, s, bias, call):
        return s + bias * F32(call.scale)

    def trigger(self):
        q, k, v = _qkv(1, 2, 2, 8, 20, 16)
        bias = torch.randn(1, 2, 8, 20, generator=_gen(6)) * 3
        return Trigger(kind="forward", qkv=(q, k, v), opts=dict(attn_mask=bias, scale=0.5))


# ------------------------------------------------------------------ long accumulation (scored through the length budget)
class LongMutant(Mutant):
    """A kernel with fixed 32-key tiles whose bug only shows after many tiles (bug class 9).

    ``trigger(lk)`` builds the same input at any length: beyond the derived bound at lk = 4096
    (128 tiles), within it at lk <= 40 (at most 2 tiles, the ci profile's longest), which
    tests/test_mutation_score.py::test_long_mutants_need_long_inputs shows. Declared like the
    other mutants but with this one tile config and ``declared_dtypes`` (see registry.target_of).
    """

    block_m = 16
    block_n = 32
    declared_tiles = ({"block_m": 16, "block_n": 32},)
    declared_dtypes = ("float16", "bfloat16")
    #: up to this many keys it computes bit for bit what the correct base computes
    same_as_base_up_to = 32

    def prepare(self, q, k, v, **kw):
        return super().prepare(q, k, v, **{**kw, "block_n": 32})  # the tile is fixed: a request changes nothing

    def trigger(self, lk=4096):  # pragma: no cover - every long mutant defines one
        raise NotImplementedError


def _uniform_tiles(lk, dtype, last):
    """Uniform weights (q = k = 0) and v = 1 except every 32nd key = ``last``: each full tile sums to
    31 + last in fp32, exactly. Rows: 4, E = 16."""
    v = torch.ones(1, 1, lk, 16)
    v[:, :, 31::32] = last
    return (torch.zeros(1, 1, 4, 16, dtype=dtype), torch.zeros(1, 1, lk, 16, dtype=dtype), v.to(dtype))


class _CarriedAcc(LongMutant):
    """The running state crosses work units of ``carry_every`` tiles through a buffer; acc's is in
    ``acc_dtype`` (m and l stay fp32). With at most ``carry_every`` tiles nothing is carried."""

    acc_dtype = torch.bfloat16
    carry_every = 2
    same_as_base_up_to = 64  # carry_every tiles of 32

    def init_state(self, shape, ev, ops):
        self._tiles = 0  # tiles merged into this query tile's state
        return super().init_state(shape, ev, ops)

    def merge(self, a, b, ops):
        tiles = getattr(self, "_tiles", 0)
        if tiles and tiles % self.carry_every == 0:  # the bug: acc came back from a buffer in acc_dtype
            a = State(a.m, a.l, round_to(np.asarray(a.acc, F32), self.acc_dtype))
        self._tiles = tiles + 1
        return super().merge(a, b, ops)


class LongBf16Acc(_CarriedAcc):
    """Running acc carried between 64-key work units (2 tiles of 32) in bf16 while fp32 is declared (class 9, long inputs only).

    Declared for bf16 inputs; nothing is rounded up to 64 keys. Trigger: uniform weights, each work unit summing
    to 71.875 (v = 1, every 32nd key 4.9375): past acc = 2048 each carry loses 7.875, just under half an ulp (16).
    """

    acc_dtype = torch.bfloat16
    declared_dtypes = ("bfloat16",)

    def trigger(self, lk=4096):
        return Trigger(kind="forward", qkv=_uniform_tiles(lk, torch.bfloat16, 4.9375), tile=dict(block_n=32))


class LongFp16Acc(_CarriedAcc):
    """Running acc carried between 64-key work units (2 tiles of 32) in fp16 while fp32 is declared (class 9, long inputs only).

    Declared for fp16 inputs; nothing is rounded up to 64 keys. Trigger: uniform weights, each work unit summing
    to 64.990234375 (v = 1, every 32nd key 1 + 507/1024): past acc = 2048 each carry loses 0.99, just under half an ulp (2).
    """

    acc_dtype = torch.float16
    declared_dtypes = ("float16",)

    def trigger(self, lk=4096):
        return Trigger(kind="forward", qkv=_uniform_tiles(lk, torch.float16, 1 + 507 / 1024), tile=dict(block_n=32))


class LongRescaleInStorage(LongMutant):
    """acc rescaled in the storage dtype each tile: fl16(fl16(alpha) * fl16(acc)) while fp32 is declared (class 9, long inputs only).

    Trigger: the logits grow by delta per 32-key tile (q = 1, k = tile index, scale = delta / E), v = 1, with
    exp(-delta) = 1 - 0.9 u_in / 2 rounding to 1 in the storage dtype: acc is not shrunk while l is, so O
    drifts up by ~0.45 u_in per tile (bf16 inputs; the fp16 case is the same with its u_in). Its one rounding
    at 2 tiles can show too: the fp16 longest corner of output_within_error_bound (same-sign values) breaks
    the bound by 1.07x at 40 keys, the ci profile's base.
    """

    def merge(self, a, b, ops):
        dt = ops.p_dtype or torch.float32
        m = np.maximum(a.m, b.m)
        shift = ops.shift(m)
        alpha, beta = ops.exp(a.m - shift), ops.exp(b.m - shift)
        scaled = round_to(round_to(np.asarray(alpha, F32), dt)[..., None] * round_to(np.asarray(a.acc, F32), dt), dt)
        return State(m, (alpha * a.l + beta * b.l).astype(F32), (scaled + beta[..., None] * b.acc).astype(F32))

    def trigger(self, lk=4096, dtype=torch.bfloat16):
        e, u = 16, {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}[dtype]
        delta = -math.log1p(-0.45 * u)
        k = (torch.arange(lk) // 32).to(torch.float32)[None, None, :, None].expand(1, 1, lk, e)
        return Trigger(kind="forward", qkv=(torch.ones(1, 1, 4, e, dtype=dtype), k.to(dtype).contiguous(),
                                            torch.ones(1, 1, lk, e, dtype=dtype)),
                       opts=dict(scale=delta / e), tile=dict(block_n=32))


MUTANTS: tuple[type[Mutant], ...] = tuple(
    c for c in list(globals().values())
    if isinstance(c, type) and issubclass(c, Mutant) and c not in (Mutant, LongMutant) and not c.__name__.startswith("_")
)
#: The planted bugs that need long inputs (more than 2 tiles of 32 keys) to show at all: at the ci profile's base
#: max_len 40 they compute what the correct base computes (the carried ones) or stay within the bound (the rescale),
#: and pass. They are in MUTANTS (scored): the length budget (flashproof.properties.length_budget) raises ci's
#: max_len to 512 for the zoo's fast kernels, and output_within_error_bound's longest corner kills them there.
LONG_MUTANTS: dict[str, type[LongMutant]] = {c.__name__: c for c in (LongBf16Acc, LongFp16Acc, LongRescaleInStorage)}


def mutant_by_name(name: str) -> type[Mutant]:
    for c in MUTANTS:
        if c.__name__ == name:
            return c
    raise KeyError(f"no mutant named {name!r}; known: {[c.__name__ for c in MUTANTS]}")

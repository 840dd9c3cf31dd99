"""The certified reference: spec's online-softmax state in python-flint arb ball arithmetic.

Every ball is guaranteed (by arb's rigorous error propagation) to contain the exact real value
of spec's formula on the exactly converted inputs, with the exact real scale 1/sqrt(E) (an arb
ball, ``arb(E).rsqrt()``) when none is given. Heavy linear algebra runs in C: q@k^T and P@[v|1]
are arb_mat products; only exp (and tanh for softcap) is a per-element Python call.

The state runs batched over a chunk of query rows: a "scalar" of spec's ops is an ArbVec (one
ball per row) and the score sequence is a list of key columns, so spec.block_state/finalize
are used unchanged (no second copy of the recurrence). The shift m of each row is an exact 0:
any shift gives the same exact state, arb's exponents cannot overflow, and an exact shift avoids
the dependency blow-up a ball-valued m would cause in acc/l.

Rows that a NaN/inf input reaches (an allowed q_i, k_j, v_j or additive bias) are not
certifiable: their mid follows the IEEE rules of spec through forward_fp64 and their rad is inf.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flint import arb, arb_mat, ctx

from flashproof.spec import ScalarOps, block_state, finalize

from ._inputs import Prepared, prepare, row_chunk
from .fast import _forward_fp64

__all__ = ["Certified", "forward_certified", "ArbOps", "ArbVec", "DEFAULT_PREC"]

#: Default working precision (bits). At 96 bits the ball radii of O and LSE are ~1e-9 of an
#: fp64 ulp for logits up to |s| ~ 1e4 (measured: tests/test_reference_agreement.py, benchmarks).
DEFAULT_PREC = 96

_ZERO = arb(0)


class ArbVec(list):
    """One arb ball per query row; ``None`` stands for -inf (an empty state's shift)."""

    def __sub__(self, other):
        return ArbVec(None if a is None else a - b for a, b in zip(self, other))

    def __add__(self, other):
        return ArbVec(a + b for a, b in zip(self, other))

    def __mul__(self, other):
        return ArbVec(a * b for a, b in zip(self, other))


class _Col:
    """One key's logits over the chunk's rows, with which rows may attend it."""

    __slots__ = ("vals", "keep", "all_keep")

    def __init__(self, vals, keep):
        self.vals = vals
        self.keep = keep
        self.all_keep = all(keep)


class _Block(list):
    """A block of key columns; ``nonempty[i]`` says whether row i attends any key of it."""

    nonempty: list


class ArbOps(ScalarOps):
    """spec's ops over a chunk of ``rows`` query rows in arb.

    The values ``v`` of a block are an arb_mat ``[v | 1]`` (n x (Ev+1)), so that acc and l come
    out of ONE C product ``P @ [v | 1]``. The shift of a non-empty row is an exact 0: any shift
    gives the same exact state, arb's exponent range cannot overflow, and an exact shift keeps
    acc and l free of the dependency blow-up a ball-valued shift would cause in acc/l.
    """

    def __init__(self, rows: int):
        self.rows = rows
        self.neg_inf = ArbVec([None] * rows)
        self.zero = ArbVec([_ZERO] * rows)
        self._cache = None
        self._zero_shift = None
        self.values = None  # the block's [v | 1], for total(), which is not given v

    def zeros(self, dim):
        return [[_ZERO] * dim for _ in range(self.rows)]

    def exp(self, x):
        return ArbVec(_ZERO if a is None else a.exp() for a in x)

    def log(self, x):
        return ArbVec(a.log() for a in x)

    def maximum(self, a, b):
        # Shifts are exact points, so comparing them is exact; None (-inf) loses.
        return ArbVec(y if x is None else x if y is None else (x if x >= y else y) for x, y in zip(a, b))

    def is_neg_inf(self, x):
        return x is None

    def shift(self, m):
        return ArbVec(_ZERO if a is None else a for a in m)

    def row_max(self, s):
        return ArbVec(_ZERO if ne else None for ne in s.nonempty)

    def exp_shifted(self, x, c):
        if self._zero_shift is None or self._zero_shift[0] is not c:
            self._zero_shift = (c, all(ci is _ZERO for ci in c))
        if self._zero_shift[1]:  # exp(x - 0): the common case, one arb call per element
            if x.all_keep:
                return [a.exp() for a in x.vals]
            return [a.exp() if k else _ZERO for a, k in zip(x.vals, x.keep)]
        return [(a - ci).exp() if k else _ZERO for a, ci, k in zip(x.vals, c, x.keep)]

    def _product(self, p, ve):
        """Row-major entries of P @ [v | 1]: per row, acc (Ev entries) then l."""
        if self._cache is not None and self._cache[0] is p and self._cache[1] is ve:
            return self._cache[2]
        n = len(p)
        w = ve.ncols()
        if n:
            # (rows x n) @ (n x w) is faster in arb than the transposed order (measured 1.5x).
            prod = arb_mat(n, self.rows, [x for col in p for x in col]).transpose() * ve
            ent = prod.entries()
        else:
            ent = [_ZERO] * (self.rows * w)
        self._cache = (p, ve, ent)
        return ent

    def total(self, p):
        ent = self._product(p, self.values)
        w = self.values.ncols()
        return ArbVec(ent[i * w + w - 1] for i in range(self.rows))

    def weighted_sum(self, s, p, v, dim):
        ent = self._product(p, v)
        w = v.ncols()
        return [ent[i * w:i * w + dim] for i in range(self.rows)]

    def vec_scale(self, a, acc):
        return [[x * y for y in row] for x, row in zip(a, acc)]

    def vec_add(self, x, y):
        return [[a + b for a, b in zip(r, t)] for r, t in zip(x, y)]

    def is_empty(self, l):
        return False  # empty rows are set structurally by the caller (o = 0, lse = -inf)

    def finalize(self, st):
        o = [[a / li for a in row] for row, li in zip(st.acc, st.l)]
        lse = [None if m is None else m + li.log() for m, li in zip(st.m, st.l)]
        return o, lse


@dataclass(frozen=True)
class Certified:
    """Balls around exact attention: |exact - mid| <= rad elementwise (float64 arrays).

    ``rad`` includes the rounding of the ball's midpoint to float64; ``o_ball_rad`` and
    ``lse_ball_rad`` are arb's own radii (rounded up), before that rounding. ``certified`` is
    False for rows that NaN/inf inputs reach (mid by IEEE rules, rad inf).
    """

    o_mid: np.ndarray
    o_rad: np.ndarray
    lse_mid: np.ndarray
    lse_rad: np.ndarray
    o_ball_rad: np.ndarray
    lse_ball_rad: np.ndarray
    certified: np.ndarray
    prec: int

    def contains(self, o, lse) -> bool:
        """Whether the float64 values ``o``/``lse`` lie in every ball (-inf matches -inf)."""
        o = np.asarray(o, dtype=np.float64)
        lse = np.asarray(lse, dtype=np.float64)
        ok_o = (np.abs(o - self.o_mid) <= self.o_rad) | (o == self.o_mid)
        ok_l = (np.abs(lse - self.lse_mid) <= self.lse_rad) | (lse == self.lse_mid)
        return bool(ok_o.all() and ok_l.all())


def _up(x: np.ndarray) -> np.ndarray:
    return np.nextafter(x, np.inf)


def _to_mid_rad(balls):
    """(mid, total rad, ball rad) float64 arrays of a list of arb: total rad bounds
    |exact - mid| including the rounding of arb's midpoint to float64 (rigorously, rounded up)."""
    n = len(balls)
    mid = np.empty(n)
    rad = np.empty(n)
    brad = np.empty(n)
    for t, x in enumerate(balls):
        m = x.mid()
        mf = float(m)
        mid[t] = mf
        r = x.rad()
        brad[t] = float(r)
        rad[t] = float((r + abs(m - arb(mf))).upper()) if np.isfinite(mf) else np.inf
    # float() of an arb rounds its midpoint to nearest: one step up makes each an upper bound.
    return mid, _up(rad), _up(brad)


def forward_certified(q, k, v, *, prec=DEFAULT_PREC, attn_mask=None, causal=False, alignment=None,
                      window=None, scale=None, softcap=None) -> Certified:
    """Certified attention: arb balls, at ``prec`` bits, around the exact O and LSE.

    Empty rows: o 0 (rad 0), lse -inf (rad 0).
    """
    if isinstance(prec, bool) or not isinstance(prec, int) or prec < 2:
        raise ValueError(f"prec must be an int >= 2 (bits), got {prec!r}")
    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap)
    old = ctx.prec
    try:
        return _certified(pb, prec)
    finally:
        ctx.prec = old


def _certified(pb: Prepared, prec: int) -> Certified:
    d = pb.dims
    o_mid = np.zeros((d.batch, d.heads, d.lq, d.ev))
    o_rad = np.zeros_like(o_mid)
    o_brad = np.zeros_like(o_mid)
    lse_mid = np.full((d.batch, d.heads, d.lq), -np.inf)
    lse_rad = np.zeros_like(lse_mid)
    lse_brad = np.zeros_like(lse_mid)
    cert = np.ones((d.batch, d.heads, d.lq), dtype=bool)

    # Non-finite inputs are zeroed for the arb products; the rows they reach are redone below.
    fin_q = np.isfinite(pb.q).all(axis=-1)
    fin_k = np.isfinite(pb.k).all(axis=-1)
    fin_v = np.isfinite(pb.v).all(axis=-1)
    q0, k0, v0 = (np.where(np.isfinite(x), x, 0.0) for x in (pb.q, pb.k, pb.v))
    ctx.prec = max(prec, 53)  # float64 -> arb is exact at >= 53 bits
    scale = arb(d.e).rsqrt() if pb.scale is None else arb(pb.scale)
    cap = None if pb.softcap is None else arb(pb.softcap)
    step = row_chunk(d.lk, 1 << 20)
    for b in range(d.batch):
        for h in range(d.heads):
            hk = pb.kv(h)
            for r0 in range(0, d.lq, step):
                r1 = min(d.lq, r0 + step)
                c0, c1 = pb.key_span(r0, r1)
                if c1 <= c0:
                    continue
                rows = r1 - r0
                keep = pb.allowed(b, h, r0, r1, c0, c1)
                bias = pb.bias(b, h, r0, r1, c0, c1)
                bad = (keep & ~(fin_k[b, hk, c0:c1] & fin_v[b, hk, c0:c1])[None, :]).any(axis=1)
                bad |= keep.any(axis=1) & ~fin_q[b, h, r0:r1]
                if bias is not None:
                    bad |= (keep & ~np.isfinite(bias)).any(axis=1)
                cert[b, h, r0:r1] = ~bad
                keep = keep & ~bad[:, None]
                nonempty = keep.any(axis=1)
                if not nonempty.any():
                    continue
                ctx.prec = max(prec, 53)
                qtm = arb_mat(q0[b, h, r0:r1].T.tolist())
                km = arb_mat(k0[b, hk, c0:c1].tolist())
                n = c1 - c0
                ve = arb_mat(np.concatenate([v0[b, hk, c0:c1], np.ones((n, 1))], axis=1).tolist())
                bias0 = None if bias is None else np.where(keep, bias, 0.0)
                ctx.prec = prec
                st = (km * qtm) * scale  # (keys, rows): entries come key-major
                if cap is None and bias0 is not None:
                    st = st + arb_mat(bias0.T.tolist())  # exact floats, one C addition
                ent = st.entries()
                keep_t = keep.T.tolist()
                cols = _Block()
                for j in range(n):
                    vals = ent[j * rows:(j + 1) * rows]
                    kj = keep_t[j]
                    if cap is not None:
                        vals = [cap * (x / cap).tanh() if kk else x for x, kk in zip(vals, kj)]
                        if bias0 is not None:
                            vals = [x + arb(bb) if kk else x for x, bb, kk in zip(vals, bias0[:, j].tolist(), kj)]
                    cols.append(_Col(vals, kj))
                cols.nonempty = nonempty.tolist()
                ops = ArbOps(rows)
                ops.values = ve
                o_b, lse_b = finalize(block_state(cols, ve, d.ev, ops), ops)
                ctx.prec = max(prec, 53)  # float64 midpoints are exact points below
                live = np.nonzero(nonempty)[0]
                mid, rad, brad = _to_mid_rad([o_b[i][e] for i in live for e in range(d.ev)])
                o_mid[b, h, r0 + live] = mid.reshape(-1, d.ev)
                o_rad[b, h, r0 + live] = rad.reshape(-1, d.ev)
                o_brad[b, h, r0 + live] = brad.reshape(-1, d.ev)
                mid, rad, brad = _to_mid_rad([lse_b[i] for i in live])
                lse_mid[b, h, r0 + live] = mid
                lse_rad[b, h, r0 + live] = rad
                lse_brad[b, h, r0 + live] = brad
    if not cert.all():
        # IEEE semantics of spec for rows that NaN/inf reaches; not certified (rad = inf).
        o64, lse64 = _forward_fp64(pb)
        o_mid[~cert] = o64[~cert]
        lse_mid[~cert] = lse64[~cert]
        o_rad[~cert] = np.inf
        lse_rad[~cert] = np.inf
        o_brad[~cert] = np.inf
        lse_brad[~cert] = np.inf
    return Certified(o_mid, o_rad, lse_mid, lse_rad, o_brad, lse_brad, cert, prec)

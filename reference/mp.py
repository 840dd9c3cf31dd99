"""The mpmath reference: spec's online-softmax state evaluated at ``prec`` bits, row by row.

Inputs are converted exactly (every float64 is an mpf at >= 53 bits). Each logit is the
correctly rounded dot product (mpmath.fdot sums exact products, then rounds once) times the
scale; exp/log/tanh/division round at ``prec`` bits; the weighted sum and the row sum are again
exact sums rounded once. So every output has a relative error of a few units of 2**-prec
(more only through cancellation in acc, measured against arb in tests/test_reference_*.py).
"""
from __future__ import annotations

import mpmath
import numpy as np

from flashproof.spec import MP, block_state, finalize

from ._inputs import Prepared, mpf_to_float, prepare

__all__ = ["forward_mp", "MpPrepared", "to_float_array"]


class MpPrepared:
    """Prepared inputs as nested lists of exact mpf, and the mp logits of any (row, key)."""

    def __init__(self, pb: Prepared, prec: int):
        self.pb = pb
        self.prec = int(prec)
        with mpmath.mp.workprec(max(self.prec, 53)), np.errstate(invalid="ignore"):  # >= 53 bits: exact
            conv = np.frompyfunc(mpmath.mpf, 1, 1)
            self.q = conv(pb.q).tolist() if pb.q.size else np.empty(pb.q.shape, object).tolist()
            self.k = conv(pb.k).tolist() if pb.k.size else np.empty(pb.k.shape, object).tolist()
            self.v = conv(pb.v).tolist() if pb.v.size else np.empty(pb.v.shape, object).tolist()
            self.cap = None if pb.softcap is None else mpmath.mpf(pb.softcap)
        with mpmath.mp.workprec(self.prec):
            # The exact real 1/sqrt(E) when the caller gave no scale, else the caller's float.
            self.scale = (mpmath.mpf(1) / mpmath.sqrt(pb.dims.e)) if pb.scale is None else mpmath.mpf(pb.scale)

    def raw_logit(self, b, h, i, j):
        """scale * q_i . k_j, before softcap and bias (call inside workprec(prec))."""
        return mpmath.fdot(self.q[b][h][i], self.k[b][self.pb.kv(h)][j]) * self.scale

    def capped(self, x):
        return x if self.cap is None else self.cap * mpmath.tanh(x / self.cap)

    def row_logits(self, b, h, i, keep_row, c0=0, c1=None):
        """Logits of row i for keys c0:c1 (ninf where not allowed); call inside workprec(prec)."""
        c1 = self.pb.dims.lk if c1 is None else c1
        bias = self.pb.bias(b, h, i, i + 1, c0, c1)
        out = []
        for jj, j in enumerate(range(c0, c1)):
            if not keep_row[j]:
                out.append(mpmath.ninf)
                continue
            s = self.capped(self.raw_logit(b, h, i, j))
            if bias is not None:
                s = s + mpmath.mpf(float(bias[0, jj]))  # float64 bias: exact in mpf
            out.append(s)
        return out

    def forward_rows(self):
        """(o, lse) as object arrays of mpf at ``prec`` bits: monolithic block_state + finalize."""
        d = self.pb.dims
        o = np.empty((d.batch, d.heads, d.lq, d.ev), dtype=object)
        lse = np.empty((d.batch, d.heads, d.lq), dtype=object)
        with mpmath.mp.workprec(self.prec):
            for b in range(d.batch):
                for h in range(d.heads):
                    keep = self.pb.allowed(b, h)
                    vv = self.v[b][self.pb.kv(h)]
                    for i in range(d.lq):
                        s = self.row_logits(b, h, i, keep[i])
                        oi, li = finalize(block_state(s, vv, d.ev, MP), MP)
                        o[b, h, i, :] = oi
                        lse[b, h, i] = li
        return o, lse


def to_float_array(a) -> np.ndarray:
    """An object array of mpf, correctly rounded (ties to even) to float64."""
    out = np.empty(np.shape(a), dtype=np.float64)
    flat = out.reshape(-1)
    for n, x in enumerate(np.asarray(a, dtype=object).reshape(-1)):
        flat[n] = mpf_to_float(x)
    return out


def forward_mp(q, k, v, *, prec=128, as_mpf=False, attn_mask=None, causal=False, alignment=None,
               window=None, scale=None, softcap=None):
    """Attention in mpmath at ``prec`` bits: (o (B,H,Lq,Ev), lse (B,H,Lq)).

    Returns numpy float64 arrays correctly rounded from the ``prec``-bit values, or, with
    ``as_mpf=True``, the raw object arrays of mpf. Without ``scale`` the exact real 1/sqrt(E)
    is used (to ``prec`` bits), not its float64 rounding.
    """
    if isinstance(prec, bool) or not isinstance(prec, int) or prec < 2:
        raise ValueError(f"prec must be an int >= 2 (bits), got {prec!r}")
    pb = prepare(q, k, v, attn_mask=attn_mask, causal=causal, alignment=alignment, window=window,
                 scale=scale, softcap=softcap)
    o, lse = MpPrepared(pb, prec).forward_rows()
    if as_mpf:
        return o, lse
    return to_float_array(o), to_float_array(lse)


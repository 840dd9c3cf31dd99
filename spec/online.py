"""The online-softmax state (m, l, acc) and its merge, written once for every number type.

A state summarises a set of keys for one query row: ``m`` a shift (normally the max logit),
``l = sum_j exp(s_j - m)`` and ``acc = sum_j exp(s_j - m) v_j``. The merge ``⊕`` is an
associative, commutative monoid with identity ``(-inf, 0, 0)`` and a homomorphism from
concatenation of key blocks (proved in proofs/merge_algebra.py), so every tiling and every
merge tree gives the same exact result.

The arithmetic comes from an ``ops`` object (see :class:`ScalarOps`): proofs/ passes SymPy
ops, reference/ mpmath and arb ops, and :data:`NUMPY` batches rows in numpy. A logit of
``-inf`` marks a masked key: it contributes nothing, not even ``0 * v`` (so a NaN ``v`` in a
masked key never leaks).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np

from .dtypes import round_to

__all__ = [
    "State",
    "ScalarOps",
    "NumpyOps",
    "Float32Ops",
    "MpmathOps",
    "SCALAR",
    "NUMPY",
    "mpmath_ops",
    "identity",
    "merge",
    "block_state",
    "fold",
    "finalize",
    "partial_state",
]


class State(NamedTuple):
    m: Any
    l: Any
    acc: Any


class ScalarOps:
    """Arithmetic for one query row, over Python scalars; subclass for other number types.

    Scores are a sequence of scalars, values a sequence of vectors, ``acc`` a list.
    Subclasses override the primitive functions (``exp``, ``log``, ``maximum``, constants).
    """

    neg_inf: Any = -math.inf
    zero: Any = 0.0
    one: Any = 1.0

    def exp(self, x):
        return math.exp(x)

    def log(self, x):
        return math.log(x)

    def maximum(self, a, b):
        if a != a:  # NaN policy: a NaN logit must reach the row's result, not be dropped by >=
            return a
        return a if a >= b else b

    def is_neg_inf(self, x) -> bool:
        return x == self.neg_inf

    def shift(self, m):
        """A finite stand-in for ``m`` to subtract before exp: an empty state's -inf becomes 0."""
        return self.zero if self.is_neg_inf(m) else m

    def exp_shifted(self, x, m):
        """exp(x - m) for a finite shift m; a masked x (-inf) gives exactly 0."""
        return self.zero if self.is_neg_inf(x) else self.exp(x - m)

    def zeros(self, dim: int):
        return [self.zero] * dim

    def full(self, shape, x):
        """An array of ``shape`` holding ``x`` (batched ops only: a scalar row has no shape)."""
        raise NotImplementedError(f"{type(self).__name__} holds one row: no batched states")

    def vec_scale(self, a, acc):
        return [a * x for x in acc]

    def vec_add(self, x, y):
        return [a + b for a, b in zip(x, y)]

    def row_max(self, s: Sequence):
        m = self.neg_inf
        for x in s:
            m = self.maximum(m, x)
        return m

    def weighted_sum(self, s, p, v, dim: int):
        """sum_j p_j v_j over the unmasked keys (s_j != -inf) only."""
        acc = self.zeros(dim)
        for sj, pj, vj in zip(s, p, v):
            if not self.is_neg_inf(sj):
                acc = self.vec_add(acc, self.vec_scale(pj, vj))
        return acc

    def total(self, p):
        t = self.zero
        for x in p:
            t = t + x
        return t

    def is_empty(self, l) -> bool:
        return l == self.zero

    def finalize(self, st: State):
        if self.is_empty(st.l):
            return self.zeros(len(st.acc)), self.neg_inf
        return [a / st.l for a in st.acc], st.m + self.log(st.l)


class NumpyOps(ScalarOps):
    """Batched rows in numpy: ``s`` is (..., n), ``v`` is (n, E) or (..., n, E); m, l are (...)."""

    neg_inf = -np.inf
    zero = 0.0
    one = 1.0

    def exp(self, x):
        return np.exp(x)

    def log(self, x):
        with np.errstate(divide="ignore"):
            return np.log(x)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def is_neg_inf(self, x):
        return np.isneginf(x)

    def shift(self, m):
        return np.where(np.isneginf(m), 0.0, m)

    def exp_shifted(self, x, m):
        return np.exp(x - np.asarray(m)[..., None])

    def row_max(self, s):
        s = np.asarray(s)
        return np.max(s, axis=-1) if s.shape[-1] else np.full(s.shape[:-1], -np.inf)

    def vec_scale(self, a, acc):
        return np.asarray(a)[..., None] * acc

    def vec_add(self, x, y):
        return x + y

    def zeros(self, dim):
        return np.zeros(dim)

    def full(self, shape, x):
        return np.full(shape, x, dtype=np.asarray(self.zero).dtype)

    def weighted_sum(self, s, p, v, dim):
        keep = ~np.isneginf(s)  # (..., n)
        v = np.asarray(v)
        finite = np.isfinite(v)
        # Masked keys are dropped, not multiplied by 0: 0 * NaN would leak.
        pk = np.where(keep, p, 0.0)
        vf = np.where(finite, v, 0.0)
        out = pk @ vf if v.ndim == 2 else np.matmul(pk[..., None, :], vf)[..., 0, :]
        if not finite.all():
            # Non-finite v in kept keys: recompute those columns with IEEE semantics on the kept set.
            vb = np.broadcast_to(v, np.shape(p) + (v.shape[-1],))
            contrib = np.where(keep[..., None], np.asarray(p)[..., None] * vb, 0.0)
            bad = (keep[..., None] & ~np.isfinite(vb)).any(axis=-2)
            out = np.where(bad, contrib.sum(axis=-2), out)
        return out

    def total(self, p):
        return np.sum(p, axis=-1)

    def is_empty(self, l):
        return l == 0

    def finalize(self, st: State):
        empty = st.l == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            o = np.where(empty[..., None], 0.0, st.acc / np.where(empty, 1.0, st.l)[..., None])
            lse = np.where(empty, -np.inf, st.m + np.log(np.where(empty, 1.0, st.l)))
        return o, lse


class Float32Ops(NumpyOps):
    """:class:`NumpyOps` with every intermediate held and rounded in float32 (fp32 simulations).

    exp and log are evaluated in float64 and rounded once to float32 (within 1/2 ulp + 2^-53
    relative: c_exp = 1 of the error model). ``p_dtype``: the storage dtype P is rounded to before
    P@V, as kernels do (None: P stays fp32). A base-2 kernel model overrides ``exp``/``log`` with
    exp2/log2 and sets ``ln_base`` = ln 2, the natural log of its base, so that finalize returns
    the LSE in natural log.
    """

    neg_inf = np.float32(-np.inf)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    ln_base = np.float32(1.0)

    def __init__(self, p_dtype=None):
        self.p_dtype = p_dtype

    def exp(self, x):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.exp(np.asarray(x, dtype=np.float64)).astype(np.float32)

    def log(self, x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.asarray(x, dtype=np.float64)).astype(np.float32)

    def maximum(self, a, b):
        return np.maximum(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))

    def shift(self, m):
        m = np.asarray(m, dtype=np.float32)
        return np.where(np.isneginf(m), np.float32(0.0), m).astype(np.float32)

    def exp_shifted(self, x, m):
        return self.exp(np.asarray(x, dtype=np.float32) - np.asarray(m, dtype=np.float32)[..., None])

    def row_max(self, s):
        s = np.asarray(s, dtype=np.float32)
        return np.max(s, axis=-1) if s.shape[-1] else np.full(s.shape[:-1], -np.inf, dtype=np.float32)

    def zeros(self, dim):
        return np.zeros(dim, dtype=np.float32)

    def vec_scale(self, a, acc):
        return np.asarray(a, dtype=np.float32)[..., None] * np.asarray(acc, dtype=np.float32)

    def total(self, p):
        return np.sum(np.asarray(p, dtype=np.float32), axis=-1, dtype=np.float32)

    def weighted_sum(self, s, p, v, dim):
        if self.p_dtype is not None:
            p = round_to(p, self.p_dtype)
        return super().weighted_sum(s, p, v, dim)

    def finalize(self, st: State):
        l = np.asarray(st.l, dtype=np.float32)
        empty = l == 0
        with np.errstate(divide="ignore", invalid="ignore"):
            safe = np.where(empty, np.float32(1.0), l).astype(np.float32)
            o = np.where(empty[..., None], np.float32(0.0), np.asarray(st.acc, dtype=np.float32) / safe[..., None])
            lse = (np.asarray(st.m, dtype=np.float32) + self.log(safe)) * self.ln_base
            lse = np.where(empty, np.float32(-np.inf), lse)
        return o.astype(np.float32), lse.astype(np.float32)


class MpmathOps(ScalarOps):
    """spec's scalar ops over mpmath mpf at the ambient ``mpmath.mp.prec``: exp and log round at
    that precision, the row sum and each P@V column are exact sums rounded once (fsum, fdot),
    masked keys are dropped, NaN propagates (ScalarOps.maximum). mpmath is imported when the
    first instance is made: spec itself needs numpy only."""

    def __init__(self):
        import mpmath

        self._mp = mpmath
        self.neg_inf = mpmath.ninf
        self.zero = mpmath.mpf(0)
        self.one = mpmath.mpf(1)

    def exp(self, x):
        return self._mp.exp(x)

    def log(self, x):
        return self._mp.log(x)

    def total(self, p):
        return self._mp.fsum(p)

    def weighted_sum(self, s, p, v, dim):
        keep = [j for j, sj in enumerate(s) if not self.is_neg_inf(sj)]
        pk = [p[j] for j in keep]
        vk = [v[j] for j in keep]
        # One exact dot product per column, rounded once; masked keys are dropped, not 0*v.
        return [self._mp.fdot(pk, [vj[e] for vj in vk]) for e in range(dim)]


SCALAR = ScalarOps()
NUMPY = NumpyOps()
_MP = []


def mpmath_ops() -> MpmathOps:
    """The one :class:`MpmathOps` instance (``spec.MP``), made on first use."""
    if not _MP:
        _MP.append(MpmathOps())
    return _MP[0]


def identity(dim: int, ops: ScalarOps = SCALAR, *, batch=()) -> State:
    """The merge's identity: the state of an empty key set, ``(-inf, 0, 0)``; with ``batch`` (a
    shape, batched ops only) one identity per row: m, l of that shape and acc of ``batch + (dim,)``."""
    if not batch:
        return State(ops.neg_inf, ops.zero, ops.zeros(dim))
    batch = tuple(batch)
    return State(ops.full(batch, ops.neg_inf), ops.full(batch, ops.zero), ops.full(batch + (dim,), ops.zero))


def partial_state(o, lse, ops: ScalarOps = SCALAR) -> State:
    """A finished partial result (o, lse) of a key set as a state: ``(lse, 1, o)``, the identity
    where lse = -inf (an empty part; its o is ignored). Merging the partials of disjoint key sets
    and finalising gives the result over their union (split-KV decode, the LSE combine)."""
    if isinstance(ops, NumpyOps):
        empty = np.isneginf(lse)
        return State(lse, np.where(empty, ops.zero, ops.one), np.where(empty[..., None], ops.zero, o))
    if ops.is_neg_inf(lse):
        return identity(len(o), ops)
    return State(lse, ops.one, o)


def merge(a: State, b: State, ops: ScalarOps = SCALAR) -> State:
    """``a ⊕ b``: rescale both states to the common max and add (proofs/merge_algebra.py)."""
    m = ops.maximum(a.m, b.m)
    c = ops.shift(m)
    alpha = ops.exp(a.m - c)
    beta = ops.exp(b.m - c)
    return State(m, alpha * a.l + beta * b.l, ops.vec_add(ops.vec_scale(alpha, a.acc), ops.vec_scale(beta, b.acc)))


def block_state(s, v, dim: int, ops: ScalarOps = SCALAR) -> State:
    """The state of one block of keys: scores ``s`` (masked keys -inf) and values ``v``."""
    m = ops.row_max(s)
    c = ops.shift(m)
    if isinstance(ops, NumpyOps):
        p = np.where(np.isneginf(s), 0.0, ops.exp_shifted(s, c))
    else:
        p = [ops.exp_shifted(x, c) for x in s]
    return State(m, ops.total(p), ops.weighted_sum(s, p, v, dim))


def fold(states, dim: int, ops: ScalarOps = SCALAR) -> State:
    """Left fold of ``merge`` over ``states``, starting from the identity."""
    out = identity(dim, ops)
    for st in states:
        out = merge(out, st, ops)
    return out


def finalize(st: State, ops: ScalarOps = SCALAR):
    """(o, lse) of a state: ``o = acc / l``, ``lse = m + log l``; an empty state gives (0, -inf)."""
    return ops.finalize(st)

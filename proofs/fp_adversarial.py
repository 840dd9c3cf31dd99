"""Numeric checks of theorem 6's argued steps, at mpmath precision, with adversarial roundings.

The derivation machine-checks the loop bodies, the recurrences and the inequalities between counts
(fp_steps.py). What is argued by hand: that any summation tree, any merge tree of tile states and
any tiling are no worse than the chains derived; that the IEEE add of an exact zero is exact; that
the per-key perturbations assemble into the output/LSE bounds through the lemmas. Here the kernel's
loops are run in mpmath with every rounding set to +u, -u or a random sign (the extremes of the
model), for lengths far beyond the symbolic derivation's small instances, and the results must stay
within the derived rigorous budgets: expm1(count * u/(1-u)) relative, and lse_any for the LSE at
logit magnitudes up to 1e30.
"""
from __future__ import annotations

import math
import random

import mpmath

from .accumulation import block_fma_unit
from .core import Proof

__all__ = ["check"]

_MP = mpmath.mpf


def _rigor(count, u):
    """The derived rigorous relative budget of ``count`` roundings of unit u."""
    return mpmath.expm1(count * u / (1 - u))


def _sign(mode, rng):
    return 1 if mode == "+" else -1 if mode == "-" else rng.choice((-1, 1))


def _random_tree_sum(xs, u, mode, rng):
    """Sum in a random binary tree, each addition (1 + d), d = +-u."""
    items = list(xs)
    while len(items) > 1:
        i = rng.randrange(len(items) - 1)
        a, b = items[i], items[i + 1]
        items[i:i + 2] = [(a + b) * (1 + _sign(mode, rng) * u)]
    return items[0]


def _dot_checks(rng):
    worst = 0.0
    ok = True
    for u in (_MP(2) ** -10, _MP(2) ** -24):
        for m in (7, 64, 200):
            t = [_MP(rng.uniform(0.1, 1)) * (_MP(2) ** rng.randint(-6, 0)) for _ in range(m)]
            exact, absum = mpmath.fsum(t), mpmath.fsum(abs(x) for x in t)
            for mode in ("+", "-", "r"):
                # sequential, products rounded: fl(s + fl(t))
                s = t[0] * (1 + _sign(mode, rng) * u)
                for x in t[1:]:
                    s = (s + x * (1 + _sign(mode, rng) * u)) * (1 + _sign(mode, rng) * u)
                # random tree with rounded products
                tr = _random_tree_sum([x * (1 + _sign(mode, rng) * u) for x in t], u, mode, rng)
                for val in (s, tr):
                    r = abs(val - exact) / (_rigor(m, u) * absum)
                    worst, ok = max(worst, float(r)), ok and r <= 1
                # matrix unit: blocks of k terms, one perturbation of unit u_blk per block and term
                for k, x_, fin in ((8, 0, "rz"), (16, 3, "rn")):
                    ub = _MP(block_fma_unit(k, x_, fin)) * (u / _MP(2) ** -24)
                    acc = _MP(0)
                    for b0 in range(0, m, k):
                        acc = (acc + mpmath.fsum(t[b0:b0 + k])) * (1 + _sign(mode, rng) * ub)
                    blocks = (m - 1) / k + 1
                    r = abs(acc - exact) / (_rigor(blocks, ub) * absum)
                    worst, ok = max(worst, float(r)), ok and r <= 1
    return ok, worst


def _tiles(n, big_n, rng):
    cuts = sorted(rng.sample(range(1, n), big_n - 1)) if big_n > 1 else []
    edges = [0] + cuts + [n]
    return [(a, b) for a, b in zip(edges, edges[1:])]


def _tile_checks(rng):
    """l and acc through the kernel's loop (tile tree sums, rescale, add) and through random merge
    trees of tile states, against the derived counts n + N - 2 (l) and n + N - 1 (acc, k = 1)."""
    worst = 0.0
    ok = True
    for u in (_MP(2) ** -10, _MP(2) ** -24):
        for n, big_n in ((40, 1), (40, 7), (150, 20), (300, 3)):
            p = [_MP(rng.uniform(0.05, 1)) for _ in range(n)]
            v = [_MP(rng.uniform(-1, 1)) for _ in range(n)]
            tiles = _tiles(n, big_n, rng)
            for mode in ("+", "-", "r"):
                sg = lambda: _sign(mode, rng) * u  # noqa: E731
                # tile states: (l_t, acc_t) with tree sums; acc: products rounded, then the tree
                states = []
                for a, b in tiles:
                    lt = _random_tree_sum(p[a:b], u, mode, rng)
                    at = _random_tree_sum([p[j] * v[j] * (1 + sg()) for j in range(a, b)], u, mode, rng)
                    states.append((lt, at))
                # the kernel's loop (rescale factor 1: its argument errors are the rescale check's)
                lsum, asum = states[0]
                for lt, at in states[1:]:
                    lsum = (lsum * (1 + sg()) + lt) * (1 + sg())
                    asum = (asum * (1 + sg()) + at) * (1 + sg())
                # a random merge tree of the tile states
                items = list(states)
                while len(items) > 1:
                    i = rng.randrange(len(items) - 1)
                    (l1, a1), (l2, a2) = items[i], items[i + 1]
                    items[i:i + 2] = [((l1 * (1 + sg()) + l2 * (1 + sg())) * (1 + sg()),
                                       (a1 * (1 + sg()) + a2 * (1 + sg())) * (1 + sg()))]
                lexact = mpmath.fsum(p)
                aabs = mpmath.fsum(abs(x * y) for x, y in zip(p, v))
                aexact = mpmath.fsum(x * y for x, y in zip(p, v))
                for lv, av in ((lsum, asum), items[0]):
                    rl = abs(lv - lexact) / (_rigor(n + big_n - 2 + (0 if big_n > 1 else 1), u) * lexact)
                    ra = abs(av - aexact) / (_rigor(n + big_n - 1, u) * aabs)
                    worst, ok = max(worst, float(rl), float(ra)), ok and rl <= 1 and ra <= 1
    return ok, worst


def _rescale_checks(rng):
    """The product of a key's exp factors with every argument rounded (3 roundings, +-u each) and
    every exp off by +-eps: |log(factor / exact)| <= gamma_3 (M - s_j) + N eps/(1 - eps)."""
    worst = 0.0
    ok = True
    for u in (_MP(2) ** -10, _MP(2) ** -24):
        eps = 2 * _MP("2.06") * u
        g3 = 3 * u / (1 - 3 * u)
        for _ in range(40):
            big_n = rng.randint(1, 30)
            incr = [_MP(rng.uniform(0, 1)) * _MP(10) ** rng.randint(-3, 6) for _ in range(big_n)]
            s_j = -incr[0]  # the key's logit below its tile's max
            ms = [_MP(0)]
            for d in incr[1:]:
                ms.append(ms[-1] + d)  # the running max grows along the path
            mode = rng.choice("+-r")
            arg_factor = lambda: mpmath.fprod(1 + _sign(mode, rng) * u for _ in range(3))  # noqa: E731
            logf = (s_j - ms[0]) * arg_factor() + mpmath.log(1 + _sign(mode, rng) * eps)
            for a, b in zip(ms, ms[1:]):
                logf += (a - b) * arg_factor() + mpmath.log(1 + _sign(mode, rng) * eps)
            exact = s_j - ms[-1]
            lim = g3 * (ms[-1] - s_j) + big_n * eps / (1 - eps)
            r = abs(logf - exact) / lim
            worst, ok = max(worst, float(r)), ok and r <= 1
    return ok, worst


def _lse_checks(rng):
    """The kernel's LSE (tiles, rescales, exp, sums, final roundings), every error source at an
    extreme, logits up to 1e30 in magnitude, against lse_any (no LSE combine)."""
    from .bounds import _FN

    worst = 0.0
    ok = True
    for mag in (1.0, 1e3, 1e6, 1e15, 1e30):
        for _ in range(6):
            n = rng.randint(1, 60)
            big_n = rng.randint(1, min(n, 8))
            u = 2.0 ** -24 if rng.random() < 0.5 else 2.0 ** -12
            c_exp = 2.06
            eps, um = 2 * c_exp * u, _MP(u)
            g3 = 3 * um / (1 - 3 * um)
            centre = _MP(rng.choice((-1, 1)) * mag)
            s = [centre + _MP(rng.uniform(-30, 30)) * (1 + mag * 1e-9) for _ in range(n)]
            dmax = _MP(rng.uniform(0, 1)) * (mag * 1e-7 + 1e-3)
            mode = rng.choice("+-r")
            sg = lambda: _sign(mode, rng)  # noqa: E731
            sh = [x + sg() * dmax * _MP(rng.uniform(0.5, 1)) for x in s]  # computed logits
            with mpmath.workdps(80):
                tiles = _tiles(n, big_n, rng)
                m = None
                lsum = _MP(0)
                for a, b in tiles:
                    tm = max(sh[a:b])
                    mnew = tm if m is None else max(m, tm)
                    if m is not None:
                        alpha = mpmath.exp((m - mnew) * (1 + sg() * g3)) * (1 + sg() * eps)
                        lsum = lsum * alpha * (1 + sg() * um)
                    tile = mpmath.fsum(mpmath.exp((x - mnew) * (1 + sg() * g3)) * (1 + sg() * eps) for x in sh[a:b])
                    tile *= (1 + sg() * um) ** max(b - a - 1, 0)
                    lsum = (lsum + tile) * (1 + sg() * um) if m is not None else tile
                    m = mnew
                logl = mpmath.log(lsum) + sg() * eps * (abs(mpmath.log(lsum)) + 1)
                got = (m + logl) * (1 + sg() * g3)
                mx = max(s)
                exact = mx + mpmath.log(mpmath.fsum(mpmath.exp(x - mx) for x in s))
                smax = max(abs(x) for x in s)
                lim = _FN["lse_any"](float(dmax), float(smax), math.log(n), float(n), float(big_n), u, c_exp, 0.0, 0.0)
                r = abs(got - exact) / _MP(lim)
                worst, ok = max(worst, float(r)), ok and r <= 1
    return ok, worst


def check(proof: Proof, *, seed: int = 23) -> dict:
    """Add the adversarial checks to ``proof``; returns {name: max error / derived budget}."""
    rng = random.Random(seed)
    out = {}
    with mpmath.workdps(60):
        for name, fn, text in (
                ("dot", _dot_checks, "dot products of length 7..200 (sequential with rounded products, random "
                                     "trees, matrix-unit blocks k = 8, 16), every rounding +u, -u or random, "
                                     "u = 2^-10 and 2^-24: |error| <= expm1(count u/(1-u)) sum|t|"),
                ("tiles", _tile_checks, "l and acc over n <= 300 keys in N <= 20 random tiles (tile tree sums, then "
                                        "the kernel's loop, and random merge trees of the tile states), extreme "
                                        "roundings: within expm1((n + N - 2) u') and expm1((n + N - 1) u')"),
                ("rescale", _rescale_checks, "a key's exp factors along paths of N <= 30 rescales with gaps up to 1e6, "
                                             "extreme argument roundings and exp errors: |log error| <= gamma_3 "
                                             "(M - s_j) + N eps/(1 - eps)"),
                ("lse", _lse_checks, "the kernel's LSE at logit magnitudes 1 .. 1e30 (computed logits off by up to "
                                     "Delta_max, extreme argument, exp, sum and final roundings): within lse_any")):
            good, worst = fn(rng)
            out[name] = worst
            proof.check(f"adversarial (mpmath): {text}", good, kind="numeric", detail=f"max error/budget {worst:.3f}")
    return out

"""The SymPy symbols of the floating-point theorems (6 and 4b), one definition each.

All magnitudes are non-negative; lengths are positive integers; h, hb, hs are 0/1 flags.
"""
from __future__ import annotations

import sympy as sp

__all__ = ["SYMBOLS", "UNITS", "SMALL"]

# unit roundoffs and model constants
u_in, u_acc, u_mma, u_dot, eta, eta_in, c_exp, c_tanh = sp.symbols(
    "u_in u_acc u_mma u_dot eta eta_in c_exp c_tanh", nonnegative=True)
k_mma = sp.Symbol("k_mma", positive=True)  # matrix-unit block size (products per block)
# lengths: head dim, allowed keys of a row, key tiles (merge-tree leaves), a-priori length
E, n, N, L = sp.symbols("E n N L", positive=True, integer=True)
# per (row, key): scaled |q|.|k| (G), |scaled q.k| (X), |softcapped logit| (Y), softcap (CAP),
# |bias| (BIAS), |final logit| (S), gap M - s (gap), logit error budget (Delta); flags: softcap h,
# additive mask hb, LSE-combine (split-KV) hs
G, X, Y, CAP, BIAS, S, gap, Delta, h, hb, hs = sp.symbols(
    "G X Y CAP BIAS S gap Delta h hb hs", nonnegative=True)
# per row: max Delta, max |s|, ln(allowed keys), LSE rounding budget
Dmax, Smax, logn, rho = sp.symbols("Dmax Smax logn rho", nonnegative=True)
# budgets and aggregates
K, Sd, Sn, Kmax, Sdmax, Snmax = sp.symbols("K Sd Sn Kmax Sdmax Snmax", nonnegative=True)
SB, SD, EN, ED, absO, beta, SBl = sp.symbols("SB SD EN ED absO beta SBl", nonnegative=True)
Gm, V, W = sp.symbols("Gm V W", nonnegative=True)

SYMBOLS = {s.name: s for s in (u_in, u_acc, u_mma, u_dot, eta, eta_in, c_exp, c_tanh, k_mma, E, n, N, L, G, X,
                               Y, CAP, BIAS, S, gap, Delta, h, hb, hs, Dmax, Smax, logn, rho, K, Sd, Sn, Kmax,
                               Sdmax, Snmax, SB, SD, EN, ED, absO, beta, SBl, Gm, V, W)}
#: the unit roundoffs (first-order expansion parameter)
UNITS = (u_in, u_acc, u_mma, u_dot, eta, eta_in)
#: symbols that stand for quantities of first order in the units (budgets, logit errors)
SMALL = (Delta, Dmax, rho, K, Sd, Sn, Kmax, Sdmax, Snmax, SB, SD, EN, ED, beta, SBl)
__all__ += list(SYMBOLS)

"""Theorem 6: floating-point error of the tiled (flash) attention forward, derived with SymPy.

Model: fl(x op y) = (x op y)(1 + d) + e, |d| <= u, |e| <= eta. Storage dtype (q, k, v, P before
P@V, the output store) has unit roundoff u_in; scalar accumulator operations have u_acc; the
matrix unit adds blocks of k_mma products with unit u_mma (proofs/accumulation.py; IEEE: k = 1,
u_mma = u_acc); exp/exp2/log/log2 have a relative error of c_exp ulps (eps = 2 c_exp u_acc) and
flush subnormal results (absolute error eta). Optional TF32-style rounding of the matmul operands
has u_dot.

The steps (fp_steps.py) are derived by SymPy from their rounded expressions, the loops for
symbolic lengths (dot product of length E; running sums over n keys in N tiles of any sizes; the
rescale chain; the split-KV combine over S <= N splits). Their counts are assembled here into
per-key budgets (common to numerator and denominator, numerator only, denominator only, whole
output); an exact identity (checked by SymPy for symbolic length) turns per-key perturbations
into the output error, and lemmas R1-R4 make the remainder rigorous. The LSE also gets a bound
that holds at ANY logit magnitude (lse_any): the LSE is 1-Lipschitz in the logits, relative
rounding of the exp arguments moves log l by at most ln n (-log(1 - gamma_3)), and the rest is
relative to |lse|. The output gets a convexity cap that holds whatever the logit errors.

The assembled expressions are written to proofs/golden/fp_error.json and, through SymPy's
NumPyPrinter, to proofs/bounds_gen.py, which proofs/bounds.py evaluates.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p

from . import fp_steps as st
from .accumulation import derive as derive_accumulation
from .core import Proof, proof_main, timed
from .golden_paths import GENERATED_PATH, GOLDEN_PATH
from .fp_model import (Linearisations, ceil_lemma, entropy_lemma, gam, log_sum_scaling_lemma,
                       lse_lipschitz_lemma, remainder_lemmas, w)
from .fp_symbols import (BIAS, CAP, ED, EN, SB, SBl, SD, SMALL, SYMBOLS, UNITS, Delta, Dmax, G, Gm, K, Kmax,
                         L, N, S, Sd, Sdmax, Smax, Sn, Snmax, V, W, X, Y, absO, beta, c_exp, c_tanh, eta, eta_in, gap,
                         h, hb, hs, logn, n, rho, u_acc, u_dot, u_in, u_mma)

__all__ = ["SYMBOLS", "GOLDEN_PATH", "GENERATED_PATH", "ARGS", "LINEAR", "derive", "expressions", "golden_dict",
           "generated_source", "check_declared_args", "write_golden", "linear_parts", "first_order", "prove", "main"]

_t = sp.Symbol("t", nonnegative=True)  # first-order scaling parameter


def derive(proof: Proof | None = None):
    """Run every step (SymPy), assemble the expressions. Returns (proof, counts, expressions)."""
    proof = proof or Proof("fp_error", "Floating-point error bound of the tiled forward (theorem 6)", "")
    lins = Linearisations()
    dot = st.step_dot(proof, lins)
    ceil_lemma(proof)
    derive_accumulation(proof)
    scale = st.step_scale(proof, lins)
    cap_in, cap_out = st.step_softcap(proof, lins)
    tanh_default = st.step_tanh_model(proof, lins)
    bias, bias_sum = st.step_bias(proof, lins)
    st.step_max(proof)
    arg, exp_count = st.step_exp(proof, lins)
    resc = st.step_rescale(proof, lins)
    accum = st.step_accumulate(proof, lins)
    round_p = st.step_round_p(proof)
    div = st.step_division(proof, lins)
    lse = st.step_lse(proof, lins)
    split = st.step_split(proof, lins)
    st.step_assembly(proof)
    remainder_lemmas(proof)
    entropy_lemma(proof)
    lse_lipschitz_lemma(proof)
    log_sum_scaling_lemma(proof)
    store = st.step_store(proof, lins)
    st.step_cap(proof)
    _lse_any_step(proof)
    lins.spot_check(proof)
    counts = dict(dot_acc=dot["dot"], dot_op=dot["dot_op"], scale=scale, cap_in=cap_in, cap_out=cap_out, bias=bias,
                  bias_sum=bias_sum, arg=arg, exp=exp_count, exp_per_key=resc["exp_per_key"],
                  acc_l=accum["acc_l"], pv_acc=accum["pv_acc"], pv_mma=accum["pv_mma"], round_p=round_p,
                  div=div, lse=lse, store=store, split_num=split["split_num"], split_den=split["split_den"],
                  tanh_default=tanh_default)
    exprs = expressions(counts)
    try:
        linear_parts(exprs)
        proof.check("affine decompositions (logit error in G,X,Y,|b|,|s|; budgets and weights in "
                    "gap, Delta) are exact with non-negative coefficients", True)
    except ArithmeticError as exc:
        proof.check("affine decompositions exact", False, detail=str(exc))
    check_declared_args(proof, exprs, ARGS)
    return proof, counts, exprs


def check_declared_args(proof: Proof, exprs: dict, args: dict) -> None:
    """A failed check for each expression whose free symbols are not all among its declared
    ``args`` (the generated functions take exactly those)."""
    for name, e in exprs.items():
        free = {s.name for s in e.free_symbols}
        if not free <= set(args[name]):
            proof.check(f"expression {name} uses only its declared arguments", False,
                        detail=f"extra: {sorted(free - set(args[name]))}")


def _lse_any_step(proof: Proof):
    proof.step("LSE at any logit magnitude (no budget condition): with M^ the computed max and "
               "l^ = sum_j e^{s^_j - M^ + xi_j} F_j + E_D (|xi_j| <= gamma_3 (M^ - s^_j) by the rescale "
               "chain, F_j within (1 +- eps)^N (1 +- u)^{n+N-2}), the Lipschitz lemma, the log-sum scaling "
               "lemma and the final roundings give lse_any; with an LSE combine (h_s = 1) the combine adds "
               "the same terms over the S <= n splits, whose computed lse_s are its logits.",
               r"|\widehat{\mathrm{lse}}-\mathrm{lse}|\le \Delta_{max} + L_g + \gamma_3(S_{max}+\ln n+"
               r"\Delta_{max}+L_g) + \epsilon(\ln n + L_g + 1)(1+\gamma_2),\ "
               r"L_g = \ln n\,(-\log(1-\gamma_3)) + N(-\log(1-\epsilon)) + (n+N-2)(-\log(1-u)) + \ldots")


def expressions(counts: dict) -> dict:
    """Build every exported expression from the derived counts (see :func:`derive`)."""
    ua, um = u_acc, u_mma
    eps = 2 * c_exp * ua
    g3 = gam(counts["arg"], ua)
    g_lse = gam(counts["lse"], ua)
    nexp = counts["exp_per_key"] * counts["exp"]
    # logit error (rigorous): products of roundings -> expm1 of their u/(1-u) budgets
    th_E = expm1(counts["dot_acc"] * w(um) + counts["dot_op"] * w(u_dot))
    th_a = expm1((counts["scale"] + counts["cap_in"] * h) * w(ua))
    th_d = expm1(counts["cap_out"] * w(ua))
    th_b = expm1(counts["bias"] * w(ua))
    d_core = G * th_E * (1 + th_a) + X * th_a
    d_cap = d_core * (1 + h * th_d) + h * (CAP * c_tanh * ua * (1 + th_d) + Y * th_d)
    logit_err = d_cap * (1 + hb * ua) + hb * (BIAS * th_b * (1 + ua) + S * counts["bias_sum"] * ua)
    rho_e = g_lse * (Smax + Dmax + logn + 1) + eps * (logn + 1) * (1 + gam(2, ua))
    arg = gap + Delta + Dmax                      # bounds M^ - s^_j
    comb_arg = gap + Delta + Dmax + logn + 2 * rho
    pv = counts["pv_acc"] * w(ua) + counts["pv_mma"] * w(um)
    common = Delta + g3 * arg + nexp * w(eps) + hs * rho
    den = counts["acc_l"] * w(ua) + hs * (counts["split_den"] * w(ua) + w(eps) + g3 * comb_arg)
    num = counts["round_p"] * w(u_in) + pv + hs * (counts["split_num"] * w(ua) + w(eps) + g3 * comb_arg)
    out = counts["div"] * w(ua) + counts["store"] * w(u_in) + hs * rho
    # Per-key weights, linear in (gap, Delta) once the row maxima are known: by R4/R3,
    # expm1(x_j) <= x_j expm1(xmax)/xmax <= x_j / (1 - xmax/2) for 0 <= x_j <= xmax < 2.
    b_weight = (K + Sd) / (1 - (Kmax + Sdmax) / 2)
    d_weight = sp.exp(Kmax) * (Sn / (1 - Snmax / 2) + Sd / (1 - Sdmax / 2))
    b_max = expm1(Kmax + Sdmax)
    wB = b_weight.subs({K: common, Sd: den})
    wD = d_weight.subs({Sn: num, Sd: den})
    abs_key = (eta + eta_in) * sp.exp(Kmax + Snmax)
    abs_num = (2 * n + N) * eta * sp.exp(Kmax + Snmax)
    abs_den = (2 * n + 3 * N) * eta * sp.exp(Kmax + Sdmax)
    abs_out = (2 * N + 3) * eta + eta_in
    C_ = expm1(out)
    o_total = (SB + SD + EN + absO * ED) / (1 - beta) * (1 + C_) + C_ * absO + abs_out
    lse_total = -log1p(-(SBl + ED)) + rho
    # LSE at any magnitude (lemmas: Lipschitz, log-sum scaling, entropy): no budget condition
    n_sum = counts["acc_l"]
    grow = sp.exp(nexp * w(eps) + n_sum * w(ua))           # the largest a tiny error can be scaled by
    l_low = sp.exp(-nexp * w(eps) - n_sum * w(ua))          # the max key's own contribution to l^
    under = -log1p(-(2 * n + 3 * N) * eta * grow / l_low)
    lg0 = logn * -log1p(-g3) + nexp * -log1p(-eps) + n_sum * -log1p(-ua) + under
    r0 = g_lse * (Smax + logn + Dmax + lg0) + eps * (logn + lg0 + 1) * (1 + gam(2, ua))
    any0 = Dmax + lg0 + r0
    lgc = logn * -log1p(-g3) + -log1p(-eps) + counts["split_den"] * -log1p(-ua)
    rc = g_lse * (Smax + logn + any0 + lgc) + eps * (logn + lgc + 1) * (1 + gam(2, ua))
    lse_any = any0 + hs * (lgc + rc)
    # convexity cap (step_cap): nu from the sums, the division and (h_s) the LSE combine
    g_n = gam(n + N, ua)
    kap = g3 / (sp.E * (1 - g3))
    num0 = counts["round_p"] * w(u_in) + pv + hs * counts["split_num"] * w(ua)
    den0 = counts["acc_l"] * w(ua) + hs * counts["split_den"] * w(ua)
    nu_split = expm1(num0 + den0)
    den_c = (1 - eps) * (1 - gam(N, ua)) * (1 - N * kap)
    rho_h = hs * rho  # nu_c only counts with h_s = 1; at h_s = 0 it must stay finite at any rho
    x_plus = -sp.log(den_c) + rho_h
    nu_c = ((1 + eps) * sp.exp(rho_h) / den_c - 1 + N * (1 + eps) * (kap + sp.exp(x_plus) * expm1(x_plus * g3)))
    comb = (1 + hs * nu_c) * (1 + hs * gam(N, ua))
    nu_tot = comb * (1 + nu_split) * (1 + counts["div"] * w(ua)) - 1
    l_min = (1 - eps) ** N * (1 - g_n)
    a_cap = ((n * (eta + eta_in) * V + (2 * n + N) * eta) / l_min * comb + (2 * N + 3) * eta)
    o_cap = W + nu_tot * V + a_cap + u_in * ((1 + nu_tot) * V + a_cap) + eta_in
    # a-priori: worst case over data with n = L keys, G <= Gm, |v| <= V, P >= 1, sum pi gap <= ln L
    sub_w = {G: Gm, X: Gm, Y: sp.Min(Gm, CAP), S: Gm, BIAS: 0, hb: 0}
    Dm = logit_err.subs(sub_w)
    rho_a = rho_e.subs({Smax: Gm, Dmax: Dm, logn: sp.log(L)})
    base = {Delta: Dm, Dmax: Dm, rho: rho_a, logn: sp.log(L), n: L}
    gap_max = 2 * (h * sp.Min(Gm, CAP) + (1 - h) * Gm)
    k_max = common.subs(base).subs(gap, gap_max)
    sd_max = den.subs(base).subs(gap, gap_max)
    sn_max = num.subs(base).subs(gap, gap_max)
    at_max = {Kmax: k_max, Sdmax: sd_max, Snmax: sn_max}
    avg = {Delta: Dm, Dmax: Dm, rho: rho_a, logn: sp.log(L), n: L, gap: sp.log(L)}
    sb_a = 2 * V * wB.subs(avg).subs(at_max)
    sd_a = V * wD.subs(avg).subs(at_max)
    ed_a = abs_den.subs(at_max).subs(n, L)
    en_a = L * V * abs_key.subs(at_max) + abs_num.subs(at_max).subs(n, L)
    beta_a = b_max.subs(at_max) + ed_a
    o_apriori = o_total.subs({rho: rho_a}).subs({SB: sb_a, SD: sd_a, EN: en_a, ED: ed_a, absO: V, beta: beta_a})
    lse_apriori = lse_total.subs({rho: rho_a}).subs({SBl: wB.subs(avg).subs(at_max), ED: ed_a})
    lse_any_apriori = lse_any.subs({Smax: Gm, Dmax: Dm, logn: sp.log(L), n: L})
    return {
        "logit_err": logit_err, "rho": rho_e, "common": common, "den": den, "num": num, "out": out,
        "b_weight": b_weight, "d_weight": d_weight, "b_max": b_max, "wB": wB, "wD": wD,
        "abs_key": abs_key, "abs_num": abs_num, "abs_den": abs_den, "o_total": o_total,
        "lse_total": lse_total, "lse_any": lse_any, "o_apriori": o_apriori, "lse_apriori": lse_apriori,
        "lse_any_apriori": lse_any_apriori,
        "apriori_budget": sp.Max(k_max + sd_max, sn_max, beta_a),  # the a-priori first-order forms need < 1
        "o_cap": o_cap, "o_cap_apriori": o_cap.subs({W: 2 * V, n: L, rho: rho_a}),
    }


#: expressions that are affine in some per-pair variables; bounds.py evaluates them through
#: their coefficients (exact: the derivation checks expr == c0 + sum_v c_v v symbolically).
LINEAR = {
    "logit_err": ["G", "X", "Y", "BIAS", "S"],
    "common": ["gap", "Delta"],
    "den": ["gap", "Delta"],
    "num": ["gap", "Delta"],
    "wB": ["gap", "Delta"],
    "wD": ["gap", "Delta"],
}

_M = ["u_mma", "k_mma"]
#: argument symbols of each exported expression (the order lambdify uses)
ARGS = {
    "logit_err": ["G", "X", "Y", "CAP", "BIAS", "S", "h", "hb", "E", "u_acc", "u_dot", "c_tanh"] + _M,
    "rho": ["Smax", "Dmax", "logn", "u_acc", "c_exp"],
    "common": ["Delta", "gap", "Dmax", "rho", "N", "u_acc", "c_exp", "hs"],
    "den": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "u_acc", "c_exp", "hs"],
    "num": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "u_in", "u_acc", "c_exp", "hs"] + _M,
    "out": ["rho", "u_in", "u_acc", "hs"],
    "b_weight": ["K", "Sd", "Kmax", "Sdmax"],
    "d_weight": ["Sn", "Sd", "Kmax", "Snmax", "Sdmax"],
    "b_max": ["Kmax", "Sdmax"],
    "wB": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "Kmax", "Sdmax", "u_acc", "c_exp", "hs"],
    "wD": ["gap", "Delta", "Dmax", "logn", "rho", "n", "N", "Kmax", "Snmax", "Sdmax", "u_in", "u_acc", "c_exp",
           "hs"] + _M,
    "abs_key": ["Kmax", "Snmax", "eta", "eta_in"],
    "abs_num": ["Kmax", "Snmax", "n", "N", "eta"],
    "abs_den": ["Kmax", "Sdmax", "n", "N", "eta"],
    "o_total": ["SB", "SD", "EN", "ED", "absO", "beta", "rho", "u_in", "u_acc", "N", "eta", "eta_in", "hs"],
    "lse_total": ["SBl", "ED", "rho"],
    "lse_any": ["Dmax", "Smax", "logn", "n", "N", "u_acc", "c_exp", "eta", "hs"],
    "o_apriori": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N", "Gm",
                  "V", "CAP", "h", "hs"] + _M,
    "o_cap": ["W", "V", "n", "N", "rho", "u_in", "u_acc", "c_exp", "eta", "eta_in", "hs"] + _M,
    "apriori_budget": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N", "Gm",
                       "CAP", "h", "hs"] + _M,
    "o_cap_apriori": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N", "Gm",
                      "V", "CAP", "h", "hs"] + _M,
    "lse_apriori": ["u_in", "u_acc", "u_dot", "c_exp", "c_tanh", "eta", "eta_in", "E", "L", "N",
                    "Gm", "CAP", "h", "hs"] + _M,
    "lse_any_apriori": ["u_acc", "u_dot", "c_exp", "c_tanh", "eta", "E", "L", "N", "Gm", "CAP", "h", "hs"] + _M,
}


def linear_parts(exprs: dict) -> dict:
    """Coefficients of the affine expressions: {name: {"0": c0, var: c_var}}; raises if not affine
    or if a coefficient is not manifestly non-negative (the row maxima rely on both)."""
    out = {}
    for name, vars_ in LINEAR.items():
        e = exprs[name]
        syms = [SYMBOLS[v] for v in vars_]
        parts = {"0": e.subs({x: 0 for x in syms})}
        for x in syms:
            parts[x.name] = sp.diff(e, x)
            if any(sp.diff(parts[x.name], y) != 0 for y in syms):
                raise ArithmeticError(f"{name} is not affine in {vars_}")
            if parts[x.name].is_nonnegative is False:
                raise ArithmeticError(f"{name}: coefficient of {x.name} may be negative")
        recon = parts["0"] + sum(parts[x.name] * x for x in syms)
        if sp.expand(e - recon) != 0:
            raise ArithmeticError(f"{name} differs from its affine reconstruction")
        out[name] = parts
    return out


def first_order(expr):
    """The first-order part in the unit roundoffs and in the symbols that are themselves
    first-order budgets: d/dt at t = 0 after scaling them all by t."""
    scaled = expr.subs({u: _t * u for u in UNITS + SMALL}, simultaneous=True)
    d = sp.diff(scaled, _t).subs(_t, 0)
    return sp.expand(sp.expand_log(d, force=True))


_FIRST_ORDER = ("logit_err", "rho", "common", "den", "num", "out", "o_apriori", "lse_apriori", "o_cap", "lse_any")


def golden_dict(counts: dict, exprs: dict) -> dict:
    lin = linear_parts(exprs)
    return {
        "linear": {k: {v: str(c) for v, c in parts.items()} for k, parts in lin.items()},
        "about": "Derived by flashproof.proofs.fp_error (SymPy); regenerate with "
                 "`python -m flashproof.proofs.fp_error --write-golden`. bounds.py evaluates these.",
        "counts": {k: str(v) for k, v in counts.items()},
        "args": ARGS,
        "expressions": {k: str(v) for k, v in exprs.items()},
        "first_order": {k: str(first_order(exprs[k])) for k in _FIRST_ORDER},
    }


def generated_source(data: dict, *, module: str = "flashproof.proofs.fp_error",
                     golden: str = "proofs/golden/fp_error.json", test: str = "tests/test_proofs_golden.py",
                     symbols: dict | None = None) -> str:
    """numpy source of every golden expression and affine coefficient (SymPy's NumPyPrinter):
    the bound modules import it, so evaluating a bound needs neither SymPy nor parsing."""
    from sympy.printing.numpy import NumPyPrinter

    local = dict(symbols or SYMBOLS, expm1=expm1, log1p=log1p)
    pr = NumPyPrinter({"fully_qualified_modules": True})
    out = [f'"""GENERATED by {module} from {golden}: do not edit.', "",
           f"Regenerate with `python -m {module} --write-golden`; {test}",
           'checks that this file equals a fresh generation."""', "import functools", "", "import numpy", "",
           '__all__ = ["FUNCTIONS", "LINEAR", "ARGS", "TANH_EXTRA"]', ""]
    tanh = data.get("counts", {}).get("tanh_default")
    extra = float(sp.sympify(tanh, locals=local).subs(c_exp, 0)) if tanh else 0.0
    out += [f"TANH_EXTRA = {extra!r}", f"ARGS = {json.dumps(data['args'], sort_keys=True)}", ""]
    funcs, lins = [], []
    for name in sorted(data["expressions"]):
        args = data["args"][name]
        out += [f"def f_{name}({', '.join(args)}):",
                f"    return {pr.doprint(sp.sympify(data['expressions'][name], locals=local))}", "", ""]
        funcs.append(name)
    for name in sorted(data.get("linear", {})):
        args = [a for a in data["args"][name] if a not in data["linear"][name]]
        for var in sorted(data["linear"][name]):
            out += [f"def lin_{name}_{var}({', '.join(args)}):",
                    f"    return {pr.doprint(sp.sympify(data['linear'][name][var], locals=local))}", "", ""]
        lins.append((name, args, sorted(data["linear"][name])))
    out.append("FUNCTIONS = {" + ", ".join(f'"{n_}": f_{n_}' for n_ in funcs) + "}")
    out.append("LINEAR = {" + ", ".join(
        f'"{n_}": ({a!r}, {{' + ", ".join(f'"{v}": lin_{n_}_{v}' for v in vs) + "})" for n_, a, vs in lins) + "}")
    return "\n".join(out) + "\n"


def write_golden(path: Path = GOLDEN_PATH) -> dict:
    _, counts, exprs = derive()
    data = golden_dict(counts, exprs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    GENERATED_PATH.write_text(generated_source(data))
    return data


STATEMENT = (
    r"For any kernel that computes the spec's online-softmax recurrence in floating point "
    r"(any tiling, any merge tree of states, optionally one split-KV LSE-combine level ($h_s=1$), "
    r"fp32 scalar accumulators, a matrix unit of declared accumulation model, P rounded to the "
    r"storage dtype before $P V$ while $\ell$ sums the unrounded $P$, output rounded to the "
    r"storage dtype, GQA, masks, softcap, additive mask), under the model "
    r"$fl(x\circ y) = (x\circ y)(1+\delta)+e$, $|\delta|\le u$, $|e|\le\eta$, and without "
    r"overflow, every output element satisfies $|\hat o_{i,e} - o_{i,e}| \le$ "
    r"`running_forward_bound` $\le$ `apriori_forward_bound`, and the LSE likewise; the LSE bound "
    r"`lse_any` and the convexity cap (without an LSE combine) are finite at any logit magnitude.")


@timed
def prove() -> Proof:
    from . import fp_adversarial, fp_instance, tightness  # noqa: F401  (imported lazily: heavier)

    proof = Proof("fp_error", "Floating-point error bound of the tiled forward (theorem 6)", STATEMENT)
    proof, counts, exprs = derive(proof)
    golden = json.loads(GOLDEN_PATH.read_text()) if GOLDEN_PATH.exists() else None
    fresh = {"expressions": {k: str(v) for k, v in exprs.items()}, "counts": {k: str(v) for k, v in counts.items()},
             "linear": {k: {v: str(c) for v, c in parts.items()} for k, parts in linear_parts(exprs).items()}}
    same = golden is not None and all(golden.get(k) == fresh[k] for k in fresh)
    proof.check("derived expressions, counts and affine parts equal proofs/golden/fp_error.json (its "
                "first-order forms are a function of the expressions: tests/test_proofs_golden.py re-derives them)",
                same)
    proof.check("proofs/bounds_gen.py (what bounds.py evaluates) is the code generated from them",
                same and GENERATED_PATH.exists() and GENERATED_PATH.read_text() == generated_source(golden))
    proof.extra["first_order"] = golden["first_order"] if same else {}
    proof.extra["expressions"] = fresh["expressions"]
    proof.extra["counts"] = fresh["counts"]
    proof.extra["adversarial"] = fp_adversarial.check(proof)
    fp_instance.check_instances(proof)
    proof.extra["tightness"] = tightness.experiment(proof)
    return proof


main = proof_main(prove, write_golden=write_golden, golden_path=GOLDEN_PATH)


if __name__ == "__main__":
    sys.exit(main())

"""Theorem 4b: floating-point error of the FlashAttention-2 backward, derived with SymPy.

The kernel (theorem 4's algebra): D_i = rowsum(dO_i o O_i) from the STORED forward output O (which
carries the forward's error, theorem 6), the logits recomputed, P = exp(S - LSE) recomputed from
the STORED LSE (which carries its error), dP = dO V^T on the matrix unit, dS = P o (dP - D)
(times 1 - tanh^2 under softcap) rounded to the storage dtype, then dQ = scale dS K, dK = scale
dS^T Q, dV = P~^T dO (P~ = P rounded to the storage dtype) accumulated on the matrix unit, scaled
and stored. Same model as theorem 6 (fp_model.py): the sums' counts come from their loop bodies
(symbolic lengths Ev, n keys, m rows), every other step is differentiated at d = 0, exact
identities decompose each error, and the rigorous remainders use expm1/exp forms. The
expressions go to proofs/golden/fp_backward.json and proofs/bounds_backward_gen.py, which
proofs/bounds_backward.py evaluates.
"""
from __future__ import annotations

import json
import sys

import sympy as sp
from sympy.codegen.cfunctions import expm1

from . import fp_steps as st
from .core import Proof, is_zero, proof_main, timed
from .fp_error import check_declared_args, generated_source
from .fp_model import Linearisations, chain_count, gam, w
from .fp_symbols import SYMBOLS as FWD_SYMBOLS
from .fp_symbols import c_exp, c_tanh, eta, eta_in, u_acc, u_dot, u_in, u_mma
from .golden_paths import BACKWARD_GENERATED_PATH, BACKWARD_GOLDEN_PATH

__all__ = ["SYMBOLS", "ARGS", "derive", "expressions", "golden_dict", "write_golden", "prove", "main", "report_lines"]

# per (row, key): distance of the logit below the LSE (aL = LSE - s >= 0), logit error, P, its error
# bound, |dP - D|, |dP^ - dP| and |D^ - D| bounds, 1 - tanh^2, its error, |tanh|, tanh's error,
# pre-cap logit error and magnitude; per row: LSE error; sums and flags
aL, Dl, lam, P, pe, B, eP, eD, cp, dcp, tt, dt, Dx, X, CAP = sp.symbols(
    "aL Dl lam P pe B eP eD cp dcp tt dt Dx X CAP", nonnegative=True)
W1, W2, absD, S1, S2, absG, sig = sp.symbols("W1 W2 absD S1 S2 absG sig", nonnegative=True)
h, hl, hsc = sp.symbols("h hl hsc", nonnegative=True)  # softcap, dlse and scale-multiply flags
Ev, m = sp.symbols("Ev m", positive=True, integer=True)
SYMBOLS = dict(FWD_SYMBOLS, **{s.name: s for s in (aL, Dl, lam, P, pe, B, eP, eD, cp, dcp, tt, dt, Dx, X, CAP, W1,
                                                    W2, absD, S1, S2, absG, sig, h, hl, hsc, Ev, m)})

_M = ["u_mma", "k_mma", "u_dot"]
ARGS = {
    "p_err": ["aL", "Dl", "lam", "u_acc", "c_exp", "eta"],
    "d_err": ["W1", "W2", "absD", "Ev", "u_acc", "hl"],
    "theta_mma": ["m"] + _M,
    "ds_err": ["P", "pe", "B", "eP", "eD", "cp", "dcp", "h", "u_acc", "u_in", "eta_in"],
    "dt": ["Dx", "X", "CAP", "u_acc", "c_tanh"],
    "dcp": ["tt", "dt", "cp", "u_acc"],
    "grad_err": ["S1", "S2", "absG", "sig", "m", "hsc", "u_acc", "u_in", "eta_in"] + _M,
    "pt_err": ["P", "pe", "u_in", "eta_in"],
}


def _step_recompute_p(proof: Proof, lins: Linearisations):
    s_, L_, ds_, dL_ = sp.symbols("s L ds dL", real=True)
    th = sp.symbols("pa1:4", real=True)
    ep = sp.Symbol("pe_exp", real=True)
    z = s_ + ds_ - (L_ + dL_)
    p_hat = sp.exp(z * sp.Mul(*[(1 + x) for x in th])) * (1 + ep)
    lin = lins.lin(p_hat / sp.exp(s_ - L_), [ds_, dL_, *th, ep])
    ok = (is_zero(lin[ds_] - 1) and is_zero(lin[dL_] + 1) and all(is_zero(lin[x] - (s_ - L_)) for x in th)
          and is_zero(lin[ep] - 1))
    proof.check("recomputed P = exp(fl(s^ - LSE^)): relative error ds - dLSE + (s - LSE)(th1 + th2 + th3) + eps "
                "(logit error, stored-LSE error, 3 argument roundings, exp error)", ok)
    proof.step("P recomputed from the stored LSE: with a = LSE - s >= 0, logit error Delta and LSE error "
               "lambda (theorem 6), the argument is off by at most Xi and P^ <= (1 + eps) e^{-a + Xi}.",
               r"|\hat P-P| \le (1+\epsilon)e^{-a+\Xi} - e^{-a} + \eta,\quad \Xi = \Delta+\lambda+"
               r"\gamma_3(a+\Delta+\lambda)")
    return 3


def _step_d(proof: Proof, lins: Linearisations):
    n_ev = sp.Symbol("n_ev", integer=True, positive=True)
    first, new, inc = st.sum_chain_counts(lins, fused=False)
    c = chain_count(inc, first, n_ev - 1)[u_acc]
    ok = is_zero(c - n_ev)
    o_, do_, om = sp.symbols("o do omega", real=True)
    d1 = sp.Symbol("dD", real=True)
    lin = lins.lin(do_ * (o_ + om) * (1 + d1), [om, d1])
    ok &= is_zero(lin[om] - do_) and is_zero(lin[d1] - do_ * o_)
    proof.check("D = rowsum(dO o O^) over Ev terms (symbolic Ev, rsolve): Ev roundings per term; the stored O's "
                "error omega enters with factor dO", ok)
    proof.step("D_i from the stored output: the forward's error omega (theorem 6) enters with |dO|, the sum's "
               "roundings on sum |dO||O| (IEEE scalar sum, any tree); with dlse one more rounding.",
               r"|\hat D-D| \le \sum_e|dO_e|\omega_e(1+\theta_{E_v}) + \theta_{E_v}\sum_e|dO_e||O_e|")
    return n_ev


def _step_ds(proof: Proof, lins: Linearisations):
    P_, dP_, D_, eP_, eDp, eD_ = sp.symbols("P dP D e_P e_dP e_D", real=True)
    d1, d2, d3, din = sp.symbols("ds1 ds2 ds3 ds_in", real=True)
    c_, ec = sp.symbols("c e_c", real=True)
    hat = (P_ + eP_) * ((dP_ + eDp) - (D_ + eD_)) * (c_ + ec) * (1 + d1) * (1 + d2) * (1 + d3) * (1 + din)
    lin = lins.lin(hat, [eP_, eDp, eD_, ec, d1, d2, d3, din])
    ex = P_ * (dP_ - D_) * c_
    ok = (is_zero(lin[eP_] - (dP_ - D_) * c_) and is_zero(lin[eDp] - P_ * c_) and is_zero(lin[eD_] + P_ * c_)
          and is_zero(lin[ec] - P_ * (dP_ - D_)) and all(is_zero(lin[x] - ex) for x in (d1, d2, d3, din)))
    # exact decomposition used by ds_err (no first-order step): with th the product of the roundings - 1
    th = sp.Symbol("theta", real=True)
    lhs = (P_ + eP_) * ((dP_ + eDp) - (D_ + eD_)) * (c_ + ec) * (1 + th) - ex
    rhs = ((eP_ * ((dP_ + eDp) - (D_ + eD_)) + P_ * (eDp - eD_)) * (c_ + ec) * (1 + th)
           + P_ * (dP_ - D_) * (ec * (1 + th) + c_ * th))
    ok_id = is_zero(sp.expand(lhs - rhs))
    proof.check("dS = fl_in(P^ fl(dP^ - D^) [* c'^]): coefficients (dP - D)c' on the P error, P c' on the dP and "
                "D errors, P(dP - D) on c' and one each on the 2 (+1 softcap) roundings and the storage rounding",
                ok)
    proof.check("dS error decomposition (exact identity, any size of the errors)", ok_id)
    t_, tau, dq, dsub = sp.symbols("t tau dsq dsub", real=True)
    lin2 = lins.lin((1 - (t_ + tau) ** 2 * (1 + dq)) * (1 + dsub), [tau, dq, dsub])
    ok_c = is_zero(lin2[tau] + 2 * t_) and is_zero(lin2[dq] + t_ ** 2) and is_zero(lin2[dsub] - (1 - t_ ** 2))
    proof.check("softcap factor c' = fl(1 - fl(t^2)): coefficients -2t on tanh's error, -t^2 and c' on the "
                "two roundings", ok_c)
    proof.step("dS = P o (dP - D) (o c' under softcap), computed from the recomputed P^, the matrix unit's dP^ "
               "and D^, rounded to the storage dtype before the matmuls (exact decomposition):",
               r"|\widetilde{dS}-dS|\le\big[|\hat P-P|(B+e_{dP}+e_D)+P(e_{dP}+e_D)\big](c'+e_{c'})(1+\theta_s)"
               r"+PB\,(e_{c'}(1+\theta_s)+c'\theta_s)+\eta_{in}")
    return 2


def _step_grad(proof: Proof, lins: Linearisations):
    sg, x_, d1, d2, din = sp.symbols("sigma x dsig dmul dst", real=True)
    lin = lins.lin(sg * (1 + d1) * x_ * (1 + d2) * (1 + din), [d1, d2, din])
    ok = all(is_zero(lin[d] - sg * x_) for d in (d1, d2, din))
    kk, e_s, th = sp.symbols("k e_S theta_m", real=True)
    ds_ = sp.Symbol("dS", real=True)
    ok_id = is_zero(sp.expand((ds_ + e_s) * kk * (1 + th) - ds_ * kk - (e_s * kk * (1 + th) + ds_ * kk * th)))
    proof.check("dQ = fl_in(fl(fl(scale) * sum_j dS~_j k_j)): 2 scalar roundings and the store; the sum's error "
                "splits exactly into sum (dS~ - dS) k (1 + theta) + sum dS k theta", ok and ok_id)
    proof.step("dQ, dK, dV: sums over n keys (dQ) or m (row, head) pairs (dK, dV) on the matrix unit "
               "(count (m - 1)/k + 1 of u_mma, theorem 6's dot step), then the scale (dQ, dK) and the store.",
               r"|\widehat{dQ}-dQ|\le \sigma(1+\theta_{sc})\big[(1+\theta_m)\sum_j|e_{S,j}||k_j|+\theta_m"
               r"\sum_j|dS_j||k_j|\big]+\theta_{sc}|dQ| + u_{in}(|dQ|+\ldots)+\eta_{in}")
    return 2, 1


def expressions(counts: dict) -> dict:
    ua = u_acc
    eps = 2 * c_exp * ua
    g3 = gam(counts["p_arg"], ua)
    xi = Dl + lam + g3 * (aL + Dl + lam)
    p_err = (1 + eps) * sp.exp(-aL + xi) - sp.exp(-aL) + eta
    th_d = expm1(counts["d_sum"].subs(sp.Symbol("n_ev", integer=True, positive=True), Ev) * w(ua))
    d0 = W1 + th_d * (W1 + W2)
    d_err = d0 + hl * ua * (absD + d0)
    theta_mma = expm1(counts["dot"].subs(sp.Symbol("E", positive=True, integer=True), m) * w(u_mma)
                      + counts["dot_op"] * w(u_dot))
    th_s = expm1((counts["ds"] + h) * w(ua) + w(u_in))
    ds_err = ((pe * (B + eP + eD) + P * (eP + eD)) * (cp + dcp) * (1 + th_s) + P * B * (dcp * (1 + th_s) + cp * th_s)
              + eta_in)
    dt_e = (Dx + (X + Dx) * expm1(2 * w(ua))) / CAP + c_tanh * ua
    dcp_e = ((2 * tt + dt) * dt + (tt + dt) ** 2 * ua) * (1 + ua) + ua * cp
    th_m = theta_mma
    th_sc = hsc * expm1(counts["scale"] * w(ua))
    err = sig * (1 + th_sc) * ((1 + th_m) * S1 + th_m * S2) + th_sc * absG
    grad_err = err + counts["store"] * u_in * (absG + err) + eta_in
    pt_err = pe * (1 + u_in) + u_in * P + eta_in
    return {"p_err": p_err, "d_err": d_err, "theta_mma": theta_mma, "ds_err": ds_err, "dt": dt_e, "dcp": dcp_e,
            "grad_err": grad_err, "pt_err": pt_err}


def derive(proof: Proof | None = None):
    proof = proof or Proof("fp_backward", "Floating-point error bound of the backward (theorem 4b)", "")
    lins = Linearisations()
    dot = st.step_dot(proof, lins)
    p_arg = _step_recompute_p(proof, lins)
    d_sum = _step_d(proof, lins)
    ds = _step_ds(proof, lins)
    scale, store = _step_grad(proof, lins)
    lins.spot_check(proof, seed=19)
    counts = dict(dot=dot["dot"], dot_op=dot["dot_op"], p_arg=p_arg, d_sum=d_sum, ds=ds, scale=scale, store=store)
    exprs = expressions(counts)
    check_declared_args(proof, exprs, ARGS)
    return proof, counts, exprs


def golden_dict(counts: dict, exprs: dict) -> dict:
    return {
        "about": "Derived by flashproof.proofs.fp_backward (SymPy); regenerate with "
                 "`python -m flashproof.proofs.fp_backward --write-golden`. bounds_backward.py evaluates these.",
        "counts": {k: str(v) for k, v in counts.items()},
        "args": ARGS,
        "expressions": {k: str(v) for k, v in exprs.items()},
    }


def _source(data):
    return generated_source(data, module="flashproof.proofs.fp_backward", golden="proofs/golden/fp_backward.json",
                            test="tests/test_proofs_golden.py", symbols=SYMBOLS)


def write_golden() -> dict:
    _, counts, exprs = derive()
    data = golden_dict(counts, exprs)
    BACKWARD_GOLDEN_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    BACKWARD_GENERATED_PATH.write_text(_source(data))
    return data


STATEMENT = (
    r"For any kernel that computes the FlashAttention-2 backward in floating point (D from the stored "
    r"output O, P recomputed from the stored LSE, dP on the matrix unit, dS rounded to the storage dtype "
    r"before the matmuls, P rounded to the storage dtype for dV, any summation order, the declared "
    r"accumulation model), where O and the LSE come from a forward within theorem 6's bounds, every "
    r"element of dQ, dK and dV satisfies $|\widehat{dX}-dX|\le$ `running_backward_bound`, the exact "
    r"gradient being that of the stored q, k, v and dO.")


@timed
def prove() -> Proof:
    from . import tightness

    proof = Proof("fp_backward", "Floating-point error bound of the backward (theorem 4b)", STATEMENT)
    proof, counts, exprs = derive(proof)
    golden = json.loads(BACKWARD_GOLDEN_PATH.read_text()) if BACKWARD_GOLDEN_PATH.exists() else None
    fresh = golden_dict(counts, exprs)
    same = golden is not None and golden["expressions"] == fresh["expressions"] and golden["counts"] == fresh["counts"]
    proof.check("derived expressions equal proofs/golden/fp_backward.json", same)
    proof.check("proofs/bounds_backward_gen.py (what bounds_backward.py evaluates) is the code generated from them",
                BACKWARD_GENERATED_PATH.exists() and BACKWARD_GENERATED_PATH.read_text() == _source(fresh))
    proof.extra["expressions"] = fresh["expressions"]
    proof.extra["counts"] = fresh["counts"]
    proof.extra["tightness"] = tightness.backward_experiment(proof)
    return proof


#: measured by tests/test_kernels_backward.py::test_backward_tightness_on_the_kernel (CPU interpreter,
#: ci shapes): max error / running_backward_bound of flashproof's Triton backward, per dtype
KERNEL_TIGHTNESS_NOTE = ("The project's Triton backward (CPU interpreter, tests/test_kernels_backward.py::"
                         "test_backward_tightness_on_the_kernel) is measured in the same way; its numbers are in "
                         "proofs/README.md.")


def report_lines(p: Proof) -> list:
    """The theorem-4b section of the proof report: expressions and measured tightness."""
    lines = ["**Bound expressions** (SymPy, `proofs/golden/fp_backward.json`):", ""]
    for name in ("p_err", "d_err", "ds_err", "grad_err", "pt_err"):
        if name in p.extra.get("expressions", {}):
            lines += [f"- `{name}`: `{p.extra['expressions'][name]}`", ""]
    t = p.extra.get("tightness")
    if t:
        lines += ["**Tightness** (max observed error / running_backward_bound; kernel-like fp32 FA2-backward "
                  "simulation `kernel_sim.simulate_backward` vs fp64, fixed seed):", "",
                  "| storage | cases | dQ | dK | dV | closest case |", "|---|---|---|---|---|---|"]
        for store in ("float16", "bfloat16", "float32"):
            r = t[store]
            c = r["closest"] or {}
            lines.append(f"| {store} | {r['cases']} | {r['max_ratio']['dq']:.3g} | {r['max_ratio']['dk']:.3g} | "
                         f"{r['max_ratio']['dv']:.3g} | {c.get('case')}, {c.get('grad')}, Lk={c.get('lk')}, "
                         f"E={c.get('e')} |")
        lines += ["", KERNEL_TIGHTNESS_NOTE, ""]
    return lines


main = proof_main(prove, write_golden=write_golden, golden_path=BACKWARD_GOLDEN_PATH)


if __name__ == "__main__":
    sys.exit(main())

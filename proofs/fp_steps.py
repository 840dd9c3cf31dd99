"""The steps of theorem 6 (forward error), each derived by SymPy from its rounded expression.

Every step writes a piece of the kernel as a SymPy expression in its rounding variables and
differentiates it at 0 (fp_model.Linearisations). The loops (the dot product of length E, the
running sums over n keys in N tiles, the rescale chain, the split-KV combine) are derived for
SYMBOLIC lengths: the loop body gives the per-step counts (fp_model.step_counts), ``rsolve``
solves the recurrence, telescoping Sums are evaluated by SymPy, and the inequalities between the
resulting counts are machine-checked (fp_model.nonneg_certificate). Each step returns its counts.
What is argued by hand (not machine-checked) is said in the step's text; fp_adversarial.py checks
those arguments numerically at mpmath precision with adversarial roundings.
"""
from __future__ import annotations

import mpmath
import random

import sympy as sp
from sympy.calculus.util import maximum

from .core import Proof, is_zero
from .fp_model import Fresh, Linearisations, add_counts, chain_count, nonneg_certificate, step_counts
from .fp_symbols import E, N, c_exp, k_mma, n, u_acc, u_mma

__all__ = ["step_dot", "step_scale", "step_softcap", "step_tanh_model", "step_bias", "step_max", "step_exp",
           "step_rescale", "step_accumulate", "step_round_p", "step_division", "step_store", "step_lse",
           "step_split", "step_assembly", "step_cap", "sum_chain_counts"]

_S, _Y, _ALPHA = sp.Symbol("S_acc", real=True), sp.Symbol("y_item", real=True), sp.Symbol("alpha", positive=True)


def sum_chain_counts(lins: Linearisations, *, fused: bool, unit=u_acc):
    """A sequential sum s = fl(s + fl(y)) [fused: fl(s + y)] of m terms: (first, later, inc).
    ``first``: the first term's count when it enters (fl(0 + x) = x exactly: the add of an exact zero
    is exact in IEEE arithmetic, argued), ``later``: a later term's, ``inc``: per later step."""
    f = Fresh("ds")
    if fused:
        da = f(unit)
        body, first_body, dlist = (_S + _Y) * (1 + da), _Y * (1 + da), None
    else:
        dp, da = f(unit), f(unit)
        body, first_body = (_S + _Y * (1 + dp)) * (1 + da), _Y * (1 + dp)
    inc, new = step_counts(lins, body, state=_S, items=[_Y], units=f.units)
    first_units = {d: u for d, u in f.units.items() if first_body.has(d)}
    _, first = step_counts(lins, first_body, state=None, items=[_Y], units=first_units)
    if fused:  # FMA: fl(0 + a b) rounds the exact product once
        first = [{unit: 1}]
    return first[0], new[0], inc


def step_dot(proof: Proof, lins: Linearisations):
    """Dot product of length E (symbolic): IEEE chains (fused or not, any summation tree) and the
    matrix unit's blocks of k products: a term meets at most (E - 1)/k + 1 roundings of u_mma."""
    m = sp.Symbol("m", integer=True, positive=True)  # number of terms
    i = sp.Symbol("i", integer=True, positive=True)  # entry position of a later term
    claim = (m - 1) / k_mma + 1
    ok_ieee = True
    detail = []
    for fused in (True, False):
        first, new, inc = sum_chain_counts(lins, fused=fused)
        c_first = chain_count(inc, first, m - 1)[u_acc]          # the first term passes m - 1 more steps
        c_later = chain_count(inc, new, m - i)[u_acc]            # a term entering at step i >= 2
        ok_ieee &= is_zero(c_first - m)                          # exactly m: the count is attained
        ok_ieee &= nonneg_certificate(c_first - c_later, {i: 2})  # the first term is the worst
        detail.append(f"{'fused' if fused else 'rounded products'}: first {c_first}, entering at i: {c_later}")
    proof.check("dot (symbolic length m, rsolve of the derived step c(s) = c(s-1) + 1): sequential IEEE sums "
                "fused or with rounded products give the first term exactly m roundings, every later term <= m",
                ok_ieee, detail="; ".join(detail))
    # any summation tree: a term's count is 1 (product) + its depth <= m - 1 (argued: a binary tree with
    # m leaves has depth <= m - 1, the sequential chain is the deepest); exhaustively checked, m <= 5
    worst_tree = []
    ys = sp.symbols("y1:6", real=True)
    for e in range(1, 6):
        for tree in _trees(list(range(e))):
            fr = Fresh("dt")
            leaves = [ys[j] * (1 + fr(u_acc)) for j in range(e)]
            expr = _fl_tree(_map_tree(tree, leaves), fr)
            lin = lins.lin(expr, list(fr.units))
            worst_tree.append((e, max(_term_count(lin, ys[j], ys[:e]) for j in range(e))))
    proof.check("dot: every summation tree of m <= 5 products has per-term count <= m (exhaustive)",
                all(c <= e for e, c in worst_tree), detail=f"{len(worst_tree)} trees")
    # matrix unit: blocks of k products added with one rounding of unit u_mma each
    kk = 3
    fb = Fresh("db")
    dblk = fb(u_mma)
    items = list(sp.symbols(f"t1:{kk + 1}", real=True))
    inc_b, new_b = step_counts(lins, (_S + sum(items)) * (1 + dblk), state=_S, items=items, units=fb.units)
    B = sp.Symbol("B", integer=True, positive=True)
    ok_blk = inc_b == {u_mma: 1} and all(nb == {u_mma: 1} for nb in new_b)
    c_blk = chain_count(inc_b, new_b[0], B - 1)[u_mma]  # the first block's terms pass B - 1 more blocks
    ok_blk &= is_zero(c_blk - B)
    proof.check("dot on the matrix unit: one block (S + t_1 + ... + t_k)(1 + d) adds count 1 (u_mma) to the "
                "accumulator and to each of its k products; B blocks give the first terms exactly B "
                "(rsolve); B = ceil(m/k) <= (m - 1)/k + 1 (ceil lemma)", ok_blk)
    ok_k1 = is_zero(claim.subs(k_mma, 1) - m)
    proof.check("dot: at k = 1 (IEEE, u_mma = u_acc) the matrix-unit count (m - 1)/k + 1 equals the IEEE count m",
                ok_k1)
    q_, k_, r1, r2 = sp.symbols("q k r1 r2", real=True)
    lin = lins.lin(q_ * (1 + r1) * k_ * (1 + r2), [r1, r2])
    proof.check("dot: operand rounding contributes count 2 (u_dot)", all(is_zero(v - q_ * k_) for v in lin.values()))
    proof.step("Dot product of length E, derived for symbolic E from the loop body: sequential IEEE sums "
               "(fused or not) give the first term E roundings (rsolve), later terms fewer; any summation "
               "tree has depth <= E - 1 (argued; exhaustive for E <= 5); a matrix unit adding blocks of k "
               "exact products (proofs/accumulation.py) gives ceil(E/k) <= (E - 1)/k + 1 roundings of u_mma.",
               r"|\widehat{q\cdot k}-q\cdot k| \le \operatorname{expm1}\Big(\big(\tfrac{E-1}{k}+1\big)"
               r"\tfrac{u_{mma}}{1-u_{mma}}+2\tfrac{u_{dot}}{1-u_{dot}}\Big)\sum_e |q_e k_e|")
    return {"dot": claim.subs(m, E), "dot_op": sp.Integer(2)}


def _term_count(lin, y, terms):
    c = 0
    for coef in lin.values():
        c += abs(sp.Poly(sp.expand(coef), *terms).coeff_monomial(y))
    return sp.nsimplify(c)


def _trees(items):
    """Every binary summation tree over ``items`` in order (any association)."""
    if len(items) == 1:
        yield items[0]
        return
    for j in range(1, len(items)):
        for left in _trees(items[:j]):
            for right in _trees(items[j:]):
                yield (left, right)


def _map_tree(tree, leaves):
    if not isinstance(tree, tuple):
        return leaves[tree]
    return (_map_tree(tree[0], leaves), _map_tree(tree[1], leaves))


def _fl_tree(tree, fresh):
    if not isinstance(tree, tuple):
        return tree
    d = fresh(u_acc)
    return (_fl_tree(tree[0], fresh) + _fl_tree(tree[1], fresh)) * (1 + d)


def step_scale(proof: Proof, lins: Linearisations):
    """x * fl(scale*log2 e): the constant carries <= 4 roundings (sqrt, 1/., log2 e, product)."""
    x_, xi, kappa = sp.symbols("x xi kappa", real=True)
    ds = sp.symbols("c1:5", real=True)
    d5 = sp.Symbol("c5", real=True)
    const = kappa * sp.Mul(*[(1 + d) for d in ds])
    lin = lins.lin((x_ + xi) * const * (1 + d5), list(ds) + [d5, xi])
    count = sum(1 for d in list(ds) + [d5] if is_zero(lin[d] - kappa * x_))
    proof.check("scale: each of the 5 roundings has coefficient exactly scale*x (count 5)", count == 5)
    proof.check("scale: the dot error passes with factor scale", is_zero(lin[xi] - kappa))
    proof.step("Scale by the folded constant fl(scale log2 e) (base-2 kernels; t/log2 e is the logit"
               " in natural units): 4 roundings in the constant, 1 in the product.",
               r"|\hat s - s| \le \sigma|\hat x - x| + 5u_{acc}\,|\sigma\,q\cdot k|")
    return 5


def step_softcap(proof: Proof, lins: Linearisations):
    """s = c tanh(x/c): input error passes with factor sech^2 <= 1; 2 + 3 roundings, tanh error."""
    x_, xi, tau = sp.symbols("x xi tau", real=True)
    c = sp.Symbol("c", positive=True)
    e1, e2, e3, e4, e5 = sp.symbols("e1:6", real=True)
    y = (x_ + xi) * (1 + e1) * (1 + e2) / c
    s_hat = c * (sp.tanh(y) + tau) * (1 + e3) * (1 + e4) * (1 + e5)
    lin = lins.lin(s_hat, [xi, e1, e2, tau, e3, e4, e5])
    sech2 = 1 - sp.tanh(x_ / c) ** 2
    proof.check("softcap: input error factor is 1 - tanh^2 (in [0, 1] for real x)", is_zero(lin[xi] - sech2))
    proof.check("softcap: y-roundings have coefficient x(1 - tanh^2), |.| <= |x| (count 2)",
                all(is_zero(lin[d] - x_ * sech2) for d in (e1, e2)))
    proof.check("softcap: tanh error enters with factor c", is_zero(lin[tau] - c))
    proof.check("softcap: output roundings have coefficient c tanh(x/c) (count 3)",
                all(is_zero(lin[d] - c * sp.tanh(x_ / c)) for d in (e3, e4, e5)))
    proof.step("Softcap s = c tanh(x/c) with y = fl(fl(x)(1/c)), tanh error tau (absolute), "
               "then c*th and the log2 e factor.",
               r"|\hat s-s| \le |\hat x - x|\,\operatorname{sech}^2 + 2u_{acc}|x| + c\,c_{tanh}u_{acc}"
               r" + 3u_{acc}\,|c\tanh(x/c)|")
    return 2, 3


def step_tanh_model(proof: Proof, lins: Linearisations):
    """Derive the default c_tanh for tanh(y) = 1 - 2/(exp(2y)+1) computed in floating point."""
    e = sp.Symbol("e", positive=True)  # e = exp(2|y|) >= 1
    ep, d1, d2, d3 = sp.symbols("epsilon d1 d2 d3", real=True)
    hh = (1 - 2 / ((e * (1 + ep) + 1) * (1 + d1)) * (1 + d2)) * (1 + d3)
    lin = lins.lin(hh, [ep, d1, d2, d3])
    maxes = {d: maximum(sp.Abs(v), e, sp.Interval(1, sp.oo)) for d, v in lin.items()}
    total = maxes[ep] * 2 * c_exp + maxes[d1] + maxes[d2] + maxes[d3]  # eps = 2 c_exp u
    ok = sp.simplify(total - (c_exp + 3)) == 0
    proof.check("tanh via exp: sup over y of first-order absolute error = (c_exp + 3) u", ok,
                detail=f"coefficient maxima {[str(m) for m in maxes.values()]}")
    proof.step("tanh computed as 1 - 2/(exp(2y)+1): the first-order absolute error is at most "
               "(c_exp + 3) u_acc (default c_tanh; a libdevice tanhf with <= 2 ulp is within it).",
               r"c_{tanh} = c_{exp} + 3")
    return c_exp + 3


def step_bias(proof: Proof, lins: Linearisations):
    """s + fl(b log2 e): 2 roundings on the bias, 1 on the sum."""
    s_, b_, xi = sp.symbols("s b xi", real=True)
    f1, f2, f3 = sp.symbols("f1:4", real=True)
    lin = lins.lin((s_ + xi + b_ * (1 + f1) * (1 + f2)) * (1 + f3), [xi, f1, f2, f3])
    ok = (is_zero(lin[xi] - 1) and is_zero(lin[f1] - b_) and is_zero(lin[f2] - b_)
          and is_zero(lin[f3] - (s_ + b_)))
    proof.check("additive mask: counts 2 on |b|, 1 on |s + b|, incoming error factor 1", ok)
    proof.step("Additive attn_mask: the bias is scaled by the rounded log2 e and added.",
               r"|\hat s - s| \le |\hat s_{cap}-s_{cap}| + 2u_{acc}|b| + u_{acc}|s_{cap}+b|")
    return 2, 1


def step_max(proof: Proof):
    """The running max is exact on computed values: it returns one of them."""
    a_, b_ = sp.symbols("a b", real=True)
    ok = all(sp.Max(a_, b_).subs({a_: x, b_: y}) in (x, y) for x, y in ((1, 2), (3, -1), (2, 2)))
    proof.check("max: returns one of its arguments (no rounding, no first-order term)", ok)
    proof.step("Running max: exact. The computed running max m of a tile satisfies "
               "s_j <= m <= M (M the final computed max), for every tiling and merge order.",
               r"\hat s_j \le \hat m_\tau \le \hat M \le M + \Delta_{max}, \quad "
               r"\hat M - \hat s_j \le (M - s_j) + \Delta_j + \Delta_{max}")


def step_exp(proof: Proof, lins: Linearisations):
    """p = exp(fl(s - m) [* fl(log2 e)]): argument relative error 3 roundings, exp error eps."""
    z = sp.Symbol("z", real=True)  # z = s - m <= 0
    g1, g2, g3, ep = sp.symbols("g1 g2 g3 epsilon", real=True)
    lin = lins.lin(sp.exp(z * (1 + g1) * (1 + g2) * (1 + g3)) * (1 + ep) / sp.exp(z), [g1, g2, g3, ep])
    ok = all(is_zero(lin[g] - z) for g in (g1, g2, g3)) and is_zero(lin[ep] - 1)
    proof.check("exp: relative error |z|(g1+g2+g3) + eps (count 3 on the argument)", ok)
    proof.step("exp/exp2 of the shifted logit: subtraction, conversion to base 2 and the rounded "
               "log2 e give 3 argument roundings; exp itself has relative error eps = 2 c_exp u_acc "
               "and flushes subnormal results (absolute eta).",
               r"\hat p_j = e^{(\hat s_j - \hat m)(1+\theta_3)}(1+\epsilon) + e_j,\quad"
               r"|\theta_3|\le\gamma_3,\ |\epsilon| \le 2c_{exp}u_{acc},\ |e_j|\le\eta")
    return 3, 1


def step_rescale(proof: Proof, lins: Linearisations):
    """The key's exp factors along its merge path (symbolic N): arguments telescope to the gap,
    one exp error per factor: at most N exp errors per key."""
    tau, t = sp.symbols("tau t", integer=True, positive=True)
    m = sp.IndexedBase("m", real=True)
    s_j = sp.Symbol("s_j", real=True)
    # one rescale: log(alpha^/alpha) with alpha = exp(fl(m_old - m_new)) (3 argument roundings, exp error)
    a_old, a_new = sp.symbols("m_old m_new", real=True)
    th = sp.symbols("th1:4", real=True)
    ep = sp.Symbol("ep", real=True)
    z = a_old - a_new
    lin = lins.lin(sp.log(sp.exp(z * sp.Mul(*[(1 + x) for x in th])) * (1 + ep)), list(th) + [ep])
    ok_step = all(is_zero(lin[x] - z) for x in th) and is_zero(lin[ep] - 1)
    proof.check("rescale step: log(alpha^/alpha) = (m_old - m_new)(th1 + th2 + th3) + ep to first order "
                "(argument coefficient = the max increment, 1 exp error)", ok_step)
    # over the path: the key's own exp argument (s_j - m_tau) then the rescales m_{t-1} - m_t, t > tau
    tele = sp.Sum(m[t] - m[t - 1], (t, tau + 1, N)).doit()
    total_arg = (m[tau] - s_j) + tele
    ok_tel = is_zero(total_arg - (m[N] - s_j))
    proof.check("rescale chain (symbolic N): the argument magnitudes along a key's path sum to "
                "(m_tau - s_j) + sum_{t>tau}(m_t - m_{t-1}) = M - s_j (SymPy Sum)", ok_tel)
    exps = chain_count({"exp": 1}, {"exp": 1}, N - tau)["exp"]  # c(t) = c(t-1) + 1: one exp per rescale
    ok_cnt = nonneg_certificate(N - exps, {tau: 1})
    proof.check("rescale chain: exp errors per key = 1 + (N - tau) <= N (rsolve, certificate tau >= 1)",
                ok_cnt, detail=f"count {exps}")
    proof.step("Rescale by alpha = exp(fl(m_old - m_new)) at every merge on the key's path (any tiling, "
               "any merge tree: the state max only grows along the path). Derived: each step adds "
               "(m_t - m_{t-1}) theta_t to the log-factor; the Sum telescopes to M - s_j together with "
               "the key's own exp argument; one exp error per factor, N at most.",
               r"\Big|\xi_j\Big| \le \gamma_3(\hat M-\hat s_j),\qquad \#\epsilon \le N")
    return {"exp_per_key": N}


def step_accumulate(proof: Proof, lins: Linearisations):
    """Running sums over n keys in N tiles of symbolic sizes: l and acc counts per key."""
    b, tau = sp.symbols("b tau", integer=True, positive=True)  # the key's tile size and index
    kt = sp.Symbol("kt", integer=True, positive=True)
    bs = sp.IndexedBase("b", integer=True, positive=True)
    # tile sums (tl.sum, any tree): the sequential chain of b terms, first exact -> b - 1 (derived)
    first, new, inc = sum_chain_counts(lins, fused=True)
    tile_first = chain_count(inc, {u_acc: 0}, b - 1)  # an unrounded P enters exactly
    ok_tile = is_zero(tile_first[u_acc] - (b - 1))
    # l: per tile L' = fl(fl(L alpha) + T)
    fl_ = Fresh("dl")
    dm, da = fl_(u_acc), fl_(u_acc)
    inc_l, new_l = step_counts(lins, (_S * _ALPHA * (1 + dm) + _Y) * (1 + da), state=_S, items=[_Y],
                               units=fl_.units)
    c1 = chain_count(inc_l, tile_first, N - 1)[u_acc]                          # tile 1: L = 0 (exact)
    c2 = chain_count(inc_l, add_counts(tile_first, new_l[0]), N - tau)[u_acc]  # tile tau >= 2
    claim_l = n + N - 2
    ok_l = (inc_l == {u_acc: 2} and nonneg_certificate(claim_l - c1, {n: b + N - 1})
            and nonneg_certificate(claim_l - c2, {n: b + N - 1, tau: 2}))
    proof.check("l (symbolic n, N, tile sizes): derived step inc 2 per tile (rescale product, add), a key of "
                "tile tau has (b_tau - 1) + [tau > 1] + 2(N - tau) roundings <= n + N - 2 (rsolve; "
                "certificate with n >= b_tau + N - 1)", ok_l and ok_tile, detail=f"tile 1: {c1}; tile tau: {c2}")
    # acc on the matrix unit: per tile A' = blocks of k products into fl(A alpha)
    fa = Fresh("da")
    dma, dblk = fa(u_acc), fa(u_mma)
    items = list(sp.symbols("pv1:3", real=True))
    inc_a1, new_a1 = step_counts(lins, (_S * _ALPHA * (1 + dma) + sum(items)) * (1 + dblk), state=_S,
                                 items=items, units=fa.units)
    fb = Fresh("db2")
    inc_b, _ = step_counts(lins, (_S + sum(items)) * (1 + fb(u_mma)), state=_S, items=items, units=fb.units)
    Bt = sp.Symbol("B_t", integer=True, positive=True)
    per_tile = chain_count(inc_b, inc_a1, Bt - 1)  # the first block carries the rescale, then B_t - 1 more
    ok_pt = is_zero(per_tile[u_acc] - 1) and is_zero(per_tile[u_mma] - Bt)
    # the key's u_mma count: its own tile's blocks and every later tile's: sum_{t >= tau} B_t
    #   <= sum_{t=1}^{N} ((b_t - 1)/k + 1) = (n - N)/k + N  (ceil lemma, Sum over tiles, sum_t b_t = n)
    t = sp.Symbol("t", integer=True, positive=True)
    total = sp.factor_terms(sp.Sum((bs[t] - 1) / k_mma + 1, (t, 1, N)).expand().doit())  # linearity of Sum
    total = sp.expand(total).subs(sp.Sum(bs[t], (t, 1, N)), n)
    claim_mma = (n - N) / k_mma + N
    ok_mma = is_zero(total - claim_mma)
    # u_acc: one rescale per later tile: N - tau <= N - 1
    ok_ua = nonneg_certificate((N - 1) - chain_count({u_acc: 1}, {u_acc: 0}, N - tau)[u_acc], {tau: 1})
    proof.check("acc on the matrix unit (symbolic n, N, k): derived per tile {u_acc: 1 (rescale), u_mma: B_t "
                "(blocks)}; a key meets <= N - 1 rescales and sum_t B_t <= (n - N)/k + N blocks (SymPy Sum "
                "over tiles of the ceil lemma)", ok_pt and ok_mma and ok_ua, detail=f"sum of blocks {total}")
    # IEEE tile-then-add (products rounded, tile tree sum, then added): within the k = 1 formula
    fi = Fresh("di")
    dmi, dai = fi(u_acc), fi(u_acc)
    inc_i, new_i = step_counts(lins, (_S * _ALPHA * (1 + dmi) + _Y) * (1 + dai), state=_S, items=[_Y],
                               units=fi.units)
    tile_prod = {u_acc: b}  # product + tree of b terms (first exact): 1 + (b - 1), as in step_dot
    d1 = chain_count(inc_i, tile_prod, N - 1)[u_acc]
    d2 = chain_count(inc_i, add_counts(tile_prod, new_i[0]), N - tau)[u_acc]
    claim_k1 = (N - 1) + claim_mma.subs(k_mma, 1)
    ok_i = (is_zero(claim_k1 - (n + N - 1)) and nonneg_certificate(claim_k1 - d1, {n: b + N - 1})
            and nonneg_certificate(claim_k1 - d2, {n: b + N - 1, tau: 2}))
    proof.check("acc, IEEE tile-then-add variant: b_tau + [tau > 1] + 2(N - tau) <= n + N - 1, the k = 1 value "
                "of the matrix-unit count (certificate)", ok_i, detail=f"tile 1: {d1}; tile tau: {d2}")
    proof.step("Running sums over n keys in N tiles of any sizes b_t, derived from the kernel's loop body "
               "(per tile: a tile sum, then the running sum with rescale) and solved over tiles; any merge "
               "tree of the tiles' states has depth <= N - 1 and adds the same two roundings per merge as a "
               "tile step (argued). l sums on scalar units; acc on the matrix unit.",
               r"|\theta^{l}_j| \le \gamma_{n+N-2}(u_{acc}),\qquad |\theta^{acc}_j| \le "
               r"\operatorname{expm1}\Big((N-1)\tfrac{u_{acc}}{1-u_{acc}} + \big(\tfrac{n-N}{k}+N\big)"
               r"\tfrac{u_{mma}}{1-u_{mma}}\Big)")
    return {"acc_l": claim_l, "pv_acc": N - 1, "pv_mma": claim_mma}


def step_round_p(proof: Proof):
    proof.step("P is rounded to the storage dtype before P@V; l sums the unrounded P "
               "(flash-attention convention): one u_in (and eta_in) on the numerator only.",
               r"\tilde P_j = \hat p_j(1+\delta_{in}) + e_{in},\ |\delta_{in}|\le u_{in},\ |e_{in}|\le\eta_{in}")
    return 1


def step_division(proof: Proof, lins: Linearisations):
    a_, l_, d1, d2 = sp.symbols("a l d1 d2", real=True)
    lin = lins.lin(a_ * (1 / (l_ * (1 + d1))) * (1 + d2), [d1, d2])
    ok = is_zero(lin[d1] + a_ / l_) and is_zero(lin[d2] - a_ / l_)
    proof.check("division acc * fl(1/l): two roundings with coefficient |o| (count 2)", ok)
    proof.step("Final division o = acc * fl(1/l) (covers a correctly rounded division).", r"\hat o = o(1+\theta_2)")
    return 2


def step_store(proof: Proof, lins: Linearisations):
    """Final store of O in the storage dtype: one u_in rounding (and eta_in when subnormal)."""
    o_, d = sp.symbols("o delta_in", real=True)
    lin = lins.lin(o_ * (1 + d), [d])
    proof.check("store: fl_in(o) = o(1 + delta_in), coefficient o (count 1 on u_in |o|)", is_zero(lin[d] - o_))
    proof.step("Final store of O in the storage dtype (round to nearest; subnormal: absolute eta_in).",
               r"\hat o_{stored} = \hat o(1+\delta_{in}) + e_{in}")
    return 1


def step_lse(proof: Proof, lins: Linearisations):
    """lse = fl(fl(m2 + fl(log2 l)) * fl(ln 2)): 3 roundings on |lse| + log error."""
    m2, ll = sp.symbols("m2 l", positive=True)
    a_, b_, c_, lerr = sp.symbols("a b c ell", real=True)
    lse_hat = (m2 + sp.log(ll, 2) + lerr) * (1 + a_) * sp.log(2) * (1 + b_) * (1 + c_)
    lse = (m2 + sp.log(ll, 2)) * sp.log(2)
    lin = lins.lin(lse_hat, [a_, b_, c_, lerr])
    ok = all(is_zero(lin[d] - lse) for d in (a_, b_, c_)) and is_zero(lin[lerr] - sp.log(2))
    proof.check("LSE: three roundings with coefficient lse, log2 error with factor ln 2", ok)
    proof.step("LSE = ln2 (m2 + log2 l) with approximate log2 (absolute error eps (|log2 l| + 1)): three "
               "roundings relative to |lse| plus the log's error.",
               r"|\widehat{\mathrm{lse}} - (\hat M + \log\hat\ell)| \le \gamma_3|\hat M + \log\hat\ell| "
               r"+ \epsilon(|\log\hat\ell| + 1)(1+\gamma_2)")
    return 3


def step_split(proof: Proof, lins: Linearisations):
    """Split-KV (one LSE-combine level over S <= N splits): renormalisation, then the combine's sums
    derived by the sum machinery: numerator N + 3, denominator N - 1."""
    m_, l_, c_ = sp.symbols("m l c", positive=True)
    a = sp.symbols("a1:3", real=True)
    ren = (m_ + sp.log(l_), sp.Integer(1), [x / l_ for x in a])
    same_o = all(is_zero(x / 1 - y / l_) for x, y in zip(ren[2], a))
    same_lse = is_zero(ren[0] + sp.log(ren[1]) - (m_ + sp.log(l_)))
    same_shifted = is_zero(sp.exp(ren[0] - c_) * ren[1] - sp.exp(m_ - c_) * l_)
    proof.check("split: renormalised state gives the same (o, lse) and the same shifted l",
                same_o and same_lse and same_shifted)
    S = sp.Symbol("S_splits", integer=True, positive=True)
    first, _, inc = sum_chain_counts(lins, fused=False)     # numerator: sum_s w_s o_s, products rounded
    num = chain_count(inc, first, S - 1)[u_acc]
    _, _, inc_d = sum_chain_counts(lins, fused=True)
    den = chain_count(inc_d, {u_acc: 0}, S - 1)[u_acc]      # denominator: sum_s w_s, first exact
    ok = is_zero(num - S) and is_zero(den - (S - 1))
    proof.check("split combine (symbolic S <= N splits): numerator sum of w_s o_s has S roundings, the "
                "denominator sum of w_s has S - 1 (rsolve)", ok)
    proof.step("Split-KV (one LSE-combine level, flag h_s): each split is renormalised to (lse_s, 1, o_s) "
               "(rho common, 2 divisions + 1 fp32 store on acc), then combined with weights exp(lse_s - "
               "lse) whose numerator and denominator exps are computed separately (eps and gamma_3 "
               "(M - s_j + ln n) on each side) and summed over S <= N splits.",
               r"\text{numerator}: N + 3\ \text{roundings},\ \text{denominator}: N - 1")
    return {"split_num": N + 3, "split_den": N - 1}


def step_assembly(proof: Proof):
    """Exact identity: N/D - o = [sum pi b (v - o) + sum pi (a - b) v + E_N - o E_D] / (1 + beta)."""
    j, nn = sp.symbols("j n_", integer=True, positive=True)
    p, a, b, v = sp.IndexedBase("p"), sp.IndexedBase("a"), sp.IndexedBase("b"), sp.IndexedBase("v")
    en, ed = sp.symbols("E_N E_D", real=True)
    checks = []
    for size in (1, 2, 3, 4):
        P = sum(p[i] for i in range(size))
        pi = [p[i] / P for i in range(size)]
        o = sum(pi[i] * v[i] for i in range(size))
        num = sum(p[i] * (1 + a[i]) * v[i] for i in range(size)) + en
        den = sum(p[i] * (1 + b[i]) for i in range(size)) + ed
        bet = sum(pi[i] * b[i] for i in range(size)) + ed / P
        rhs = (sum(pi[i] * b[i] * (v[i] - o) for i in range(size))
               + sum(pi[i] * (a[i] - b[i]) * v[i] for i in range(size)) + (en - o * ed) / P) / (1 + bet)
        checks.append(is_zero(sp.together(num / den - o - rhs)))
    proof.check("assembly identity holds exactly (n = 1..4 keys, symbolic weights and perturbations)", all(checks))
    P_ = sp.Sum(p[j], (j, 1, nn))
    Spv = sp.Sum(p[j] * v[j], (j, 1, nn))
    lhs = P_ * sp.Sum(p[j] * (1 + a[j]) * v[j], (j, 1, nn)) - Spv * sp.Sum(p[j] * (1 + b[j]), (j, 1, nn))
    rhs = (P_ * sp.Sum(p[j] * b[j] * v[j], (j, 1, nn)) - sp.Sum(p[j] * b[j], (j, 1, nn)) * Spv
           + P_ * sp.Sum(p[j] * (a[j] - b[j]) * v[j], (j, 1, nn)))
    proof.check("assembly identity for symbolic length n (IndexedBase double sums)", _double_sum_zero(lhs - rhs, j))
    proof.step("Exact assembly: with per-key relative perturbations a_j (numerator weight), b_j "
               "(denominator weight) and absolute E_N, E_D (shift M, P = sum e^{s-M} >= 1):",
               r"\frac{\sum_j p_j(1+a_j)v_j + E_N}{\sum_j p_j(1+b_j)+E_D} - o = "
               r"\frac{\sum_j \pi_j b_j (v_j - o) + \sum_j \pi_j (a_j-b_j) v_j + (E_N - oE_D)/P}"
               r"{1 + \sum_j\pi_j b_j + E_D/P}")


def _double_sum_zero(expr, j) -> bool:
    """Zero test for a sum of products of exactly two Sums over the same range."""
    k2 = sp.Symbol("k_", integer=True, positive=True)
    total = 0
    for term in sp.Add.make_args(sp.expand(expr)):
        coeff, summands = sp.Integer(1), []
        for f in sp.Mul.make_args(term):
            if isinstance(f, sp.Sum):
                summands.append(f)
            elif isinstance(f, sp.Pow) and isinstance(f.base, sp.Sum) and f.exp == 2:
                summands += [f.base, f.base]
            else:
                coeff *= f
        if len(summands) != 2:
            return False
        f1 = summands[0].function.subs(summands[0].variables[0], j)
        f2 = summands[1].function.subs(summands[1].variables[0], k2)
        total += coeff * f1 * f2
    total = sp.expand(total)
    return sp.expand(total + total.subs({j: k2, k2: j}, simultaneous=True)) == 0


def step_cap(proof: Proof):
    """Convexity cap: whatever the logit errors, the computed output is (1 + nu) times a convex
    combination of the allowed values, plus underflow terms; so |o_hat - o| <= W + nu V + ..."""
    x, r, rp = (sp.symbols(f"{c}1:4", positive=True) for c in ("x", "r", "q"))
    ratio = sum(a * b for a, b in zip(x, r)) / sum(a * b for a, b in zip(x, rp))
    expanded = sp.expand(sp.numer(sp.together(ratio - r[0] / rp[0])))
    rho_ = sp.symbols("rho1:4", positive=True)
    d1, d2 = sp.symbols("delta2 delta3", nonnegative=True)
    c1 = sp.expand(expanded.subs({r[i]: rho_[i] * rp[i] for i in range(3)}).subs(
        {rho_[1]: rho_[0] + d1, rho_[2]: rho_[0] + d2}))
    c1_ok = all(t.could_extract_minus_sign() is False for t in sp.Add.make_args(c1)) if c1 != 0 else True
    t_, a_, y_ = sp.symbols("t a y", positive=True)
    h_ = y_ * sp.exp(y_) - (sp.exp(y_) - 1)
    c2a = h_.subs(y_, 0) == 0 and is_zero(sp.diff(h_, y_) - y_ * sp.exp(y_))
    crit = sp.solve(sp.diff(t_ * sp.exp(-a_ * t_), t_), t_)
    c2b = crit == [1 / a_] and is_zero((t_ * sp.exp(-a_ * t_)).subs(t_, 1 / a_) - 1 / (sp.E * a_))
    proof.check("cap lemma C1 (mediant: a ratio of weighted sums lies within the extreme ratios), n = 3", c1_ok)
    proof.check("cap lemma C2 (e^{-t}(e^{t gamma} - 1) <= gamma / (e (1 - gamma)))", c2a and c2b)
    rng = random.Random(9)
    okn = True
    with mpmath.workdps(30):
        for _ in range(300):
            tv, gv = mpmath.mpf(rng.uniform(0, 60)), mpmath.mpf(rng.uniform(0, 0.5))
            okn &= mpmath.exp(-tv) * mpmath.expm1(tv * gv) <= gv / (mpmath.e * (1 - gv))
            xs = [mpmath.mpf(rng.uniform(0, 3)) for _ in range(4)]
            rs = [mpmath.mpf(rng.uniform(0.5, 2)) for _ in range(4)]
            qs = [mpmath.mpf(rng.uniform(0.5, 2)) for _ in range(4)]
            rat = mpmath.fsum(a * b for a, b in zip(xs, rs)) / mpmath.fsum(a * b for a, b in zip(xs, qs))
            okn &= min(a / b for a, b in zip(rs, qs)) <= rat <= max(a / b for a, b in zip(rs, qs))
    proof.check("cap lemmas C1, C2 at 300 mpmath points", okn, kind="numeric")
    proof.step("Convexity cap (holds whatever the logit errors): the computed output is "
               "$\\Lambda\\,\\bar c+A$ with $\\bar c$ a convex combination of the allowed $v_j$ (weights "
               "$\\hat p_j\\ge0$ share the same rescales in numerator and denominator, lemma C1), "
               "$|\\Lambda-1|\\le\\nu$ from the roundings of the sums, the division and (split-KV only) the "
               "store and the LSE combine (lemma C2 bounds the combine's argument errors), $A$ the underflow "
               "terms. Without an LSE combine nu does not depend on the logits, so the cap is finite at any "
               "logit magnitude. With $W=\\max v-\\min v$ and $V=\\max|v|$ over allowed keys:",
               r"|\hat o-o|\le W+\nu V+A+u_{in}\big((1+\nu)V+A\big)+\eta_{in}")
    return True

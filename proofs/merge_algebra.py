"""Theorem 2: the merge of online-softmax states is a commutative monoid and a homomorphism.

States (m, l, acc) with the merge of flashproof.spec, or any ``merge`` passed in (the negative
controls feed wrong ones; :mod:`.harness` makes sure a wrong one FAILS and never crashes). The
operator is evaluated on the exhaustive case split of :mod:`.harness` (which states are empty,
the weak order of their maxima, ties included), at symbolic values satisfying each case and at
exact representatives; the accumulator at every width of ``harness.WIDTHS`` (every component)
and, for operators built on the ops' vector primitives, at a symbolic index of a symbolic width.
Conclusion (by induction over the merge tree): every tiling and every merge tree, in any order,
gives the exact softmax-weighted sum and LSE.
"""
from __future__ import annotations

import itertools
import random
import sys

import mpmath
import sympy as sp

from flashproof import spec
from flashproof.spec import State

from . import harness as H
from .core import MP, SYMPY, Proof, exact_equal, is_zero, operator_free, proof_main, sums_equal, sym_states_equal, timed

__all__ = ["prove", "main", "STATEMENT"]

STATEMENT = (
    r"For states $(m,\ell,\mathrm{acc})$ and $\oplus$ the merge under test (`spec.merge`): in every case of "
    r"the split (each state empty or not; the weak order of the maxima, ties included), "
    r"$a\oplus b$ represents both key sets ($m=\max(m_a,m_b)$, $e^m\ell=e^{m_a}\ell_a+e^{m_b}\ell_b$, "
    r"$e^m\mathrm{acc}=e^{m_a}\mathrm{acc}_a+e^{m_b}\mathrm{acc}_b$ component-wise, machine-checked at every "
    r"accumulator width in $W=\{1..9,16,17,32,33,40,48,64,65,72,80,96,112,128,129,160,192,256,257,512,513\}$ and, for an operator "
    r"built on the ops' vector primitives as `spec.merge` is, at a symbolic index of a symbolic width); "
    r"$(a\oplus b)\oplus c=a\oplus(b\oplus c)$ (26 cases), $a\oplus b=b\oplus a$, $(-\infty,0,0)\oplus a=a=a\oplus"
    r"(-\infty,0,0)$; $\mathrm{state}(x\,\|\,y)=\mathrm{state}(x)\oplus\mathrm{state}(y)$ for blocks of symbolic "
    r"length. Hence every tiling and every merge tree (split-KV, any order) yields "
    r"$\mathrm{finalize}=(\sum_j \pi_j v_j,\ \log\sum_j e^{s_j})$. Any shift $c$ gives the same result, and "
    r"$\mathrm{lse}(A\cup B)=\mathrm{logaddexp}(\mathrm{lse}_A,\mathrm{lse}_B)$, $O=w_AO_A+w_BO_B$, "
    r"$w_X=e^{\mathrm{lse}_X-\mathrm{lse}}$."
)

#: width of the accumulator in the law checks (the realisation checks cover every width)
LAW_WIDTH = 3


def _sym_state(name, dim=2):
    m = sp.Symbol(f"m_{name}", real=True)
    l = sp.Symbol(f"l_{name}", positive=True)
    acc = [sp.Symbol(f"a_{name}{i}", real=True) for i in range(dim)]
    return State(m, l, acc)


def _trees(n):
    if n == 1:
        yield 0
        return
    for i in range(1, n):
        for left in _trees(i):
            for right in _trees(n - i):
                yield (left, _shift_tree(right, i))


def _shift_tree(t, d):
    return t + d if not isinstance(t, tuple) else (_shift_tree(t[0], d), _shift_tree(t[1], d))


def _eval_tree(t, leaves, merge, ops):
    if not isinstance(t, tuple):
        return leaves[t]
    return merge(_eval_tree(t[0], leaves, merge, ops), _eval_tree(t[1], leaves, merge, ops), ops)


def _values(n, width, rep):
    """Value vectors of n keys (symbols, or exact rationals for a representative)."""
    if rep is None:
        return [[sp.Symbol(f"v{j}_{c}", real=True) for c in range(width)] for j in range(n)]
    return [[sp.Rational(((5 * j + 3 * c + rep) % 7) - 3, 2) for c in range(width)] for j in range(n)]


@timed
def prove(merge=spec.merge, *, stop_on_failure=False) -> Proof:
    """Prove theorem 2 for ``merge`` (a wrong operator must make this FAIL, never crash)."""
    p = Proof("merge_algebra", "Merge algebra: monoid and homomorphism (theorem 2)", STATEMENT)
    F = H.guard(merge)
    pairs, triples = H.cases(2), H.cases(3)

    def done(ok):
        return stop_on_failure and not ok

    # --- the operator computes the merge, case by case, at every width
    def realise(case, rep):
        for w in (H.WIDTHS if rep is None else (1, 2, 3)):
            ins = H.case_states(case, w, rep=rep)
            errs = H.merge_errors(F(*ins, SYMPY), ins, H.case_m(case, rep))
            if errs:
                return [f"width {w}: {errs[0]}"]
        return []

    ok = True
    for case in pairs:
        ok &= H.by_cases(p, f"case {case.name}: a + b represents both key sets (m = max, e^m l and e^m acc add "
                            f"up), every component at every width in W", [case], realise)
        if done(ok):
            return p

    def realise_symbolic_width(case, rep):
        ins = H.case_states(case, "symbolic", rep=rep)
        return H.merge_errors(F(*ins, SYMPY), ins, H.case_m(case, rep))

    ok &= H.by_cases(p, "all 6 cases at a symbolic index i of a symbolic width (accumulator only through "
                        "ops.vec_scale / vec_add)", pairs, realise_symbolic_width, reps=0,
                     undecidable_ok="the operator reads components individually; the finite widths W cover it")
    p.step("Case split. The maxima of the states fall into exhaustive cases: each state empty, i.e. the "
           "identity $(-\\infty,0,0)$, or not, and the weak order of the non-empty maxima (ties are their own "
           "cases: 6 cases for two states, 26 for three). In each case the states get symbolic values that "
           "satisfy it ($m=\\mu+d_1+\\dots+d_r$ with $d_i>0$, $\\ell>0$, $\\mathrm{acc}$ real), so every order "
           "comparison an operator makes, even a plain Python `if`, is decided; and exact rational "
           "representatives (with $m=0$, $\\ell=1$, equal $\\ell$, zero and equal accumulators) catch `==` "
           "special cases, which are structural on symbols.")
    p.step("Every head dimension. At each width in $W$ every output component must be one and the same "
           "function of its own input components (no other component may appear), and that function must "
           "satisfy the identity; an operator that touches the accumulator only through the ops' vector "
           "primitives is also evaluated on an accumulator of symbolic length at a symbolic index.",
           r"e^{m}\mathrm{acc}_i=e^{m_a}\mathrm{acc}_{a,i}+e^{m_b}\mathrm{acc}_{b,i},\quad e^{m}\ell=e^{m_a}\ell_a+e^{m_b}\ell_b,\quad m=\max(m_a,m_b)")
    if done(ok):
        return p

    # --- monoid laws by cases
    def assoc(case, rep):
        a, b, c = H.case_states(case, LAW_WIDTH, rep=rep)
        lhs, rhs = F(F(a, b, SYMPY), c, SYMPY), F(a, F(b, c, SYMPY), SYMPY)
        if not sym_states_equal(lhs, rhs):
            return [f"(a+b)+c = {tuple(lhs)} != a+(b+c) = {tuple(rhs)}"]
        return [f"(a+b)+c is not the merge of a, b, c: {e}" for e in H.merge_errors(lhs, (a, b, c), H.case_m(case, rep))]

    def commute(case, rep):
        a, b = H.case_states(case, LAW_WIDTH, rep=rep)
        ab, ba = F(a, b, SYMPY), F(b, a, SYMPY)
        return [] if sym_states_equal(ab, ba) else [f"a+b = {tuple(ab)} != b+a = {tuple(ba)}"]

    def identity(case, rep):
        a, = H.case_states(case, LAW_WIDTH, rep=rep)
        e = spec.identity(LAW_WIDTH, SYMPY)
        errs = []
        for name, out in (("(-oo,0,0) + a", F(e, a, SYMPY)), ("a + (-oo,0,0)", F(a, e, SYMPY))):
            if not sym_states_equal(out, a):
                errs.append(f"{name} = {tuple(out)} != a")
        return errs

    ok &= H.by_cases(p, "associativity (a+b)+c = a+(b+c) = merge of a, b, c: all 26 cases of three states "
                        "(ties, empty states)", triples, assoc)
    ok &= H.by_cases(p, "commutativity a+b = b+a: all 6 cases", pairs, commute)
    ok &= H.by_cases(p, "identity (-oo, 0, 0) + a = a = a + (-oo, 0, 0), a non-empty or empty",
                     H.cases(1), identity)
    if done(ok):
        return p
    # --- the same laws with Max left symbolic (operators without order branches)
    A, B, C = _sym_state("A"), _sym_state("B"), _sym_state("C")
    idn = spec.identity(2, SYMPY)

    def max_symbolic():
        errs = []
        if not sym_states_equal(F(F(A, B, SYMPY), C, SYMPY), F(A, F(B, C, SYMPY), SYMPY)):
            errs.append("associativity")
        if not sym_states_equal(F(A, B, SYMPY), F(B, A, SYMPY)):
            errs.append("commutativity")
        if not (sym_states_equal(F(idn, A, SYMPY), A) and sym_states_equal(F(A, idn, SYMPY), A)):
            errs.append("identity")
        e2 = F(idn, idn, SYMPY)
        if not (exact_equal(e2.m, -sp.oo) and exact_equal(e2.l, 0) and all(exact_equal(x, 0) for x in e2.acc)):
            errs.append("identity + identity = identity")
        return errs

    ok &= H.record(p, "monoid laws with Max(m_a, m_b, m_c) left symbolic (no case split needed: SymPy's Max is "
                     "associative and commutative)", max_symbolic,
                  undecidable_ok="the operator branches on the order of the maxima; the case split above covers it")
    p.step("With $m=\\max(m_a,m_b)$ the merged state is "
           "$(m,\\ e^{m_a-m}\\ell_a+e^{m_b-m}\\ell_b,\\ e^{m_a-m}\\mathrm{acc}_a+e^{m_b-m}\\mathrm{acc}_b)$; "
           "both sides of associativity reduce to $\\sum_i e^{m_i-\\max(m_A,m_B,m_C)}(\\ell_i,\\mathrm{acc}_i)$; "
           "for an operator without order branches SymPy's Max (associative, commutative) proves it with no "
           "case split, and the case split proves it for any operator.",
           r"(A\oplus B)\oplus C = \Big(M,\ \sum_{i} e^{m_i-M}\ell_i,\ \sum_i e^{m_i-M}\mathrm{acc}_i\Big),\ M=\max(m_A,m_B,m_C)")
    if done(ok):
        return p
    # --- homomorphism, symbolic lengths, by cases
    j = sp.Symbol("j", integer=True)
    a, b = sp.symbols("a b", integer=True, positive=True)
    s, v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    widths = (1, 3)

    def state_of(lo, hi, mshift, w):
        if mshift == -sp.oo:
            return spec.identity(w, SYMPY)
        return State(mshift, sp.Sum(sp.exp(s[j] - mshift), (j, lo, hi)),
                     [sp.Sum(sp.exp(s[j] - mshift) * v[j, c], (j, lo, hi)) for c in range(w)])

    def hom(case, rep):
        mx, my = H.case_m(case, rep)
        errs = []
        for w in widths:
            sx, sy = state_of(1, a, mx, w), state_of(a + 1, a + b, my, w)
            mg = F(sx, sy, SYMPY)
            live = [(m_, lo, hi) for m_, lo, hi in ((mx, 1, a), (my, a + 1, a + b)) if m_ != -sp.oo]
            if not live:
                want = spec.identity(w, SYMPY)
                if not sym_states_equal(mg, want):
                    errs.append(f"width {w}: state(empty ++ empty) = {tuple(mg)} != (-oo, 0, 0)")
                continue
            M = sp.Max(*[m_ for m_, _, _ in live])
            want_l = sum(sp.Sum(sp.exp(s[j] - M), (j, lo, hi)) for _, lo, hi in live)
            if not exact_equal(mg.m, M):
                errs.append(f"width {w}: m = {mg.m} != {M}")
            elif not sums_equal(mg.l, want_l):
                errs.append(f"width {w}: l != sum over both blocks of e^(s_j - m)")
            else:
                t, holders = H.componentwise(mg.acc, [sx.acc, sy.acc])
                if t is None:
                    errs.append(f"width {w}: {holders}")
                else:
                    inst = t.xreplace({h: acc[0] for h, acc in zip(holders, (sx.acc, sy.acc))})
                    want = sum(sp.Sum(sp.exp(s[j] - M) * v[j, 0], (j, lo, hi)) for _, lo, hi in live)
                    if not sums_equal(inst, want):
                        errs.append(f"width {w}: acc != sum over both blocks of e^(s_j - m) v_j")
            if errs:
                break
        return errs

    hom_ok = H.by_cases(p, "homomorphism state(x ++ y) = state(x) + state(y), blocks of symbolic lengths a, b, "
                           "all 6 cases of the block shifts (an empty block is the identity), widths 1 and 3",
                        pairs, hom, reps=0)
    ok &= hom_ok
    p.step("Homomorphism: push $e^{m_x-m}$ into the sum over $x$ and $e^{m_y-m}$ into the sum over $y$ "
           "(linearity), then join the adjacent ranges; at width 3 every accumulator column is the same "
           "function of its own column (checked), so one column's identity proves all:",
           r"e^{m_x-m}\sum_{j=1}^{a}e^{s_j-m_x}+e^{m_y-m}\sum_{j=a+1}^{a+b}e^{s_j-m_y}=\sum_{j=1}^{a+b}e^{s_j-m}")
    # shift invariance (no operator): any c (the max is there to avoid overflow: theorem 8)
    c_ = sp.Symbol("c", real=True)
    mx_ = sp.Symbol("m_x", real=True)
    st_c, st_m = state_of(1, a, c_, 1), state_of(1, a, mx_, 1)
    ok &= p.check("any shift c gives the same o = acc/l and lse = c + log l",
                  operator_free("thm2 shift", lambda: sums_equal(st_c.acc[0] * st_m.l, st_m.acc[0] * st_c.l)
                                and sums_equal(sp.exp(c_) * st_c.l, sp.exp(mx_) * st_m.l)))
    p.step("Shift invariance: $e^{c}\\sum e^{s_j-c}=\\sum e^{s_j}$ for every $c$, so $o=\\mathrm{acc}/\\ell$ "
           "and $\\mathrm{lse}=c+\\log\\ell$ do not depend on $c$; the maximum is the shift that avoids "
           "overflow (theorem 8).")
    if done(ok):
        return p
    # --- concrete blocks through spec.block_state: masked keys, ties, empty blocks
    def blocks(case, rep, sizes):
        xs = H.case_m(case, rep)
        ys = _values(len(xs), 2, rep)
        st1 = spec.block_state(xs[:sizes[0]], ys[:sizes[0]], 2, SYMPY)
        st2 = spec.block_state(xs[sizes[0]:], ys[sizes[0]:], 2, SYMPY)
        whole = spec.block_state(xs, ys, 2, SYMPY)
        got = F(st1, st2, SYMPY)
        return [] if sym_states_equal(got, whole) else [f"blocks {sizes}: {tuple(got)} != state(all) {tuple(whole)}"]

    conc_ok = True
    for sizes in ((1, 1), (2, 1), (1, 2)):
        conc_ok &= H.by_cases(p, f"spec.block_state, blocks {sizes[0]}+{sizes[1]}: state(x ++ y) = state(x) + "
                                 f"state(y), every pattern of masked keys and tied logits",
                              H.cases(sum(sizes)), lambda c, r, sz=sizes: blocks(c, r, sz), reps=1)
    ok &= conc_ok
    rng = random.Random(2)
    num = H.attempt(lambda: all(_numeric_hom(F, sz, mk, rng) for sz, mk in (
        ((1, 1), ()), ((2, 1), ()), ((1, 3), (1,)), ((2, 2), (0, 3)), ((2, 2), (0, 1)))))
    ok &= p.check("... mpmath spot checks of the same (random logits in [-60, 60], masked keys, an all-masked "
                  "block)", num[0] is True, kind="numeric", detail=H.why(num))
    if done(ok):
        return p
    # --- induction over merge trees: base and step checked; exhaustive small cases
    xs = list(sp.symbols("t1:6", real=True))
    ys = [[sp.Symbol(f"w{i}", real=True)] for i in range(5)]
    base_ok = all(sym_states_equal(spec.block_state([x], [y], 1, SYMPY), State(x, sp.Integer(1), [y[0]]))
                  for x, y in zip(xs, ys))
    ok &= p.check("induction base: a leaf (one block) evaluates to state(block) (block_state = definition)",
                  base_ok)
    ok &= p.check("induction step: eval(T1 + T2) = state(X1) + state(X2) = state(X1 ++ X2) "
                  "(the symbolic-length homomorphism above)", hom_ok)
    edges = [(0, 1), (1, 3), (3, 4), (4, 5)]
    trees4 = list(_trees(4))

    def trees(case, rep):
        lg = H.case_m(case, rep)
        vs = _values(5, 1, rep)
        leaves = [spec.block_state(lg[a_:b_], vs[a_:b_], 1, SYMPY) for a_, b_ in edges]
        whole = spec.block_state(lg, vs, 1, SYMPY)
        for t in trees4:
            if not sym_states_equal(_eval_tree(t, leaves, F, SYMPY), whole):
                return [f"tree {t} over blocks {edges} != state(all keys)"]
        for perm in itertools.permutations(range(3)):
            lv = [leaves[i] for i in perm]
            keys = [k for i in perm for k in range(*edges[i])]
            want = spec.block_state([lg[k] for k in keys], [vs[k] for k in keys], 1, SYMPY)
            for t in _trees(3):
                if not sym_states_equal(_eval_tree(t, lv, F, SYMPY), want):
                    return [f"tree {t} over blocks {[edges[i] for i in perm]} != state of the permuted keys"]
        return []

    key_cases = H.cases(5)[::45]  # 25 of the 1082 patterns of 5 keys: ties, masked keys, empty blocks
    ok &= H.by_cases(p, f"all {len(trees4)} merge trees over 4 irregular blocks (1, 2, 1, 1 keys) and all 6 orders "
                        f"x 2 trees of 3 of them equal state of the (permuted) keys (split-KV in any order), "
                        f"{len(key_cases)} patterns of masked and tied logits", key_cases, trees, reps=1)
    p.step("Induction over the merge tree $T$ on consecutive blocks $X_1..X_n$: a leaf is "
           "$\\mathrm{state}(X_i)$; if $T=T_1\\oplus T_2$ with $T_1$ over $X_1..X_k$ and $T_2$ over "
           "$X_{k+1}..X_n$, then by hypothesis and the homomorphism "
           "$\\mathrm{eval}(T)=\\mathrm{state}(X_1\\|..\\|X_k)\\oplus\\mathrm{state}(X_{k+1}\\|..\\|X_n)="
           "\\mathrm{state}(X_1\\|..\\|X_n)$. Any order: commutativity and associativity let any tree over "
           "any permutation of the blocks be rearranged into an in-order tree, and state() of a permuted "
           "key set is the same (finite sums commute). finalize then gives the softmax-weighted sum.")
    if done(ok):
        return p
    # --- LSE merge (split-KV combine of renormalised partials), by cases
    OA, OB = sp.symbols("O_A O_B", real=True)

    def lse_merge(case, rep):
        lA, lB = H.case_m(case, rep)
        parts = [spec.partial_state([o], x, SYMPY) for x, o in ((lA, OA), (lB, OB))]
        o_m, lse_m = spec.finalize(F(*parts, SYMPY), SYMPY)
        live = [(x, o) for x, o in ((lA, OA), (lB, OB)) if x != -sp.oo]
        if not live:
            return [] if exact_equal(lse_m, -sp.oo) and exact_equal(o_m[0], 0) else [f"empty: ({o_m}, {lse_m})"]
        z = sum(sp.exp(x) for x, _ in live)
        want_o = sum(sp.exp(x) * o for x, o in live) / z
        if not (is_zero(o_m[0] - want_o) and is_zero(sp.exp(lse_m) - z)):
            return [f"finalize = ({o_m[0]}, {lse_m}) != (w_A O_A + w_B O_B, logaddexp)"]
        return []

    ok &= H.by_cases(p, "LSE merge realised by the operator: finalize((lse_A,1,O_A) + (lse_B,1,O_B)) = "
                        "(w_A O_A + w_B O_B, logaddexp(lse_A, lse_B)), all 6 cases (an empty partial is "
                        "(-oo, 0, 0))", pairs, lse_merge)
    lseA = sp.log(sp.Sum(sp.exp(s[j]), (j, 1, a)))
    lseB = sp.log(sp.Sum(sp.exp(s[j]), (j, a + 1, a + b)))
    lseAB = sp.log(sp.Sum(sp.exp(s[j]), (j, 1, a + b)))
    OA_ = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, a)) / sp.exp(lseA)
    OB_ = sp.Sum(sp.exp(s[j]) * v[j], (j, a + 1, a + b)) / sp.exp(lseB)
    OAB = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, a + b)) / sp.exp(lseAB)
    ok &= p.check("lse(A u B) = logaddexp(lse_A, lse_B) for blocks of symbolic length",
                  operator_free("thm2 lse", lambda: sums_equal(sp.exp(lseAB), sp.exp(lseA) + sp.exp(lseB))))
    ok &= p.check("O = w_A O_A + w_B O_B, w_X = exp(lse_X - lse), symbolic lengths",
                  operator_free("thm2 lse O", lambda: sums_equal(
                      OAB * sp.exp(lseAB), (sp.exp(lseA - lseAB) * OA_ + sp.exp(lseB - lseAB) * OB_) * sp.exp(lseAB))))
    p.step("LSE merge (split-KV combine): the renormalised state $(\\mathrm{lse}_X,1,O_X)$ represents the "
           "same keys (shift invariance), so merging renormalised states is a merge of states.",
           r"\mathrm{lse}=\log(e^{\mathrm{lse}_A}+e^{\mathrm{lse}_B}),\quad O=e^{\mathrm{lse}_A-\mathrm{lse}}O_A+e^{\mathrm{lse}_B-\mathrm{lse}}O_B")
    num = H.attempt(_numeric_laws, F, rng)
    p.check("monoid laws, tree/order independence and LSE merge at random mpmath states (50 digits)",
            bool(num[0] and num[0][0]), kind="numeric", detail=num[0][1] if num[0] else H.why(num))
    return p


def _numeric_hom(merge, sizes, masked, rng) -> bool:
    with mpmath.workdps(50):
        n = sum(sizes)
        xs = [mpmath.mpf(rng.uniform(-60, 60)) for _ in range(n)]
        for i in masked:
            xs[i] = -mpmath.inf
        ys = [[mpmath.mpf(rng.uniform(-3, 3))] for _ in range(n)]
        st = merge(spec.block_state(xs[:sizes[0]], ys[:sizes[0]], 1, MP),
                   spec.block_state(xs[sizes[0]:], ys[sizes[0]:], 1, MP), MP)
        whole = spec.block_state(xs, ys, 1, MP)
        o1, l1 = spec.finalize(st, MP)
        o2, l2 = spec.finalize(whole, MP)
        if l2 == -mpmath.inf:
            return l1 == -mpmath.inf and o1[0] == 0
        return abs(o1[0] - o2[0]) < mpmath.mpf(10) ** -40 and abs(l1 - l2) < mpmath.mpf(10) ** -40


def _numeric_laws(merge, rng):
    worst = mpmath.mpf(0)
    with mpmath.workdps(50):
        for _ in range(30):
            n = rng.randint(2, 9)
            xs = [mpmath.mpf(rng.uniform(-80, 80)) for _ in range(n)]
            ys = [[mpmath.mpf(rng.uniform(-3, 3))] for _ in range(n)]
            cuts = sorted(rng.sample(range(1, n), rng.randint(1, n - 1)))
            edges = [0] + cuts + [n]
            leaves = [spec.block_state(xs[a:b], ys[a:b], 1, MP) for a, b in zip(edges, edges[1:])]
            rng.shuffle(leaves)
            pool = list(leaves)
            while len(pool) > 1:  # random merge tree in random order
                i, k = rng.sample(range(len(pool)), 2)
                x, y = pool[i], pool[k]
                pool = [q for t, q in enumerate(pool) if t not in (i, k)] + [merge(x, y, MP)]
            o1, l1 = spec.finalize(pool[0], MP)
            ref = [mpmath.exp(x) for x in xs]
            z = mpmath.fsum(ref)
            o2 = mpmath.fsum(r * y[0] for r, y in zip(ref, ys)) / z
            worst = max(worst, abs(o1[0] - o2), abs(l1 - mpmath.log(z)))
            a, b, c = leaves[0], leaves[-1], leaves[len(leaves) // 2]
            for lhs, rhs in ((merge(merge(a, b, MP), c, MP), merge(a, merge(b, c, MP), MP)),
                             (merge(a, b, MP), merge(b, a, MP)),
                             (merge(spec.identity(1, MP), a, MP), a)):
                worst = max(worst, abs(lhs.m - rhs.m) if lhs.m != rhs.m else 0,
                            abs(lhs.l - rhs.l), abs(lhs.acc[0] - rhs.acc[0]))
    ok = worst < mpmath.mpf(10) ** -35  # NaN compares False: fails
    return ok, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

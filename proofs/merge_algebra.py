"""Theorem 2: the merge of online-softmax states is a commutative monoid and a homomorphism.

States (m, l, acc) with the merge of flashproof.spec (or any ``merge`` passed in, so that the
negative controls can feed a wrong one). Proved symbolically with SymPy, the max left symbolic
(SymPy's Max is associative and commutative, and the shift cancels whatever block holds the max)
and, as a second argument, by cases on the ordering of the maxima. Every identity also gets an
mpmath spot check. Conclusion (by induction over the merge tree): every tiling and every merge
tree, in any order, gives the exact softmax-weighted sum and LSE.
"""
from __future__ import annotations

import itertools
import random
import sys

import mpmath
import sympy as sp

from flashproof import spec
from flashproof.spec import State

from .core import MP, SYMPY, Proof, is_zero, sym_states_equal, sums_equal, proof_main, timed

__all__ = ["prove", "main", "STATEMENT"]

STATEMENT = (
    r"For states $(m,\ell,\mathrm{acc})$ and $\oplus$ = `spec.merge`: $(a\oplus b)\oplus c=a\oplus(b\oplus c)$, "
    r"$a\oplus b=b\oplus a$, $(-\infty,0,0)\oplus a=a$; $\mathrm{state}(x\,\|\,y)=\mathrm{state}(x)\oplus"
    r"\mathrm{state}(y)$ for blocks of symbolic length. Hence every tiling and every merge tree "
    r"(split-KV, any order) yields $\mathrm{finalize}=(\sum_j \pi_j v_j,\ \log\sum_j e^{s_j})$. "
    r"Any shift $c$ gives the same result, and $\mathrm{lse}(A\cup B)=\mathrm{logaddexp}(\mathrm{lse}_A,"
    r"\mathrm{lse}_B)$, $O=w_AO_A+w_BO_B$, $w_X=e^{\mathrm{lse}_X-\mathrm{lse}}$."
)


def _sym_state(name, dim=2):
    m = sp.Symbol(f"m_{name}", real=True)
    l = sp.Symbol(f"l_{name}", positive=True)
    acc = [sp.Symbol(f"a_{name}{i}", real=True) for i in range(dim)]
    return State(m, l, acc)


def _fold(merge, states, dim, ops):
    out = spec.identity(dim, ops)
    for st in states:
        out = merge(out, st, ops)
    return out


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


@timed
def prove(merge=spec.merge, *, stop_on_failure=False) -> Proof:
    """Prove theorem 2 for ``merge`` (a wrong operator must make this FAIL)."""
    p = Proof("merge_algebra", "Merge algebra: monoid and homomorphism (theorem 2)", STATEMENT)
    A, B, C = _sym_state("A"), _sym_state("B"), _sym_state("C")
    idn = spec.identity(2, SYMPY)

    def done(ok):
        return stop_on_failure and not ok

    # --- monoid laws, Max symbolic
    ok = p.check("associativity (a+b)+c = a+(b+c), Max left symbolic",
                 sym_states_equal(merge(merge(A, B, SYMPY), C, SYMPY), merge(A, merge(B, C, SYMPY), SYMPY)))
    ok &= p.check("commutativity a+b = b+a", sym_states_equal(merge(A, B, SYMPY), merge(B, A, SYMPY)))
    ok &= p.check("left identity (-oo, 0, 0) + a = a", sym_states_equal(merge(idn, A, SYMPY), A))
    ok &= p.check("right identity a + (-oo, 0, 0) = a", sym_states_equal(merge(A, idn, SYMPY), A))
    e2 = merge(idn, idn, SYMPY)
    ok &= p.check("identity + identity = identity, with shift 0 (no -oo - (-oo))",
                  e2.m == -sp.oo and e2.l == 0 and all(x == 0 for x in e2.acc))
    p.step("With $m=\\max(m_a,m_b)$ the merged state is "
           "$(m,\\ e^{m_a-m}\\ell_a+e^{m_b-m}\\ell_b,\\ e^{m_a-m}\\mathrm{acc}_a+e^{m_b-m}\\mathrm{acc}_b)$; "
           "products of exponentials combine ($e^{x}e^{y}=e^{x+y}$) so both sides of associativity reduce "
           "to $\\sum_i e^{m_i-\\max(m_A,m_B,m_C)}(\\ell_i,\\mathrm{acc}_i)$; SymPy's Max is associative and "
           "commutative, so no case split is needed.",
           r"(A\oplus B)\oplus C = \Big(M,\ \sum_{i} e^{m_i-M}\ell_i,\ \sum_i e^{m_i-M}\mathrm{acc}_i\Big),\ M=\max(m_A,m_B,m_C)")
    if done(ok):
        return p
    # --- by cases on the ordering of the maxima (Max resolved by positive increments)
    d1, d2 = sp.symbols("d1 d2", positive=True)
    base = sp.Symbol("mu", real=True)
    cases_ok = True
    for perm in itertools.permutations(range(3)):
        vals = {}
        vals[perm[0]] = base
        vals[perm[1]] = base + d1
        vals[perm[2]] = base + d1 + d2
        sts = [State(vals[i], st.l, st.acc) for i, st in enumerate((A, B, C))]
        lhs = merge(merge(sts[0], sts[1], SYMPY), sts[2], SYMPY)
        rhs = merge(sts[0], merge(sts[1], sts[2], SYMPY), SYMPY)
        cases_ok &= sym_states_equal(lhs, rhs)
        cases_ok &= sym_states_equal(merge(sts[0], sts[1], SYMPY), merge(sts[1], sts[0], SYMPY))
        cases_ok &= not any(isinstance(x, sp.Max) for x in sp.preorder_traversal(lhs.l))
    ok &= p.check("associativity and commutativity by cases: all 6 orderings of the three maxima "
                  "(Max resolved)", cases_ok)
    if done(ok):
        return p
    # --- homomorphism, symbolic lengths
    j = sp.Symbol("j", integer=True)
    a, b = sp.symbols("a b", integer=True, positive=True)
    s, v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    mx, my = sp.symbols("m_x m_y", real=True)  # the block maxima (any shift works, see below)

    def state_of(lo, hi, mshift):
        return State(mshift, sp.Sum(sp.exp(s[j] - mshift), (j, lo, hi)),
                     [sp.Sum(sp.exp(s[j] - mshift) * v[j], (j, lo, hi))])

    sx, sy = state_of(1, a, mx), state_of(a + 1, a + b, my)
    mg = merge(sx, sy, SYMPY)
    sxy = state_of(1, a + b, sp.Max(mx, my))
    hom = sp.simplify(mg.m - sxy.m) == 0 and sums_equal(mg.l, sxy.l) and sums_equal(mg.acc[0], sxy.acc[0])
    ok &= p.check("homomorphism state(x ++ y) = state(x) + state(y), blocks of symbolic length a, b", hom)
    p.step("Homomorphism: push $e^{m_x-m}$ into the sum over $x$ and $e^{m_y-m}$ into the sum over $y$ "
           "(linearity), then join the adjacent ranges:",
           r"e^{m_x-m}\sum_{j=1}^{a}e^{s_j-m_x}+e^{m_y-m}\sum_{j=a+1}^{a+b}e^{s_j-m_y}=\sum_{j=1}^{a+b}e^{s_j-m}")
    # shift invariance: any c (the max is only needed to avoid overflow)
    c = sp.Symbol("c", real=True)
    st_c = state_of(1, a, c)
    st_m = state_of(1, a, mx)
    ok &= p.check("any shift c gives the same o = acc/l and lse = c + log l",
                  sums_equal(st_c.acc[0] * st_m.l, st_m.acc[0] * st_c.l)
                  and sums_equal(sp.exp(c) * st_c.l, sp.exp(mx) * st_m.l))
    p.step("Shift invariance: $e^{c}\\sum e^{s_j-c}=\\sum e^{s_j}$ for every $c$, so $o=\\mathrm{acc}/\\ell$ "
           "and $\\mathrm{lse}=c+\\log\\ell$ do not depend on $c$; the maximum is the choice that avoids "
           "overflow, and an upper bound works equally.")
    if done(ok):
        return p
    # --- concrete blocks through spec.block_state, with masked keys and an empty block
    rng = random.Random(2)
    conc_ok, num_ok = True, True
    for sizes, masked in (((1, 1), ()), ((2, 1), ()), ((1, 3), (1,)), ((2, 2), (0, 3)), ((2, 2), (0, 1))):
        n = sum(sizes)
        xs = list(sp.symbols(f"x1:{n + 1}", real=True))
        ys = [[sp.Symbol(f"y{i}", real=True)] for i in range(n)]
        for i in masked:
            xs[i] = -sp.oo
        st1 = spec.block_state(xs[:sizes[0]], ys[:sizes[0]], 1, SYMPY)
        st2 = spec.block_state(xs[sizes[0]:], ys[sizes[0]:], 1, SYMPY)
        whole = spec.block_state(xs, ys, 1, SYMPY)
        conc_ok &= sym_states_equal(merge(st1, st2, SYMPY), whole)
        num_ok &= _numeric_hom(merge, sizes, masked, rng)
    ok &= p.check("spec.block_state: state(x ++ y) = state(x) + state(y) for blocks 1+1, 2+1, 1+3 "
                  "(masked key), 2+2 (masked keys), 2+2 with an all-masked block", conc_ok)
    ok &= p.check("... mpmath spot checks of the same (random logits in [-60, 60])", num_ok, kind="numeric")
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
                  "(the symbolic-length homomorphism above)", hom)
    blocks = [(0, 1), (1, 3), (3, 4), (4, 5)]
    leaves = [spec.block_state(xs[a_:b_], ys[a_:b_], 1, SYMPY) for a_, b_ in blocks]
    whole = spec.block_state(xs, ys, 1, SYMPY)
    trees = list(_trees(4))
    tree_ok = all(sym_states_equal(_eval_tree(t, leaves, merge, SYMPY), whole) for t in trees)
    perm_ok = True
    for perm in itertools.permutations(range(3)):
        lv = [leaves[i] for i in perm]
        for t in _trees(3):
            perm_ok &= sym_states_equal(_eval_tree(t, lv, merge, SYMPY), spec.block_state(
                [x for i in perm for x in xs[blocks[i][0]:blocks[i][1]]],
                [y for i in perm for y in ys[blocks[i][0]:blocks[i][1]]], 1, SYMPY))
    ok &= p.check(f"all {len(trees)} merge trees over 4 irregular blocks equal state(all keys)", tree_ok)
    ok &= p.check("all 6 orders x 2 trees of 3 blocks equal state of the permuted keys (split-KV in any order)",
                  perm_ok)
    p.step("Induction over the merge tree $T$ on consecutive blocks $X_1..X_n$: a leaf is "
           "$\\mathrm{state}(X_i)$; if $T=T_1\\oplus T_2$ with $T_1$ over $X_1..X_k$ and $T_2$ over "
           "$X_{k+1}..X_n$, then by hypothesis and the homomorphism "
           "$\\mathrm{eval}(T)=\\mathrm{state}(X_1\\|..\\|X_k)\\oplus\\mathrm{state}(X_{k+1}\\|..\\|X_n)="
           "\\mathrm{state}(X_1\\|..\\|X_n)$. Any order: commutativity and associativity let any tree over "
           "any permutation of the blocks be rearranged into an in-order tree, and state() of a permuted "
           "key set is the same (finite sums commute). finalize then gives the softmax-weighted sum.")
    # --- LSE merge
    lA, lB = sp.symbols("lse_A lse_B", real=True)
    OA, OB = sp.symbols("O_A O_B", real=True)
    lse = sp.log(sp.exp(lA) + sp.exp(lB))
    wA, wB = sp.exp(lA - lse), sp.exp(lB - lse)
    ren = merge(spec.partial_state([OA], lA, SYMPY), spec.partial_state([OB], lB, SYMPY), SYMPY)
    o_m, lse_m = spec.finalize(ren, SYMPY)
    ok &= p.check("LSE merge realised by the operator: finalize((lse_A,1,O_A) + (lse_B,1,O_B)) = "
                  "(w_A O_A + w_B O_B, logaddexp(lse_A, lse_B))",
                  is_zero(o_m[0] - (wA * OA + wB * OB)) and is_zero(sp.exp(lse_m) - sp.exp(lse)))
    lseA = sp.log(sp.Sum(sp.exp(s[j]), (j, 1, a)))
    lseB = sp.log(sp.Sum(sp.exp(s[j]), (j, a + 1, a + b)))
    lseAB = sp.log(sp.Sum(sp.exp(s[j]), (j, 1, a + b)))
    OA_ = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, a)) / sp.exp(lseA)
    OB_ = sp.Sum(sp.exp(s[j]) * v[j], (j, a + 1, a + b)) / sp.exp(lseB)
    OAB = sp.Sum(sp.exp(s[j]) * v[j], (j, 1, a + b)) / sp.exp(lseAB)
    ok &= p.check("lse(A u B) = logaddexp(lse_A, lse_B) for blocks of symbolic length",
                  sums_equal(sp.exp(lseAB), sp.exp(lseA) + sp.exp(lseB)))
    ok &= p.check("O = w_A O_A + w_B O_B, w_X = exp(lse_X - lse), symbolic lengths",
                  sums_equal(OAB * sp.exp(lseAB),
                             (sp.exp(lseA - lseAB) * OA_ + sp.exp(lseB - lseAB) * OB_) * sp.exp(lseAB)))
    p.step("LSE merge (split-KV combine): the renormalised state $(\\mathrm{lse}_X,1,O_X)$ represents the "
           "same keys (shift invariance), so merging renormalised states is a merge of states.",
           r"\mathrm{lse}=\log(e^{\mathrm{lse}_A}+e^{\mathrm{lse}_B}),\quad O=e^{\mathrm{lse}_A-\mathrm{lse}}O_A+e^{\mathrm{lse}_B-\mathrm{lse}}O_B")
    num = _numeric_laws(merge, rng)
    p.check("monoid laws, tree/order independence and LSE merge at random mpmath states (50 digits)",
            num[0], kind="numeric", detail=num[1])
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
            st = leaves[0]
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
    return worst < mpmath.mpf(10) ** -35, f"max deviation {mpmath.nstr(worst, 3)}"


main = proof_main(prove)


if __name__ == "__main__":
    sys.exit(main())

"""Triton device functions shared by the forward, backward and decode kernels.

Mask ranges follow spec.Mask.key_range (spec/README.md, "Mask"), replicated as integer
arithmetic; the online-softmax step follows spec.online.merge, whose correctness for any tiling
is proofs/merge_algebra.py, theorem 2 (merge is a commutative monoid and a homomorphism from
key-block concatenation).
"""
import triton
import triton.language as tl

__all__ = [
    "LOG2E",
    "LN2",
    "key_range",
    "query_range",
    "span",
    "masked_block",
    "mma",
    "tanh",
    "logits",
    "masked_mma",
    "signed_keep",
    "masked_mma_acc",
    "load2d",
    "head_base",
    "round_to",
    "acc_add",
    "mma_acc",
    "finalize",
    "nonfinite",
    "rerun_flag",
    "skip_program",
]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Larger than any length the launchers accept (< 2**30); the empty-set sentinel of span's min.
_BIG = tl.constexpr(2**30)
# Compiled kernels may read only constexpr globals.
_TWO_LOG2E = tl.constexpr(2.0 * LOG2E)


@triton.jit
def key_range(offs_m, LQ, LK, DIAG, LEFT, RIGHT, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Half-open allowed key range [lo, hi) of each query row: spec.Mask.key_range, integers."""
    i = offs_m
    if HAS_LEFT:
        lo = tl.minimum(tl.maximum(i + DIAG - LEFT, 0), LK)
    else:
        lo = tl.zeros_like(i)
    if HAS_RIGHT:
        hi = tl.maximum(tl.minimum(i + DIAG + RIGHT + 1, LK), 0)
    else:
        hi = tl.zeros_like(i) + LK
    return lo, hi


@triton.jit
def query_range(offs_n, LQ, LK, DIAG, LEFT, RIGHT, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr):
    """Half-open range [lo, hi) of query rows that may attend each key: key_range inverted.

    lo_i <= j < hi_i  <=>  j - DIAG - RIGHT <= i < j - DIAG + LEFT + 1   (for 0 <= j < LK).
    """
    j = offs_n
    if HAS_RIGHT:
        lo = tl.minimum(tl.maximum(j - DIAG - RIGHT, 0), LQ)
    else:
        lo = tl.zeros_like(j)
    if HAS_LEFT:
        hi = tl.maximum(tl.minimum(j - DIAG + LEFT + 1, LQ), 0)
    else:
        hi = tl.zeros_like(j) + LQ
    return lo, hi


@triton.jit
def span(lo, hi, valid, BLOCK: tl.constexpr, NO_FULL: tl.constexpr):
    """Blocks of the other axis that a tile of rows visits: masked ones, then full ones.

    Rows have ranges [lo, hi) (all >= 0); only blocks meeting some non-empty range are visited.
    A block [n, n + BLOCK) is full when every valid row allows all of it: n >= max(lo) and
    n + BLOCK <= min(hi) (hi never exceeds the other axis' length, so full blocks have no
    padding). The full blocks are [fstart, fend); the masked ones are the n_lead blocks from
    start and then those from fend up to max(hi), n_masked in all (see masked_block).
    Operands of // are >= 0 (Triton's integer division truncates).
    """
    nonempty = valid & (lo < hi)
    lo_min = tl.min(tl.where(nonempty, lo, _BIG), axis=0)
    hi_max = tl.max(tl.where(nonempty, hi, 0), axis=0)
    lo_max = tl.max(tl.where(valid, lo, 0), axis=0)
    hi_min = tl.min(tl.where(valid, hi, _BIG), axis=0)
    start = (lo_min // BLOCK) * BLOCK
    end = hi_max
    fstart = tl.maximum(((lo_max + BLOCK - 1) // BLOCK) * BLOCK, start)
    if NO_FULL:
        fend = fstart
    else:
        fend = tl.maximum((hi_min // BLOCK) * BLOCK, fstart)
    n_lead = (tl.maximum(tl.minimum(fstart, end) - start, 0) + BLOCK - 1) // BLOCK
    n_tail = (tl.maximum(end - fend, 0) + BLOCK - 1) // BLOCK
    return start, n_lead, n_lead + n_tail, fstart, fend


@triton.jit
def masked_block(t, start, n_lead, fend, BLOCK: tl.constexpr):
    """Start of the t-th masked block: the leading ones from start, then the trailing ones from
    fend (one loop for both keeps one copy of the masked tile code)."""
    return start + t * BLOCK + tl.where(t >= n_lead, fend - start - n_lead * BLOCK, 0)


@triton.jit
def mma(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation. UPCAST: bf16 -> fp32 first (the interpreter multiplies raw
    bf16 bit patterns, triton#11584); exact, so the same numbers as the GPU's bf16 MMA."""
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b, input_precision=PRECISION)
    return out


@triton.jit
def tanh(x):
    """tanh in fp32 from exp2 and a Taylor polynomial; the same code compiled and interpreted
    (libdevice is not available to the interpreter). Error a few fp32 ulps."""
    a = tl.abs(x)
    # |x| >= 0.4: 1 - 2/(e^{2a}+1) has no cancellation (result >= 0.379); e^{2a} -> inf gives 1.
    big = 1.0 - 2.0 / (tl.exp2(a * _TWO_LOG2E) + 1.0)
    # |x| < 0.4: Taylor to x^15; the next term is < 2e-9 relative there.
    z = a * a
    poly = -0.0014558343870513183 * z + 0.003592128036572481
    poly = poly * z - 0.008863235529902197
    poly = poly * z + 0.021869488536155203
    poly = poly * z - 0.05396825396825397
    poly = poly * z + 0.13333333333333333
    poly = poly * z - 0.3333333333333333
    small = a + a * z * poly
    t = tl.where(a < 0.4, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def logits(s, QK_SCALE, OUT_SCALE, SOFTCAP: tl.constexpr):
    """Raw q.k -> logits in log2 units, and the tanh (for the backward; 0 without softcap).

    Without softcap: s * (scale * log2 e), one multiply. With softcap c the cap acts on natural
    logits, so log2 e is folded in after the tanh: (c log2 e) * tanh(s * scale / c).
    """
    if SOFTCAP:
        t = tanh(s * QK_SCALE)
        out = t * OUT_SCALE
    else:
        t = s * 0.0
        out = s * QK_SCALE
    return out, t


@triton.jit
def masked_mma(acc, a, b, keep, PRECISION: tl.constexpr, UPCAST: tl.constexpr, EXACT: tl.constexpr):
    """acc + sum_k a[m, k] b[k, n] over the pairs with keep[m, k] only, with IEEE non-finite
    results; the sum is accumulated inside the MMA. keep=None: the kept set is encoded in a
    (signed_keep).

    A plain dot would add 0 * NaN = NaN from a dropped pair (a = 0 there). Non-finite b entries
    are zeroed for the main product; if the tile has any, indicator products (exact small
    counts) re-create what IEEE gives over the kept pairs: NaN from a NaN, from 0 * inf or from
    +inf + -inf, else +-inf with the sign of a * b, added to acc. spec/README.md, "NaN and inf
    policy".

    EXACT=False (the fast pass, see ``rerun_flag``): the plain dot. It is the exact result when
    b is finite; otherwise every output entry that meets a non-finite b is itself non-finite, so
    the program's output is non-finite and ``rerun_flag`` sends it to the exact pass. The
    re-creation costs registers (spills in every hot loop, benchmarks/results/h100.md) and is
    needed only for non-finite inputs. Both passes issue the same MMA with acc as accumulator,
    so on finite data they agree bitwise (a garbage-free tile must not depend on the pass).
    """
    if not EXACT:
        out, _c = mma_acc(acc, 0.0, a, b, PRECISION, UPCAST, False)
        return out
    if UPCAST:  # the interpreter also compares bf16 as raw bits; fp32 is exact
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if keep is None:  # signed_keep's encoding, read where a already is
        keep = (a != 0) | _negative_zero(a)
    fin = (b == b) & (tl.abs(b) != float("inf"))
    out, _c = mma_acc(acc, 0.0, a, tl.where(fin, b, 0.0), PRECISION, UPCAST, False)
    n_bad = tl.sum(tl.sum(tl.where(fin, 0, 1), axis=1), axis=0)
    if n_bad > 0:
        # sa = sign(a) on kept pairs, sb = sign(b) on infinite b: dot(sa, sb) = pos - neg and
        # dot(|sa|, |sb|) = pos + neg count the +inf and -inf products (exact small integers).
        zero = 0.0
        sa = tl.where(keep & (a > 0), 1.0, tl.where(keep & (a < 0), -1.0, zero)).to(tl.float16)
        sz = tl.where(keep & (a == 0), 1.0, zero).to(tl.float16)
        kk = tl.where(keep, 1.0, zero).to(tl.float16)
        sb = tl.where(b == float("inf"), 1.0, tl.where(b == -float("inf"), -1.0, zero)).to(tl.float16)
        bnan = tl.where(b != b, 1.0, zero).to(tl.float16)
        diff = tl.dot(sa, sb)
        both = tl.dot(tl.abs(sa), tl.abs(sb))
        # NaN from a NaN b, or from 0 * inf
        nan = (tl.dot(kk, bnan) + tl.dot(sz, tl.abs(sb))) > 0
        pos = both + diff > 0
        neg = both - diff > 0
        fix = tl.where(nan | (pos & neg), float("nan"), tl.where(pos, float("inf"), -float("inf")))
        # IEEE with the accumulator too: -inf + inf and NaN + inf are NaN
        out = tl.where(nan | pos | neg, acc + fix, out)
    return out


@triton.jit
def signed_keep(a, keep):
    """a for masked_mma(keep=None): the dropped pairs' entries +0.0, the kept pairs' zeros -0.0, so
    that the kept set travels inside a (a 16- or 32-bit tile) instead of as a boolean tile, which the
    sm_90 build cannot move into a dot operand's layout when the mask depends on a loaded bias
    (shared memory holds no 1-bit elements; docs/findings.md F10). -0.0 and +0.0 weights give the
    same products to the last bit but their zero signs, and the accumulator starts at +0.0."""
    return tl.where(keep, tl.where(a == 0, -0.0, a), 0.0)


@triton.jit
def _negative_zero(x):
    if x.dtype.primitive_bitwidth == 16:
        neg = x.to(tl.int16, bitcast=True) == -32768
    else:
        neg = x.to(tl.int32, bitcast=True) == -2147483648
    return neg


@triton.jit
def masked_mma_acc(acc, comp, a, b, keep, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                   KAHAN: tl.constexpr, EXACT: tl.constexpr):
    """mma_acc over the kept pairs only (masked_mma); KAHAN (fp32) adds the product compensated."""
    if KAHAN:
        acc, comp = acc_add(acc, comp, masked_mma(tl.zeros_like(acc), a, b, keep, PRECISION, UPCAST, EXACT), True)
    else:
        acc = masked_mma(acc, a, b, keep, PRECISION, UPCAST, EXACT)
    return acc, comp


@triton.jit
def load2d(ptrs, r, R, c, C, CHECK_R: tl.constexpr, CHECK_C: tl.constexpr):
    """Load a [len(r), len(c)] tile; rows >= R and columns >= C are never read (they give 0)."""
    if CHECK_R:
        if CHECK_C:
            x = tl.load(ptrs, mask=(r[:, None] < R) & (c[None, :] < C), other=0.0)
        else:
            x = tl.load(ptrs, mask=r[:, None] < R, other=0.0)
    else:
        if CHECK_C:
            x = tl.load(ptrs, mask=c[None, :] < C, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def head_base(X, b64, h, sxb, sxh, TMA: tl.constexpr):
    """Where X's (batch, head) slice starts: a pointer, or X itself when it is a tensor
    descriptor (TMA), whose loads take batch and head as coordinates."""
    if TMA:
        out = X
    else:
        out = X + b64 * sxb + h.to(tl.int64) * sxh
    return out


@triton.jit
def round_to(x, DTYPE: tl.constexpr, FIX_BF16: tl.constexpr):
    """x.to(DTYPE) rounding to nearest even. FIX_BF16 (interpreter only): the interpreter's
    fp32 -> bf16 cast truncates (docs/findings.md F1), so round the bit pattern here first;
    the compiled path's cvt.rn.bf16.f32 already does this."""
    if FIX_BF16 and DTYPE == tl.bfloat16:
        xf = x.to(tl.float32)
        bits = xf.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        out = tl.where(xf != xf, xf, bits.to(tl.float32, bitcast=True)).to(DTYPE)
    else:
        out = x.to(DTYPE)
    return out


@triton.jit
def acc_add(acc, comp, x, KAHAN: tl.constexpr):
    """acc + x. KAHAN (fp32 inputs): compensated summation, so a gradient summed over thousands
    of blocks (GQA group x query blocks, fused into one FMA chain) keeps an O(u) error instead of
    O(chain * u). A non-finite sum resets the compensation, keeping IEEE inf/NaN results."""
    if KAHAN:
        y = x - comp
        t = acc + y
        comp = tl.where(tl.abs(t) < float("inf"), (t - acc) - y, 0.0)
        acc = t
    else:
        acc = acc + x
    return acc, comp


@triton.jit
def mma_acc(acc, comp, a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr, KAHAN: tl.constexpr):
    """acc + a @ b. fp16/bf16: accumulated inside the MMA (no product tile, no extra add; any
    accumulation order is covered by proofs/fp_error.py, theorem 6). KAHAN (fp32): acc_add."""
    if KAHAN:
        acc, comp = acc_add(acc, comp, mma(a, b, PRECISION, UPCAST), True)
    elif UPCAST:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc, comp


@triton.jit
def finalize(acc, l_i, m_i):
    """spec.online.finalize in log2 units: O = acc / l, LSE2 = m + log2 l. An empty row (l = 0)
    gives O = 0 and LSE = -inf, never 0/0."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    o = tl.where(empty[:, None], 0.0, acc / l_safe[:, None])
    lse2 = tl.where(empty, -float("inf"), m_i + tl.log2(l_safe))
    return o, lse2


@triton.jit
def nonfinite(x, valid_rows):
    """1 if x has a NaN or inf in a valid row, else 0 (the fast pass' rerun flag of one tile)."""
    bad = (x != x) | (tl.abs(x) == float("inf"))
    return tl.max(tl.max(tl.where(bad & valid_rows[:, None], 1, 0), axis=1), axis=0)


@triton.jit
def _program_index():
    """This program's index in the flattened 3-D grid (one rerun flag per program)."""
    return (tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(0) + tl.program_id(0)


@triton.jit
def rerun_flag(RERUN, flag):
    """Fast pass: record whether this program's output (``nonfinite`` of its tiles) has a NaN or
    inf; the exact pass then recomputes only those programs (masked_mma's EXACT).

    Sound because non-finite is absorbing through the rest of the kernel: rescaling
    (inf * 0 = NaN), MMA accumulation, division by l > 0 and the final scale keep it, and the
    only place a row is overwritten is finalize's empty row (O = 0), which is the exact answer
    there. So a fast-pass tile that differs from the exact one is non-finite and gets rerun;
    a legitimately non-finite one is rerun too and comes out the same."""
    tl.store(RERUN + _program_index(), flag)


@triton.jit
def skip_program(RERUN, EXACT: tl.constexpr):
    """Exact pass: True for the programs the fast pass did not flag (they return at once)."""
    if EXACT:
        skip = tl.load(RERUN + _program_index()) == 0
    else:
        skip = False
    return skip

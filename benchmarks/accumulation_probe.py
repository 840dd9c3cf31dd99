"""How does ``tl.dot`` accumulate on this GPU? A crafted-operand probe (issue 14, item 7).

Each experiment computes ``d = c + sum_k a_k b_k`` for one output element with ``tl.dot(a, b, c)``
(the kernels' P@V form) or ``c + tl.dot(a, b)`` (the kernels' QK^T form, c = 0), at the tile
shapes the kernels use (BLOCK_M x K times K x BLOCK_N, 4 warps), with every product exact in the
input dtype and the exact result computed in rationals. The operands follow Fasi, Higham,
Mikaitis and Pranesh (2021), "Numerical behavior of NVIDIA tensor cores": sub-ulp products
beside a unit accumulator reveal the final rounding (nearest or toward zero), the number of
extra alignment bits, and the block size (how many products are summed before each rounding).

The observed results are matched against every candidate of the block-FMA model of
``flashproof.proofs`` (:func:`block_fma`): blocks of ``k`` consecutive products, all terms of a
block (and the running accumulator) aligned to the largest exponent keeping ``24 + x`` bits by
truncation, summed exactly, then rounded to fp32 by ``rounding``; "sequential RN" is IEEE fp32
fused multiply-adds in order. The script prints the experiments and the candidates consistent
with all of them, and writes ``accumulation.json`` / ``accumulation.md`` under ``--out``.

    python3 benchmarks/accumulation_probe.py --out DIR        # on the GPU
    TRITON_INTERPRET=1 python3 benchmarks/accumulation_probe.py --out DIR   # the interpreter (numpy)
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from fractions import Fraction

__all__ = ["block_fma", "experiments", "main"]


# ----------------------------------------------------------------------------- the model
def _exponent(x: Fraction) -> int:
    """floor(log2 |x|) of a non-zero rational, exactly."""
    n, d = abs(x.numerator), x.denominator
    e = n.bit_length() - d.bit_length()
    if Fraction(n, d) < Fraction(2) ** e:
        e -= 1
    return e


def _to_multiple(x: Fraction, q: Fraction, mode: str) -> Fraction:
    """x rounded to a multiple of q: 'rz' toward zero, 'rn' to nearest even."""
    t = x / q
    if mode == "rz":
        n = math.trunc(t)
    else:
        f = math.floor(t)
        r = t - f
        n = f + 1 if r > Fraction(1, 2) or (r == Fraction(1, 2) and f % 2) else f
    return n * q


def _round_fp32(x: Fraction, mode: str) -> Fraction:
    if x == 0:
        return x
    return _to_multiple(x, Fraction(2) ** (_exponent(x) - 23), mode)


def block_fma(c: Fraction, products, *, k: int, extra_bits: int | None, rounding: str) -> Fraction:
    """The block-FMA model: ``extra_bits=None`` means exact alignment (no truncation)."""
    acc = c
    for s in range(0, len(products), k):
        terms = [acc] + list(products[s:s + k])
        nz = [t for t in terms if t != 0]
        if not nz:
            acc = Fraction(0)
            continue
        if extra_bits is not None:
            q = Fraction(2) ** (max(_exponent(t) for t in nz) - 23 - extra_bits)
            terms = [_to_multiple(t, q, "rz") for t in terms]
        acc = _round_fp32(sum(terms, Fraction(0)), rounding)
    return acc


def candidates(K: int):
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= K]
    for k, x, r in itertools.product(ks, [0, 1, 2, 3, 4, 5, 6, None], ["rn", "rz"]):
        if k == 1 and x is not None:
            continue  # one product per block: alignment truncation and a sequential FMA coincide below
        yield {"k": k, "extra_bits": x, "rounding": r}


# ----------------------------------------------------------------------------- experiments
def experiments(K: int):
    """(name, c, {position: (a, b)}); every a, b is a power of two times 1 or 3 (exact in bf16)."""
    F = Fraction
    u = F(2) ** -23  # ulp of 1 in fp32
    out = []
    for c in (F(1), F(-1)):
        s = 1 if c > 0 else -1
        out.append((f"c={c}: one product of 0.75 ulp", c, {0: (s * F(3, 2 ** 13), F(1, 2 ** 12))}))
        out.append((f"c={c}: one product of 0.5 ulp (tie)", c, {0: (s * F(1, 2 ** 12), F(1, 2 ** 12))}))
        out.append((f"c={c}: one product of 0.25 ulp", c, {0: (s * F(1, 2 ** 13), F(1, 2 ** 12))}))
    for sh in range(1, 7):  # 2^sh products of ulp/2^sh each: exactly one ulp in total
        n = 2 ** sh
        if n > K:
            break
        a = F(1, 2 ** (12 + sh))  # a * b = 2^-(24 + sh) ... scaled to ulp / 2^sh below
        b = F(2, 2 ** 12)
        assert a * b == u / 2 ** sh
        out.append((f"c=1: {n} products of ulp/2^{sh} at 0..{n - 1}", F(1), {i: (a, b) for i in range(n)}))
    for j in range(1, K):  # two half-ulp products at positions 0 and j: same block or not
        out.append((f"c=1: two products of ulp/2 at 0 and {j}", F(1),
                    {0: (F(1, 2 ** 12), F(1, 2 ** 12)), j: (F(1, 2 ** 12), F(1, 2 ** 12))}))
    # c = 0: a unit product dominates the alignment instead of the accumulator
    out.append(("c=0: 1 at 0 and 3/4 ulp at 1", F(0), {0: (F(1), F(1)), 1: (F(3, 2 ** 13), F(1, 2 ** 12))}))
    out.append(("c=0: 1 at 0, then 3/4 ulp at the last position", F(0),
                {0: (F(1), F(1)), K - 1: (F(3, 2 ** 13), F(1, 2 ** 12))}))
    # cancellation: 1 - 1 + tiny must keep the tiny product only if it was not truncated away
    out.append(("c=1: -1 at 0 and 2^-30 at 1", F(1),
                {0: (F(-1), F(1)), 1: (F(1, 2 ** 15), F(1, 2 ** 15))}))
    return out


# ----------------------------------------------------------------------------- the GPU side
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def probe(A, B, C, D, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr, ACC_IN_DOT: tl.constexpr,
              PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        rm = tl.arange(0, M)
        rn = tl.arange(0, N)
        rk = tl.arange(0, K)
        # [M, K] and [K, N]
        a = tl.load(A + rm[:, None] * K + rk[None, :])
        b = tl.load(B + rk[:, None] * N + rn[None, :])
        # [M, N]
        c = tl.load(C + rm[:, None] * N + rn[None, :])
        if UPCAST:  # the interpreter multiplies raw bf16 bits (triton#11584)
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if ACC_IN_DOT:
            d = tl.dot(a, b, c, input_precision=PRECISION)
        else:
            d = c + tl.dot(a, b, input_precision=PRECISION)
        tl.store(D + rm[:, None] * N + rn[None, :], d)

    return probe


def run_device(dtype_name: str, precision: str, acc_in_dot: bool, K: int, M: int = 64, N: int = 64):
    import torch

    interp = os.environ.get("TRITON_INTERPRET") == "1"
    dev = "cpu" if interp else "cuda"
    dtype = getattr(torch, dtype_name)
    probe = _kernel()
    rows = []
    for name, c, terms in experiments(K):
        a = torch.zeros(M, K, dtype=torch.float64)
        b = torch.zeros(K, N, dtype=torch.float64)
        for pos, (x, y) in terms.items():
            a[0, pos] = float(x)
            b[pos, 0] = float(y)
        cc = torch.zeros(M, N, dtype=torch.float32)
        cc[0, 0] = float(c)
        if not acc_in_dot and c != 0:
            pass  # the QK^T form adds c after the dot: still informative for the final add
        A, B = a.to(dtype).to(dev), b.to(dtype).to(dev)
        assert torch.equal(A.double().cpu(), a) and torch.equal(B.double().cpu(), b), "operands not exact"
        D = torch.empty(M, N, dtype=torch.float32, device=dev)
        probe[(1,)](A, B, cc.to(dev), D, M, N, K, acc_in_dot, precision,
                    interp and dtype == torch.bfloat16, num_warps=4)
        got = Fraction(float(D[0, 0].item()))
        products = [Fraction(0)] * K
        for pos, (x, y) in terms.items():
            products[pos] = x * y
        rows.append({"experiment": name, "c": c, "products": products, "got": got,
                     "exact": c + sum(products, Fraction(0))})
    asm = ""
    try:  # which MMA instruction the compiled dot became (triton keeps compiled kernels per device)
        caches = getattr(probe, "device_caches", {}) or {}
        for entry in caches.values():
            for kern in (entry[0] if isinstance(entry, tuple) else entry).values():
                ptx = kern.asm.get("ptx", "")
                asm = ",".join(sorted({w.strip().split()[0] for w in ptx.split("\n")
                                       if w.strip().startswith(("wgmma.mma_async", "mma.sync", "fma.rn"))}))
    except Exception as exc:  # the instruction name is informative only
        asm = f"unavailable ({type(exc).__name__})"
    return rows, asm


def matching(rows, K):
    ok = []
    for cand in [{"k": 1, "extra_bits": None, "rounding": "rn", "name": "sequential RN"}] + list(candidates(K)):
        good = True
        for r in rows:
            want = block_fma(r["c"], r["products"], k=cand["k"], extra_bits=cand["extra_bits"], rounding=cand["rounding"])
            if want != r["got"]:
                good = False
                break
        if good:
            ok.append(cand)
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--K", type=int, nargs="*", default=[64, 128])
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch
    import triton

    configs = [("float16", "ieee"), ("bfloat16", "ieee"), ("float32", "ieee"), ("float32", "tf32")]
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (interpreter)",
              "torch": torch.__version__, "triton": triton.__version__, "results": []}
    lines = [f"# tl.dot accumulation probe: {report['device']}", "",
             f"torch {report['torch']}, triton {report['triton']}; command: "
             f"`python3 benchmarks/accumulation_probe.py --out DIR`", "",
             "| input | precision | form | K | instruction | consistent models (k = block, x = extra bits) |",
             "|---|---|---|---|---|---|"]
    for (dt, prec), acc_in_dot, K in itertools.product(configs, (True, False), args.K):
        try:
            rows, asm = run_device(dt, prec, acc_in_dot, K)
        except Exception as exc:  # record and go on: one failing config must not hide the others
            report["results"].append({"dtype": dt, "precision": prec, "acc_in_dot": acc_in_dot, "K": K,
                                      "error": f"{type(exc).__name__}: {exc}"})
            lines.append(f"| {dt} | {prec} | {'dot(a,b,acc)' if acc_in_dot else 'acc+dot(a,b)'} | {K} | | ERROR {exc} |")
            continue
        models = matching(rows, K)
        names = [m.get("name") or f"k={m['k']} x={m['extra_bits']} {m['rounding']}" for m in models]
        report["results"].append({
            "dtype": dt, "precision": prec, "acc_in_dot": acc_in_dot, "K": K, "instruction": asm,
            "models": names,
            "rows": [{"experiment": r["experiment"], "got": float(r["got"]), "exact": float(r["exact"]),
                      "got_minus_exact_ulp": float((r["got"] - r["exact"]) / Fraction(2) ** -23)} for r in rows]})
        lines.append(f"| {dt} | {prec} | {'dot(a,b,acc)' if acc_in_dot else 'acc+dot(a,b)'} | {K} | {asm} | "
                     f"{'; '.join(names[:12]) or 'NONE'}{' ...' if len(names) > 12 else ''} |")
        print(lines[-1], flush=True)
        for r in rows:
            print(f"    {r['experiment']:<48} got-exact = {float((r['got'] - r['exact']) / Fraction(2) ** -23):+.4f} ulp(1)")
    with open(os.path.join(args.out, "accumulation.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "accumulation.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

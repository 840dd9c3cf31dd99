"""How does ``tl.dot`` accumulate on this GPU? A crafted-operand probe (issue 14, item 7).

Each experiment computes ``d = c + sum_k a_k b_k`` for one output element with ``tl.dot(a, b, c)``
(the kernels' P@V form) or ``c + tl.dot(a, b)`` (the kernels' QK^T form), at the tile shapes the
kernels use (BLOCK_M x K times K x BLOCK_N, 4 warps), with every product exact in the input dtype
and the exact result computed in rationals. The experiments, the block-FMA model and the candidate
matching are ``flashproof.proofs.accumulation``'s (``crafted_experiments``, ``simulate_block_fma``,
``matching_models``; Fasi, Higham, Mikaitis and Pranesh 2021): blocks of ``k`` consecutive products,
all terms of a block (and the running accumulator) aligned to the largest exponent keeping ``24 + x``
bits by truncation, summed exactly, then rounded to fp32; "sequential RN" is IEEE fp32 fused
multiply-adds in order. A second, random battery (``probe_battery`` / ``consistent_models``: big
terms beside others just above and below the truncation quanta, cancelling pairs) cross-checks the
block models at K = 16, 32, 64 (``--no-battery`` skips it).

For each configuration the record names the consistent models and the accumulator to declare
(``precision_for(dtype, accumulator=NAME)``, ``accumulation.accumulator_of_label``);
``flashproof.proofs.devices.MEASURED`` holds what was measured, per compute capability.

    python3 benchmarks/accumulation_probe.py --out DIR        # on the GPU
    TRITON_INTERPRET=1 python3 benchmarks/accumulation_probe.py --out DIR --K 16   # the interpreter (numpy)
    python3 benchmarks/accumulation_probe.py --render benchmarks/results/accumulation-h200.json   # JSON -> md table
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from fractions import Fraction

from flashproof.proofs import accumulation as acc

__all__ = ["run_device", "matching", "render", "main"]

_ULP1 = Fraction(2) ** -23  # ulp of 1 in fp32
_HEADER = ["| input | precision | form | K | instruction | consistent models (k = block, x = extra bits) |",
           "|---|---|---|---|---|---|"]


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
    for name, c, terms in acc.crafted_experiments(K):
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
    """The labels of the crafted candidates consistent with every row (proofs.accumulation)."""
    found = acc.matching_models([(r["c"], r["products"], r["got"]) for r in rows], K)
    first = acc.crafted_candidates(K)[0]
    out, seen_first = [], False
    for m in found:
        out.append(acc.model_label(m, first=(m == first and not seen_first)))
        seen_first |= m == first
    return out


def _declare(names, battery=None, ieee=None):
    """The accumulator to declare for a configuration: the most pessimistic named model consistent
    with the crafted experiments and (when run) with the battery at every K
    (proofs.devices.most_pessimistic); failing that "fp32" if every row is within the IEEE any-order
    bound (``ieee`` <= 1: proofs.accumulation.ieee_ratio); else None."""
    from flashproof.proofs.devices import most_pessimistic

    named = []
    for n in names:
        try:
            named.append(acc.accumulator_of_label(n))
        except ValueError:
            pass
    if battery is not None:
        ok = set.intersection(*({_name_or_none(m) for m in b["consistent"]} for b in battery.values())) \
            if battery else set()
        named = [n for n in named if n in ok]
    if named:
        try:
            return most_pessimistic(named)
        except ValueError:
            return None
    return "fp32" if ieee is not None and ieee <= 1 else None


def _name_or_none(model):
    try:
        return acc.accumulator_of_model(tuple(model))
    except ValueError:
        return None


def _form(acc_in_dot):
    return "dot(a,b,acc)" if acc_in_dot else "acc+dot(a,b)"


def _line(res):
    if "error" in res:
        return f"| {res['dtype']} | {res['precision']} | {_form(res['acc_in_dot'])} | {res['K']} | | ERROR {res['error']} |"
    names = res["models"]
    return (f"| {res['dtype']} | {res['precision']} | {_form(res['acc_in_dot'])} | {res['K']} | {res['instruction']} | "
            f"{'; '.join(names[:12]) or 'NONE'}{' ...' if len(names) > 12 else ''} |")


def render(report) -> str:
    """The Markdown table of a probe record (the committed .md's table is this of its .json)."""
    lines = [f"# tl.dot accumulation probe: {report['device']}", "",
             f"torch {report['torch']}, triton {report['triton']}; command: "
             f"`python3 benchmarks/accumulation_probe.py --out DIR`", ""] + _HEADER
    lines += [_line(r) for r in report["results"]]
    return "\n".join(lines) + "\n"


def _battery(dtype, precision, lengths=(16, 32, 64)):
    """The random battery (proofs.accumulation.probe_battery) through the device's tl.dot(a, 1, c):
    {K: {"consistent": [[k, x, final]], "declare": name}} (consistent_models: bit-exact matches)."""
    import numpy as np
    import torch

    interp = os.environ.get("TRITON_INTERPRET") == "1"
    dev = "cpu" if interp else "cuda"
    dt = getattr(torch, dtype)
    probe = _kernel()
    out = {}
    for length in lengths:
        bat = acc.probe_battery(dtype, seed=length, rows=64, length=length, calls=4)
        obs = []
        for c, a in bat:
            m = a.shape[0]
            A = torch.from_numpy(a).to(dt).to(dev).contiguous()
            B = torch.ones(length, 16, dtype=dt, device=dev)
            C = torch.from_numpy(c).float()[:, None].repeat(1, 16).contiguous().to(dev)
            D = torch.empty(m, 16, dtype=torch.float32, device=dev)
            probe[(1,)](A, B, C, D, m, 16, length, True, precision, interp and dt == torch.bfloat16, num_warps=4)
            d = D.cpu().numpy()
            obs.append(np.ascontiguousarray(d[:, 0]))
        ok, name = acc.consistent_models(bat, obs)
        out[str(length)] = {"consistent": [list(x) for x in ok], "declare": name,
                            "ieee_ratio": acc.ieee_ratio(acc.battery_rows(bat, obs))}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for accumulation.json / accumulation.md")
    ap.add_argument("--K", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--dtypes", nargs="*", default=None, help="restrict to these input dtypes")
    ap.add_argument("--no-battery", action="store_true", help="skip the random battery cross-check")
    ap.add_argument("--render", metavar="JSON", help="print the Markdown table of a probe record and exit")
    args = ap.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            sys.stdout.write(render(json.load(f)))
        return 0
    if not args.out:
        ap.error("--out is required (or --render JSON)")
    os.makedirs(args.out, exist_ok=True)
    import torch
    import triton

    configs = [("float16", "ieee"), ("bfloat16", "ieee"), ("float32", "ieee"), ("float32", "tf32")]
    if args.dtypes:
        configs = [c for c in configs if c[0] in args.dtypes]
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (interpreter)",
              "torch": torch.__version__, "triton": triton.__version__, "results": [], "declare": {}}
    if torch.cuda.is_available():
        report["capability"] = list(torch.cuda.get_device_capability())
    for (dt, prec), acc_in_dot, K in itertools.product(configs, (True, False), args.K):
        try:
            rows, asm = run_device(dt, prec, acc_in_dot, K)
        except Exception as exc:  # record and go on: one failing config must not hide the others
            report["results"].append({"dtype": dt, "precision": prec, "acc_in_dot": acc_in_dot, "K": K,
                                      "error": f"{type(exc).__name__}: {exc}"})
            print(_line(report["results"][-1]), flush=True)
            continue
        names = matching(rows, K)
        report["results"].append({
            "dtype": dt, "precision": prec, "acc_in_dot": acc_in_dot, "K": K, "instruction": asm, "models": names,
            "ieee_ratio": acc.ieee_ratio([(r["c"], r["products"], r["got"]) for r in rows]),
            "rows": [{"experiment": r["experiment"], "got": float(r["got"]), "exact": float(r["exact"]),
                      "got_minus_exact_ulp": float((r["got"] - r["exact"]) / _ULP1)} for r in rows]})
        print(_line(report["results"][-1]), flush=True)
        for r in rows:
            print(f"    {r['experiment']:<48} got-exact = {float((r['got'] - r['exact']) / _ULP1):+.4f} ulp(1)")
    for dt, prec in configs:
        key = dt if prec == "ieee" else f"{dt}/{prec}"
        res = [r for r in report["results"] if r["dtype"] == dt and r["precision"] == prec and "error" not in r]
        bat = None
        if not args.no_battery:
            try:
                bat = _battery(dt, prec)
            except Exception as exc:  # recorded; the declaration then rests on the crafted experiments
                report.setdefault("battery", {})[key] = {"error": f"{type(exc).__name__}: {exc}"}
            else:
                report.setdefault("battery", {})[key] = bat
        # a model consistent with every form and K of this configuration (and the battery)
        common = [n for n in (res[0]["models"] if res else []) if all(n in r["models"] for r in res)]
        ieee = max([r["ieee_ratio"] for r in res] + [b["ieee_ratio"] for b in (bat or {}).values()], default=None)
        report["declare"][key] = _declare(common, bat, ieee) if res else None
        print(f"{key}: declare {report['declare'][key]!r} (IEEE any-order ratio {ieee})", flush=True)
    with open(os.path.join(args.out, "accumulation.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "accumulation.md"), "w") as f:
        f.write(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

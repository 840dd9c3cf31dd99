"""Tightness of the theorem-6 bounds: a small fixed-seed numeric experiment for the proof report.

A kernel-like fp32 simulation (flashproof.proofs.kernel_sim: spec's block_state/merge run in
fp32, P rounded to the storage dtype before P@V, output rounded on store, random tilings and
split-KV combines) is compared with an fp64 evaluation (its own error is ~1e-16 relative, far
below every bound here) on random and extreme inputs, for fp16, bf16 and fp32 storage. Reported:
max observed |error| / running bound and / a-priori bound per dtype, with the closest case; any
ratio above 1 is a violation and fails theorem 6. A simulated TF32 kernel (q and k rounded to a
10-bit mantissa before the dot) is measured against the fp32 bound as a negative control.
"""
from __future__ import annotations

import numpy as np

from . import kernel_sim as ks
from .bounds import apriori_forward_bound, apriori_lse_bound, precision_for, running_forward_bound
from .core import Proof

__all__ = ["experiment", "backward_experiment", "CASES", "tf32_round"]

CASES = ("random", "large logits", "one dominant key", "v offset", "near-uniform", "tiny weights",
         "causal", "big v spread", "tiny v")


def tf32_round(x):
    """Round float32 values to TF32 (10 explicit mantissa bits), nearest-even."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0xFFF + ((u >> 13) & 1)) & 0xFFFFE000
    return u.astype(np.uint32).view(np.float32)


def _inputs(rng, case, store, lk, e):
    lq, ev = 4, 8
    q = rng.standard_normal((1, 2, lq, e))
    k = rng.standard_normal((1, 1, lk, e))
    v = rng.standard_normal((1, 1, lk, ev))
    causal = False
    if case == "large logits":
        q *= 4.0
        k *= 4.0
    elif case == "one dominant key":
        k[0, 0, rng.integers(lk)] = q[0, 0, 0] * 3.0
    elif case == "v offset":
        v = 100.0 + 0.5 * v
    elif case == "near-uniform":
        q *= 0.01
    elif case == "tiny weights":
        q *= 3.0
        k[0, 0, : lk // 2] *= -3.0
    elif case == "causal":
        causal = True
    elif case == "big v spread":
        v[0, 0, rng.integers(lk)] *= 1000.0
    elif case == "tiny v":  # subnormal outputs in fp16: the store's absolute error dominates
        v *= 1e-6
    q, k, v = (ks.round_to(x, store).astype(np.float64) for x in (q, k, v))
    return q, k, v, causal


def experiment(proof: Proof | None = None, *, seed: int = 2024, reps: int = 3) -> dict:
    """Run the experiment; add its checks to ``proof``; return the table for the report."""
    rng = np.random.default_rng(seed)
    out = {}
    for store in ("float16", "bfloat16", "float32"):
        prec = precision_for(store)
        rows = []
        for case in CASES:
            for _ in range(reps):
                lk = int(rng.choice([7, 33, 64]))
                e = int(rng.choice([16, 64]))
                q, k, v, causal = _inputs(rng, case, store, lk, e)
                bn = int(rng.choice([4, 16, 32]))
                edges = list(range(0, lk, bn)) + [lk]
                splits = int(rng.choice([1, 3]))
                o, lse = ks.simulate(q, k, v, store=store, boundaries=edges, splits=splits,
                                     causal=causal, rng=rng)
                oe, le = ks.exact_fp64(q, k, v, causal=causal)
                nt = len(edges) - 1
                ob, lb = running_forward_bound(q, k, v, precision=prec, n_tiles=nt, causal=causal)
                gm = float(np.max(np.abs(q[0]) @ np.abs(k[0, 0]).T)) / np.sqrt(e)
                ap = apriori_forward_bound(precision=prec, e=e, lk=lk, n_tiles=nt, max_logit=gm,
                                           max_v=float(np.abs(v).max()))
                apl = apriori_lse_bound(precision=prec, e=e, lk=lk, n_tiles=nt, max_logit=gm)
                err = np.abs(o - oe)
                lerr = np.where(np.isfinite(le), np.abs(lse - le), 0.0)
                r_run = float(np.max(err / ob))
                r_lse = float(np.max(lerr / lb))
                rows.append(dict(case=case, lk=lk, e=e, block_n=bn, splits=splits, ratio=r_run,
                                 lse_ratio=r_lse, apriori_ratio=float(err.max() / ap),
                                 apriori_lse_ratio=float(lerr.max() / apl),
                                 err_at_worst=float(err.flat[np.argmax(err / ob)]),
                                 bound_at_worst=float(ob.flat[np.argmax(err / ob)]),
                                 run_le_apriori=bool(np.all(ob <= ap * (1 + 1e-12)))))
        worst = max(rows, key=lambda r: r["ratio"])
        out[store] = dict(cases=len(rows), max_ratio=worst["ratio"],
                          median_ratio=float(np.median([r["ratio"] for r in rows])),
                          max_lse_ratio=max(r["lse_ratio"] for r in rows),
                          max_apriori_ratio=max(r["apriori_ratio"] for r in rows),
                          max_apriori_lse_ratio=max(r["apriori_lse_ratio"] for r in rows),
                          closest=worst, run_le_apriori=all(r["run_le_apriori"] for r in rows))
    out["tf32_vs_fp32"] = _tf32_control(rng)
    if proof is not None:
        for store in ("float16", "bfloat16", "float32"):
            r = out[store]
            proof.check(f"tightness experiment, {store}: no violation of the running/a-priori bounds "
                        f"({r['cases']} cases)", r["max_ratio"] <= 1 and r["max_lse_ratio"] <= 1
                        and r["max_apriori_ratio"] <= 1 and r["max_apriori_lse_ratio"] <= 1,
                        kind="numeric", detail=f"max err/running bound {r['max_ratio']:.3g}")
            proof.check(f"running bound <= a-priori bound on every case ({store})", r["run_le_apriori"],
                        kind="numeric")
    return out


def _tf32_control(rng) -> dict:
    """A TF32 kernel (q, k rounded to 10-bit mantissas before the dot) vs the IEEE fp32 bound."""
    prec = precision_for("float32")
    prec_tf = precision_for("float32", tf32=True)
    worst, worst_tf, violated = 0.0, 0.0, 0
    n = 6
    for _ in range(n):
        lk, e = 32, 64
        q = rng.standard_normal((1, 1, 4, e)) * 3
        k = rng.standard_normal((1, 1, lk, e)) * 3
        v = rng.standard_normal((1, 1, lk, 8))
        q, k, v = (x.astype(np.float32).astype(np.float64) for x in (q, k, v))
        qt, kt = (tf32_round(x).astype(np.float64) for x in (q, k))
        o, _ = ks.simulate(qt, kt, v, store="float32", boundaries=[0, 16, 32])
        oe, _ = ks.exact_fp64(q, k, v)
        ob, _ = running_forward_bound(q, k, v, precision=prec, n_tiles=2)
        obt, _ = running_forward_bound(q, k, v, precision=prec_tf, n_tiles=2)
        r = float(np.max(np.abs(o - oe) / ob))
        worst = max(worst, r)
        worst_tf = max(worst_tf, float(np.max(np.abs(o - oe) / obt)))
        violated += r > 1
    return dict(cases=n, max_ratio_fp32_bound=worst, violated=violated, max_ratio_tf32_bound=worst_tf)


def backward_experiment(proof: Proof | None = None, *, seed: int = 2025) -> dict:
    """Tightness of theorem 4b: the fp32 FA2-backward simulation (kernel_sim.simulate_backward) vs an
    fp64 backward, per storage dtype; any ratio above 1 is a violation and fails theorem 4b."""
    from .bounds_backward import running_backward_bound

    rng = np.random.default_rng(seed)
    out = {}
    cases = ("random", "large logits", "one dominant key", "v offset", "causal", "big dO")
    for store in ("float16", "bfloat16", "float32"):
        prec = precision_for(store)
        worst = {"dq": 0.0, "dk": 0.0, "dv": 0.0}
        closest = None
        n = 0
        for case in cases:
            for _ in range(2):
                lk = int(rng.choice([7, 33, 48]))
                e = int(rng.choice([16, 32]))
                q, k, v, causal = _inputs(rng, case, store, lk, e)
                do = ks.round_to(rng.standard_normal((1, 2, q.shape[2], v.shape[3])) * (30.0 if case == "big dO" else 1.0),
                                 store).astype(np.float64)
                bn = int(rng.choice([4, 16]))
                edges = list(range(0, lk, bn)) + [lk]
                got = ks.simulate_backward(q, k, v, do, store=store, boundaries=edges, causal=causal)
                ref = ks.exact_backward_fp64(q, k, v, do, causal=causal)
                bnd = running_backward_bound(q, k, v, do, precision=prec, n_tiles=len(edges) - 1, causal=causal)
                n += 1
                for name, g, r_, b in zip(("dq", "dk", "dv"), got, ref, bnd):
                    err = np.abs(g - r_) + 1e-12 * np.abs(r_)  # the fp64 reference's own error, generously
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = float(np.nanmax(np.where(b > 0, err / b, 0.0)))
                    if closest is None or ratio > closest["ratio"]:
                        closest = dict(case=case, grad=name, lk=lk, e=e, ratio=ratio)
                    worst[name] = max(worst[name], ratio)
        out[store] = dict(cases=n, max_ratio=worst, closest=closest)
        if proof is not None:
            proof.check(f"backward tightness experiment, {store}: no violation of running_backward_bound ({n} cases, "
                        "kernel-like fp32 FA2 backward simulation vs fp64)", max(worst.values()) <= 1, kind="numeric",
                        detail=", ".join(f"{k_} {v_:.3g}" for k_, v_ in worst.items()))
    return out

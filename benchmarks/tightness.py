"""How tight are the suite's bounds on a target? max |error| / bound per dtype, on the suite's own draws.

    python3 benchmarks/tightness.py [--target kernel|tiled_peer|MODULE:ATTR] [--profile ci|gpu] \
        [--examples 40] [--out FILE.json]

For each dtype the target declares, the forward draws of ``output_within_error_bound`` (case_strategy)
and the gradient draws of ``gradients_match_reference`` (its strategy) are run through the target at
the profile's shapes (Hypothesis, derandomized); the ratios are |target - exact| / (bound + the
reference's radius) with the bounds the suite judges by: theorem 6 (proofs.running_forward_bound, O and
LSE) and theorem 4b (proofs.running_backward_bound, dQ, dK, dV) at the target's declared precision.
A ratio above 1 is a violation (exit 1). Problems outside theorem 4b's claim are counted, not judged.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="kernel")
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--examples", type=int, default=40, help="draws per dtype and direction")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import numpy as np
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from flashproof.proofs import Unbounded
    from flashproof.properties import builtin_targets, gen, oracle, props_backward as pb
    from flashproof.properties.context import make_context
    from flashproof.properties.inputs import build
    from flashproof.properties.loading import load_target

    t = {"kernel": builtin_targets.default_target, "tiled_peer": builtin_targets.tiled_peer}.get(args.target)
    target = t() if t else load_target(args.target)
    ctx = make_context(target, args.profile)
    report = {"target": target.name, "profile": args.profile, "accumulator": target.accumulator, "dtypes": {}}
    cfg = settings(max_examples=args.examples, derandomize=True, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
    bad = 0
    for dt in target.dtypes:
        worst = {k: 0.0 for k in ("o", "lse", "dq", "dk", "dv")}
        count = {"forward": 0, "backward": 0, "outside_claim": 0}
        t0 = time.time()

        @cfg
        @given(gen.case_strategy(ctx, dtype=st.just(dt)))
        def forward(case):
            j = gen.judge_case(ctx, case)
            count["forward"] += 1
            for key, got, want, b, r in (("o", j.o, j.exact.o, j.o_bound, j.exact.o_rad),
                                         ("lse", j.lse, j.exact.lse, j.lse_bound, j.exact.lse_rad)):
                if got is None:
                    continue
                fin = np.isfinite(want) & np.isfinite(b + r)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(fin, np.abs(got - np.where(fin, want, 0)) / (b + r), 0.0)
                worst[key] = max(worst[key], float(np.nanmax(ratio, initial=0.0)))

        @cfg
        @given(pb._grad_strategy(ctx, dtype=st.just(dt)) if target.backward else st.nothing())
        def backward(case):
            inp = build(case.problem, device=ctx.device)
            do = pb._do(ctx, inp, case.get("do_seed"))
            try:
                bounds = ctx.backward_bound(inp, do, tile=case.tile_dict)
            except Unbounded:
                count["outside_claim"] += 1
                return
            dq, dk, dv, _ = pb._grads(ctx, inp, do, tile=case.tile_dict)
            ref, rad = pb._reference(inp, do)
            count["backward"] += 1
            for key, got, want, b, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, bounds, rad):
                g = oracle.to_np(got)
                fin = np.isfinite(want) & np.isfinite(b + r)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.where(fin, np.abs(g - np.where(fin, want, 0)) / (b + r), 0.0)
                worst[key] = max(worst[key], float(np.nanmax(ratio, initial=0.0)))

        forward()
        if target.backward:
            backward()
        bad += sum(v > 1 for v in worst.values())
        report["dtypes"][dt] = dict(max_ratio=worst, examples=count, seconds=round(time.time() - t0, 1),
                                    accumulator=target.accumulator_for(dt))
        print(f"{dt} ({target.accumulator_for(dt)}): " + ", ".join(f"{k} {v:.3g}" for k, v in worst.items())
              + f"  [{count}]", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"ratios above 1: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

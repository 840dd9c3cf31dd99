"""Per-property wall time of the property suite for one target and profile, with where it goes.

    python benchmarks/suite_timing.py                                   # our kernel, default profile
    python benchmarks/suite_timing.py --profile gpu torch.nn.functional:scaled_dot_product_attention
    python benchmarks/suite_timing.py --profile gpu --select 'output_*' --json timing.json
    python benchmarks/suite_timing.py --profile gpu --budget 240 flashproof.properties.sdpa_backends:flash

One row per property: outcome, examples (as Hypothesis counts them: corners and drawn ones), how
many drawn examples were judged and how many the profile's per-property time budget skipped,
seconds, and (unless ``--no-breakdown``) the
seconds spent in the target itself and in each part of the judge (exact references, the running
bound, the naive baseline, backward references), each counted exclusively (a reference called
inside the bound is not counted twice). ``--budget S`` prints whether the whole run fits S seconds.
Run it on the machine whose time you want to know: the target runs on its declared device, the
judge on the host CPU.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time

__all__ = ["main", "instrument"]

#: (module, attribute, label): the functions whose time is reported separately.
_TIMED = (
    ("flashproof.properties.targets", "Target.__call__", "target"),
    ("flashproof.properties.oracle", "bound", "bound"),
    ("flashproof.reference", "forward_fp64", "ref fp64"),
    ("flashproof.reference", "forward_certified", "ref arb"),
    ("flashproof.reference", "forward_mp", "ref mpmath"),
    ("flashproof.reference", "forward_tiled", "ref tiled"),
    ("flashproof.reference", "forward_naive", "naive"),
    ("flashproof.reference", "backward_fp64", "ref bwd"),
    ("flashproof.reference", "backward_mp", "ref bwd mp"),
)


class _Clock:
    """Exclusive time per label: a call's time minus the time of timed calls inside it."""

    def __init__(self):
        self.total = {}
        self._stack = []

    def wrap(self, fn, label):
        @functools.wraps(fn)
        def timed(*a, **kw):
            t0 = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*a, **kw)
            finally:
                inner = self._stack.pop()
                dt = time.perf_counter() - t0
                self.total[label] = self.total.get(label, 0.0) + dt - inner
                if self._stack:
                    self._stack[-1] += dt
        return timed

    def take(self):
        out, self.total = self.total, {}
        return out


def instrument(clock: _Clock):
    """Wrap the functions of _TIMED with ``clock`` (this process only; a benchmark, not the suite)."""
    import importlib

    for modname, attr, label in _TIMED:
        mod = importlib.import_module(modname)
        owner, name = mod, attr
        if "." in attr:
            cls, name = attr.split(".")
            owner = getattr(mod, cls)
        fn = getattr(owner, name, None)
        if fn is not None:
            setattr(owner, name, clock.wrap(fn, label))
    tgt = importlib.import_module("flashproof.properties.targets").Target
    # decode goes through the descriptor's field, not a method: time it where the suite calls it
    dec = importlib.import_module("flashproof.properties.props_decode")
    if hasattr(dec, "_decode"):
        dec._decode = clock.wrap(dec._decode, "target")
    return tgt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", nargs="?", default=None, help="module:attr (default: flashproof's kernel)")
    ap.add_argument("--profile", default=None, choices=("ci", "gpu", "deep"))
    ap.add_argument("--select", action="append", default=None, metavar="PATTERN")
    ap.add_argument("--no-breakdown", action="store_true", help="do not time the judge's parts")
    ap.add_argument("--budget", type=float, default=None, metavar="S", help="say whether the run fits S seconds")
    ap.add_argument("--json", default=None, metavar="PATH")
    args = ap.parse_args(argv)

    from flashproof.properties import gen, suite
    from flashproof.properties.profiles import default_profile
    from flashproof.properties.loading import load_target

    clock = _Clock()
    if not args.no_breakdown:
        instrument(clock)
    target = load_target(args.target)
    profile = args.profile or default_profile(target.device())
    labels = [lab for _, _, lab in _TIMED if lab != "target"]
    rows = []
    head = f"{'property':<40} {'outcome':<13} {'ex':>4} {'judged':>6} {'skip':>4} {'sec':>7}"
    if not args.no_breakdown:
        head += " " + " ".join(f"{x:>9}" for x in ["target"] + labels)
    print(f"target {target.name} on {target.device()}, profile {profile}: {target.description}", flush=True)
    print("domain: " + ", ".join(f"{k}={v}" for k, v in target.capabilities().items()), flush=True)
    probes = getattr(sys.modules.get("flashproof.properties.sdpa_backends"), "PROBES", {})
    for name, p in probes.items():  # what torch refused on this machine (the declaration follows it)
        refused = {k: v for k, v in p.items() if v is not None}
        print(f"probes {name}: {len(p) - len(refused)} ran, refused: "
              + ("; ".join(f"{k} ({v[:120]})" for k, v in refused.items()) or "none"), flush=True)
    print(head, flush=True)
    clock.take()

    def progress(out):
        parts = clock.take()
        judged, skipped = gen.budget_report().get(out.name, (0, 0))
        row = {"name": out.name, "status": out.status, "examples": out.examples, "drawn_judged": judged,
               "drawn_skipped": skipped, "seconds": round(out.seconds, 3),
               "parts": {k: round(v, 3) for k, v in parts.items()}}
        rows.append(row)
        line = f"{out.name:<40} {out.status:<13} {out.examples:>4} {judged:>6} {skipped:>4} {out.seconds:>7.1f}"
        if not args.no_breakdown:
            line += " " + " ".join(f"{parts.get(x, 0.0):>9.2f}" for x in ["target"] + labels)
        print(line, flush=True)

    t0 = time.perf_counter()
    res = suite.run_suite(target, profile=profile, select=args.select, progress=progress)
    wall = time.perf_counter() - t0
    tot = {}
    for r in rows:
        for k, v in r["parts"].items():
            tot[k] = tot.get(k, 0.0) + v
    print(f"\ntotal {wall:.1f} s over {len(rows)} properties; " +
          ", ".join(f"{k} {v:.1f} s" for k, v in sorted(tot.items(), key=lambda kv: -kv[1])), flush=True)
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print("outcomes: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if args.budget is not None:
        print(f"budget {args.budget:.0f} s: {'fits' if wall <= args.budget else 'EXCEEDED'} ({wall:.1f} s)")
    if any(o.status in ("failed", "error", "xfail", "timeout") for o in res.outcomes):
        print("\n" + res.details())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": target.name, "profile": profile, "seconds": wall, "properties": rows}, f, indent=1)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""``flashproof check TARGET``: run the property suite against a target and print a summary.

Prints one row per property (outcome, examples, time), then the falsifying examples with their
reproducers. Exit status: 0 every declared property holds (documented deviations XFAIL), 1 the
target violated a property, 2 flashproof could not run (bad target, internal error).
"""
from __future__ import annotations

import json
import os
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    parser.add_argument("target", nargs="?", default=None, metavar="TARGET",
                        help="module:attr of an SDPA-signature callable, a Target or a factory "
                             "(default: flashproof's own kernel)")
    parser.add_argument("--profile", default=None, choices=("ci", "gpu", "deep"),
                        help="Hypothesis profile (default: ci on CPU, gpu with CUDA)")
    parser.add_argument("--select", action="append", default=None, metavar="PATTERN",
                        help="run only properties matching this name or fnmatch pattern (repeatable)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first violated property")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the outcomes as JSON")
    parser.add_argument("--list", action="store_true", help="list the properties and exit")
    parser.add_argument("--quiet", action="store_true", help="no per-property progress lines")


def run(args) -> int:
    from flashproof.cli import EXIT_ERROR, EXIT_OK

    from .suite import PROPERTIES, select_properties
    from .targets import TargetLoadError, load_target

    try:
        names = select_properties(args.select)
    except ValueError as exc:
        print(f"flashproof check: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:  # checked before the suite runs: a bad path must not cost the run or read as a violation
        parent = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            print(f"flashproof check: --json {args.json}: not a writable file path", file=sys.stderr)
            return EXIT_ERROR
    if args.list:
        for n in names:
            p = PROPERTIES[n]
            print(f"{n}\n    {p.asserts}\n    bug classes: {', '.join(map(str, p.classes)) or '-'}; bound: {p.bound}")
        return EXIT_OK
    try:
        target = load_target(args.target)
        device = target.device()
    except (TargetLoadError, TypeError, ValueError, RuntimeError) as exc:
        print(f"flashproof check: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from .profiles import default_profile
    from .suite import run_suite

    profile = args.profile or default_profile(device)
    print(f"flashproof check: target {target.name} ({target.description or 'SDPA callable'}), profile {profile}, "
          f"{len(names)} properties", flush=True)

    def progress(o):
        if not args.quiet:
            print(f"  {o.status:<12} {o.name} ({o.examples} examples, {o.seconds:.1f}s)", flush=True)

    try:
        res = run_suite(target, profile=profile, select=args.select, fail_fast=args.fail_fast, progress=progress)
    except Exception as exc:  # flashproof itself failed: say so, exit 2
        print(f"flashproof check: could not run the suite: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print()
    print(res.table())
    det = res.details()
    if det:
        print()
        print(det)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": res.target, "profile": res.profile, "bound": res.bound_source,
                       "seconds": res.seconds, "exit_code": res.exit_code,
                       "outcomes": [{"name": o.name, "status": o.status, "examples": o.examples,
                                     "seconds": o.seconds, "message": o.message, "reproducer": o.reproducer}
                                    for o in res.outcomes]}, f, indent=2)
    return res.exit_code

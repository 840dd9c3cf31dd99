"""``flashproof check TARGET``: run the property suite against a target and print a summary.

Prints one row per property (outcome, examples, time), then the falsifying examples with their
reproducers. Exit status: 0 every declared property holds (documented deviations XFAIL), 1 the
target violated a property (a TIMEOUT, an example running past ``--example-timeout``, included),
2 flashproof could not run (bad target, internal error), 130 interrupted by Ctrl-C (143 by
SIGTERM) after printing what finished. State (Hypothesis database, reproducer files, the journal
``--resume`` reads) lives in ``--state-dir`` (default ``.flashproof``); docs/robustness.md. The
run's max_len (the length budget's level, or ``--max-len``) is printed before the first property.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from .state import STATE_DIR

__all__ = ["add_arguments", "run"]


def add_arguments(parser):
    parser.add_argument("target", nargs="?", default=None, metavar="TARGET",
                        help="module:attr of an SDPA-signature callable, a Target or a factory "
                             "(default: flashproof's own kernel)")
    parser.add_argument("--adapter", default=None, metavar="NAME",
                        help="apply this adapter of flashproof.properties.adapters to TARGET (flash_attn, fla, blhd, "
                             "sdpa; default: detected from the target's signature)")
    parser.add_argument("--profile", default=None, choices=("ci", "gpu", "deep"),
                        help="Hypothesis profile (default: ci on CPU, gpu with CUDA)")
    parser.add_argument("--select", action="append", default=None, metavar="PATTERN",
                        help="run only properties matching this name or fnmatch pattern (repeatable)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first violated property")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the outcomes as JSON")
    parser.add_argument("--list", action="store_true", help="list the properties and exit")
    parser.add_argument("--quiet", action="store_true", help="no per-property progress lines")
    parser.add_argument("--example-timeout", type=_seconds, default=None, metavar="S",
                        help="seconds one example may take before it is a TIMEOUT violation (0: no limit; "
                             "default per profile: ci 60, gpu 120, deep 300)")
    parser.add_argument("--state-dir", default=STATE_DIR, metavar="DIR",
                        help="where the Hypothesis database, reproducer files and the journal live "
                             "(default: .flashproof in the current directory)")
    parser.add_argument("--db", default=None, metavar="DIR",
                        help="Hypothesis database folder (default: STATE_DIR/hypothesis)")
    parser.add_argument("--max-len", type=_positive, default=None, metavar="N",
                        help="the longest Lq/Lk drawn (default: the profile's, raised at ci and deep for a fast target "
                             "by the length budget; pin it for the same examples every run)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run: properties its journal finished (same target, "
                             "profile and suite) are reported from it, not run again")


def _seconds(text):
    from .profiles import parse_seconds

    try:
        return parse_seconds(text, option="--example-timeout")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text):
    from .profiles import parse_max_len

    try:
        return parse_max_len(text, option="--max-len")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so the summary of what finished is still printed."""

    signum = signal.SIGTERM


def _on_sigterm(signum, frame):
    raise _Terminated()


def run(args) -> int:
    from .outcomes import EXIT_ERROR, EXIT_OK, EXIT_VIOLATION, NOT_RUN, SuiteInterrupted
    from .registry import PROPERTIES, TargetTimeout
    from .state import prepare_state_dir, writable_file_path
    from .suite import select_properties
    from .targets import TargetLoadError
    from .timeouts import load_target_within, resolve_example_timeout

    try:
        names = select_properties(args.select)
    except ValueError as exc:
        print(f"flashproof check: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json and not writable_file_path(args.json):  # before the run: a bad path must not cost it
        print(f"flashproof check: --json {args.json}: not a writable file path", file=sys.stderr)
        return EXIT_ERROR
    if args.list:
        for n in names:
            p = PROPERTIES[n]
            print(f"{n}\n    {p.asserts}\n    bug classes: {', '.join(map(str, p.classes)) or '-'}; bound: {p.bound}")
        return EXIT_OK
    try:  # the state folders too: a bad --state-dir/--db is a usage error, found before any work
        state_dir = prepare_state_dir(args.state_dir)
        if args.db is not None:
            if os.path.exists(args.db) and not os.path.isdir(args.db):
                raise ValueError(f"--db {args.db}: not a folder")
            os.makedirs(args.db, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"flashproof check: --state-dir/--db: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        from .adapters import with_adapter

        spec = with_adapter(args.target, args.adapter)
        target = load_target_within(spec, resolve_example_timeout(args.example_timeout, args.profile or "ci"))
        device = target.device()
    except TargetTimeout as exc:  # the target hung while it was loaded and probed: its fault
        print(f"flashproof check: {exc}", file=sys.stderr)
        return EXIT_VIOLATION
    except (TargetLoadError, TypeError, ValueError, RuntimeError) as exc:
        print(f"flashproof check: {exc}", file=sys.stderr)
        return EXIT_ERROR
    from .profiles import default_profile
    from .suite import run_suite

    profile = args.profile or default_profile(device)
    limit = resolve_example_timeout(args.example_timeout, profile)
    print(f"flashproof check: target {target.name} ({target.description or 'SDPA callable'}), judged by nan_policy "
          f"{target.nan_policy!r} and empty_rows {target.empty_rows!r}, profile {profile}, {len(names)} properties; per-example time limit "
          f"{f'{limit:g} s' if limit else 'none'}; state in {state_dir}", flush=True)

    def progress(o):
        if not args.quiet:
            mark = ", resumed" if o.resumed else ""
            print(f"  {o.status:<12} {o.name} ({o.examples} examples, {o.seconds:.1f}s{mark})", flush=True)
            if o.reproducer_file and not o.resumed:
                print(f"               reproducer: {o.reproducer_file}", flush=True)

    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    interrupted = None
    try:
        res = run_suite(target, profile=profile, select=args.select, fail_fast=args.fail_fast, progress=progress,
                        example_timeout=args.example_timeout, state_dir=state_dir, db=args.db, resume=args.resume,
                        notify=lambda note: print(f"flashproof check: {note}", flush=True),
                        max_len=getattr(args, "max_len", None))
    except SuiteInterrupted as exc:
        res = interrupted = exc.result
    except Exception as exc:  # flashproof itself failed: say so, exit 2
        print(f"flashproof check: could not run the suite: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if main_thread:  # None: the previous handler was not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old_term is None else old_term)
    print()
    if interrupted is not None:
        done = sum(o.status != NOT_RUN for o in res.outcomes)
        print(f"flashproof check: INTERRUPTED ({signal.Signals(res.signum).name}) after {done} of {len(res.outcomes)} "
              f"properties; what finished:")
    print(res.table())
    det = res.details()
    if det:
        print()
        print(det)
    if interrupted is not None:
        print(f"\nThe journal ({os.path.join(state_dir, 'journal.jsonl')}) keeps every finished property: run the same "
              f"command with --resume to continue.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"target": res.target, "nan_policy": res.nan_policy, "empty_rows": res.empty_rows, "domain": target.capabilities(),
                       "profile": res.profile, "bound": res.bound_source,
                       "seconds": res.seconds, "exit_code": res.exit_code, "interrupted": res.interrupted,
                       "notes": res.notes, "device": res.device,
                       "max_len": res.length.max_len if res.length is not None else None,
                       "length": res.length.as_dict() if res.length is not None else None,
                       "outcomes": [{"name": o.name, "status": o.status, "examples": o.examples,
                                     "seconds": o.seconds, "slowest_example": o.slowest, "resumed": o.resumed,
                                     "peak_bytes": o.peak_bytes, "retained_bytes": o.retained_bytes,
                                     "message": o.message, "reproducer": o.reproducer,
                                     "reproducer_file": o.reproducer_file}
                                    for o in res.outcomes]}, f, indent=2)
    code = res.exit_code
    if any(th.is_alive() for th in res.abandoned):
        print("flashproof check: a hung call of the target still runs in a background thread; exiting without "
              "waiting for it", file=sys.stderr)
        if getattr(args, "_process", False):  # a real command line: finalization could block on it
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return code

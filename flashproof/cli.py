"""The ``flashproof`` command: ``prove``, ``check``, ``audit``, ``bench``.

Exit codes are distinct so CI can tell a broken kernel from a broken run:
0 all good, 1 the target violated the spec or its bound, 2 flashproof could not run;
``check`` exits 130 when interrupted by Ctrl-C (143 by SIGTERM) after printing what finished.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from flashproof.properties.outcomes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_VIOLATION

__all__ = ["main", "EXIT_OK", "EXIT_VIOLATION", "EXIT_ERROR", "EXIT_INTERRUPTED"]

# subcommand -> (module, help); each module has ``add_arguments(parser)`` and ``run(args) -> int``.
_COMMANDS = {
    "prove": ("flashproof.proofs.runner", "run every proof, print PROVED/FAILED, write the proof report"),
    "check": ("flashproof.properties.check", "run the property suite against a target and print a summary"),
    "audit": ("flashproof.audit", "numerical-stability audit report (the main job)"),
    "bench": ("flashproof.bench", "GPU benchmark of the kernel against torch SDPA backends"),
}


def main(argv=None) -> int:
    process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flashproof", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    mod = None
    for name, (modname, help_) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        if name == chosen:  # import only the command that runs: the others pull in triton/torch
            try:
                mod = importlib.import_module(modname)
            except ImportError as exc:
                print(f"flashproof {name}: cannot import {modname}: {exc}", file=sys.stderr)
                return EXIT_ERROR
            mod.add_arguments(p)
    args = parser.parse_args(argv)
    args._process = process  # a real command line (not an in-process call): check may exit hard past a hung call
    try:
        return int(mod.run(args))
    except KeyboardInterrupt:
        print("flashproof: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

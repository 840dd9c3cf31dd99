"""Test-session glue: tests/ on sys.path (for the mutant zoo, tests/mutants/), and the mutation
score in the terminal summary: tests/test_mutation_score.py's tests attach their lines to their
reports (``user_properties``: they reach the pytest-xdist controller too), summed here."""
from __future__ import annotations

import os
import sys

__all__ = ["pytest_configure", "pytest_runtest_logreport", "pytest_terminal_summary"]

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

_SCORE = {"mutants": [], "peers": []}


def pytest_configure(config):
    _SCORE["mutants"].clear()
    _SCORE["peers"].clear()


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for name, value in getattr(report, "user_properties", ()):
        if name == "flashproof_mutant":
            _SCORE["mutants"].append(value)
        elif name == "flashproof_peer":
            _SCORE["peers"].append(value)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workeroutput"):  # a pytest-xdist worker: the controller prints it
        return
    muts, peers = _SCORE["mutants"], _SCORE["peers"]
    if not muts and not peers:
        return
    tr = terminalreporter
    tr.section("flashproof mutation score")
    if muts:
        killed = sum(m["killed"] for m in muts)
        levels = sorted({m["max_len"] for m in muts})
        tr.write_line(f"mutation score {killed}/{len(muts)} (ci profile, fail_fast; {sum(m['seconds'] for m in muts):.0f}s "
                      f"in the suite; max_len {'/'.join(map(str, levels))})")
        for m in sorted(muts, key=lambda m: m["line"].split()[1]):
            tr.write_line(m["line"])
    for line in peers:
        tr.write_line(line)

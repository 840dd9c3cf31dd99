"""Test-session glue: tests/ on sys.path (for the mutant zoo, tests/mutants/), and the mutation
score in the terminal summary (tests/test_mutation_score.py appends its lines to
``config.flashproof_mutation_report``)."""
from __future__ import annotations

import os
import sys

__all__ = ["pytest_configure", "pytest_terminal_summary"]

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def pytest_configure(config):
    config.flashproof_mutation_report = []


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = getattr(config, "flashproof_mutation_report", None)
    if lines:
        terminalreporter.section("flashproof mutation score")
        for line in lines:
            terminalreporter.write_line(line)

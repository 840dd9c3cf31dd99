"""Print the zoo's markdown table for docs/mutants.md: the first killer of each mutant, and how
many other properties kill it too (stderr lists them all).

Run from the repository root: ``.venv/bin/python tests/mutants/doc_table.py`` (about 10 min on
2 cores: the whole ci suite per mutant, without fail_fast, shrinking off). The first killer is
the one test_mutation_score.py reports (it runs the suite in the same order with fail_fast).
A failing property whose example the correct base also fails is marked "(base fails too)".
"""
from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flashproof.properties import profiles, replay, run_suite  # noqa: E402
from flashproof.properties.oracle import Violation  # noqa: E402

from mutants.registry import markdown_rows, mutant_targets, peer_targets  # noqa: E402

__all__ = ["killers"]


def killers() -> dict:
    """{mutant name: "`first` (+N more)"} from the full ci suite of each mutant."""
    profiles.PROFILES["ci"] = profiles.PROFILES["ci"].replace(shrink_seconds=0)  # kills come before shrinking
    base = peer_targets()[0]
    out = {}
    for t in mutant_targets():
        names = []
        for o in run_suite(t, profile="ci").failures:
            try:
                replay(o.name, o.case, target=base, profile="ci")
                names.append(f"`{o.name}`")
            except Violation:
                names.append(f"`{o.name}` (base fails too)")
        print(t.name, ", ".join(names) or "survives", file=sys.stderr)
        more = f" (+{len(names) - 1} more)" if len(names) > 1 else " (only one)"
        out[t.name.split(".", 1)[1]] = names[0] + more if names else "**survives ci**"
    return out


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    print("| mutant | class | bug | trigger (tests/mutants/triggers.py) | killed first by (ci) |")
    print("|---|---|---|---|---|")
    print("\n".join(markdown_rows(killers())))

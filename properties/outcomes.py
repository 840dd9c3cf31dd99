"""What a run of the suite reports: the statuses, one Outcome per property, the SuiteResult with
its table, the reproducer text of a falsifying example, and the exit codes the CLI returns.

Exit codes are distinct so CI can tell a broken kernel from a broken run: 0 all good, 1 the
target violated the spec or its bound, 2 flashproof could not run; an interrupted run exits
128 + the signal (130 for Ctrl-C, 143 for SIGTERM).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # flashproof.cli imports the exit codes: keep this module free of numpy
    from .cases import Case

__all__ = [
    "PASSED", "FAILED", "SKIPPED", "NOT_DECLARED", "NOT_APPLICABLE", "ERROR", "XFAIL", "XPASS", "TIMEOUT",
    "NOT_RUN",
    "EXIT_OK", "EXIT_VIOLATION", "EXIT_ERROR", "EXIT_INTERRUPTED",
    "Outcome", "SuiteResult", "SuiteInterrupted", "reproducer", "reproducer_script",
]

EXIT_OK = 0
EXIT_VIOLATION = 1
EXIT_ERROR = 2
#: 128 + SIGINT, the shell's convention (``check`` returns 128 + the signal: 143 for SIGTERM)
EXIT_INTERRUPTED = 130

PASSED, FAILED, SKIPPED, NOT_DECLARED, ERROR, XFAIL, XPASS = (
    "passed", "failed", "skipped", "not declared", "error", "xfail", "xpass")
#: an example did not finish within the per-example time limit (a violation: exit 1)
TIMEOUT = "timeout"
#: the property did not run: the run was interrupted, or the target hung in an earlier property
NOT_RUN = "not run"
#: the property needs calls outside the target's declared domain (its reason says which): not a
#: pass, not an error (a capability the target does not declare at all is NOT_DECLARED)
NOT_APPLICABLE = "not applicable"


class SuiteInterrupted(KeyboardInterrupt):
    """run_suite was interrupted (Ctrl-C, or SIGTERM under ``flashproof check``): ``result`` holds
    the properties that finished (the others are "not run"); ``result.exit_code`` is 128 + signal."""

    def __init__(self, result, signum):
        done = sum(o.status != NOT_RUN for o in result.outcomes)
        super().__init__(f"interrupted by signal {signum} after {done} of {len(result.outcomes)} properties")
        self.result = result
        self.signum = signum


@dataclass
class Outcome:
    name: str
    status: str
    examples: int = 0
    seconds: float = 0.0
    message: str = ""
    reproducer: str = ""
    case: Case | None = None
    #: seconds of the slowest example (what the per-example time limit is measured against)
    slowest: float = 0.0
    #: the reproducer file written for this failure ("" if none)
    reproducer_file: str = ""
    #: recorded by an earlier, interrupted run and taken from its journal (``resume=True``)
    resumed: bool = False
    #: device memory (memory.track): the most allocated at once above what was allocated before the
    #: property, and what it left allocated after a garbage collection; None: not measured (CPU)
    peak_bytes: int | None = None
    retained_bytes: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in (PASSED, SKIPPED, NOT_DECLARED, NOT_APPLICABLE, XFAIL, XPASS)


@dataclass
class SuiteResult:
    target: str
    profile: str
    outcomes: list = field(default_factory=list)
    seconds: float = 0.0
    bound_source: str = ""
    #: the NaN policy the target was judged by (Target.nan_policy)
    nan_policy: str = ""
    #: the empty-row policy the target was judged by (Target.empty_rows)
    empty_rows: str = ""
    #: the run was interrupted (then ``signum`` says by which signal; the rest is "not run")
    interrupted: bool = False
    signum: int = 0
    #: what the run said about its state files (journal resumed or not, and why)
    notes: list = field(default_factory=list)
    #: threads of timed-out examples that could not be stopped (a caller may exit without them)
    abandoned: list = field(default_factory=list, repr=False)
    #: how the run's max_len was chosen (length_budget.LengthChoice)
    length: object = None
    #: the device the target ran on ("cpu", or "cuda:I <name> <uuid>")
    device: str = ""

    @property
    def failures(self):
        """Violations: failed properties and timed-out examples (a hang is the target's fault)."""
        return [o for o in self.outcomes if o.status in (FAILED, TIMEOUT)]

    @property
    def errors(self):
        return [o for o in self.outcomes if o.status == ERROR]

    @property
    def not_run(self):
        return [o for o in self.outcomes if o.status == NOT_RUN]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors and not self.interrupted

    @property
    def exit_code(self) -> int:
        if self.interrupted:  # the shell's convention: 128 + the signal (130 for Ctrl-C)
            return 128 + (self.signum or 2)
        if self.failures:
            return EXIT_VIOLATION
        if self.errors:
            return EXIT_ERROR
        return EXIT_OK

    def __getitem__(self, name) -> Outcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)

    def table(self) -> str:
        w = max([len("property")] + [len(o.name) for o in self.outcomes])
        sw = max([12] + [len(o.status) for o in self.outcomes])
        lines = [f"{'property':<{w}}  {'outcome':<{sw}}  {'examples':>8}  {'time':>8}",
                 f"{'-' * w}  {'-' * sw}  {'-' * 8}  {'-' * 8}"]
        for o in self.outcomes:
            mark = "  (resumed)" if o.resumed else ""
            lines.append(f"{o.name:<{w}}  {o.status:<{sw}}  {o.examples:>8}  {o.seconds:>7.2f}s{mark}")
        counts = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        resumed = sum(o.resumed for o in self.outcomes)
        lines.append("")
        if self.length is not None or self.device:
            lines.append("; ".join(x for x in (f"device {self.device}" if self.device else "",
                                               self.length.note() if self.length is not None else "") if x))
        peaks = [o for o in self.outcomes if o.peak_bytes is not None]
        if peaks:
            from .memory import fmt_bytes

            top = max(peaks, key=lambda o: o.peak_bytes)
            kept = max(peaks, key=lambda o: o.retained_bytes)
            lines.append(f"device memory: peak {fmt_bytes(top.peak_bytes)} ({top.name}); most retained after a "
                         f"property {fmt_bytes(kept.retained_bytes)} ({kept.name}); retained over the run "
                         f"{fmt_bytes(sum(o.retained_bytes for o in peaks))}")
        policy = (f", nan_policy {self.nan_policy}" if self.nan_policy else "") + (
            f", empty_rows {self.empty_rows}" if self.empty_rows else "")
        lines.append(f"target {self.target}{policy}, profile {self.profile}, bound: {self.bound_source}; "
                     + ", ".join(f"{n} {s}" for s, n in counts.items())
                     + (f" ({resumed} resumed from the journal)" if resumed else "") + f"; {self.seconds:.1f}s"
                     + ("; INTERRUPTED" if self.interrupted else ""))
        return "\n".join(lines)

    def details(self) -> str:
        out = []
        not_run: dict = {}
        for o in self.outcomes:
            if o.status in (FAILED, ERROR, XFAIL, TIMEOUT):
                saved = f"\nreproducer file: {o.reproducer_file}" if o.reproducer_file else ""
                out.append(f"=== {o.name}: {o.status}{' (resumed)' if o.resumed else ''} ===\n{o.message}\n"
                           f"{o.reproducer}{saved}".rstrip())
            elif o.status in (NOT_DECLARED, NOT_APPLICABLE, SKIPPED, XPASS) and o.message:
                out.append(f"--- {o.name}: {o.status}: {o.message}")
            elif o.status == NOT_RUN:
                not_run.setdefault(o.message, []).append(o.name)
        for why, names in not_run.items():  # one line per reason: an interrupted run leaves many
            out.append(f"--- {len(names)} not run ({why}): {', '.join(names)}")
        return "\n\n".join(out)


# ----------------------------------------------------------------------------- reproducers
def reproducer(name, case: Case, target, profile: str) -> str:
    """The falsifying example described, and the replay call that re-runs it."""
    tgt = repr(target.spec) if target.spec else "None  # the Target object you ran (no module:attr known)"
    return (f"Falsifying example of {name!r} against {target.name} (profile {profile}):\n"
            + "\n".join("  " + line for line in case.describe().splitlines())
            + "\nRe-run it with:\n"
            f"  from flashproof.properties import replay\n"
            f"  from flashproof.properties.cases import Case, MaskSpec, Problem, Regime, Shape\n"
            f"  replay({name!r}, {case!r},\n         target={tgt})\n")


def reproducer_script(name, case: Case, target, profile: str, *, status, message, minimal, found, stem,
                      example_timeout, notes=()) -> str:
    """The source of a reproducer file: a comment with the failure (``notes``: more header lines,
    e.g. the run's max_len), then a script that replays the case. Its exit status: 0 the property
    holds on the case now, 1 the violation is reproduced, 2 it could not run here (flashproof or a
    package missing, the target does not load, its device is absent, the case is outside the
    target's declared domain), with the reason on stderr."""
    from flashproof import __version__

    which = "the shrunk (minimal) example" if minimal else "the first failing example (before shrinking)"
    head = "\n".join("# " + line for line in (
        [f"flashproof reproducer: {status} of property {name!r} against {target.name} (profile {profile})",
         f"{which}; found {found}; flashproof {__version__}"] + list(notes) + [""]
        + case.describe().splitlines() + [""] + message.splitlines()[:40]))
    if target.spec:
        tgt = repr(target.spec)
        missing = ""
    else:
        tgt = "None"
        missing = ("if TARGET is None:\n    could_not_run('set TARGET to the Target object you ran (it had no "
                   "module:attr)')\n")
    return (f"{head}\n#\n# Run it: python {stem}.py\n"
            f"#   exit 0: the property holds on this case; exit 1: the violation is reproduced;\n"
            f"#   exit 2: it could not run here (the reason is printed).\n"
            f"import sys\n\n\n"
            f"def could_not_run(why):\n"
            f"    print(f'could not run: {{why}}', file=sys.stderr)\n"
            f"    sys.exit({EXIT_ERROR})\n\n\n"
            f"try:\n"
            f"    from flashproof.properties import replay\n"
            f"    from flashproof.properties.oracle import Violation\n"
            f"    from flashproof.properties.registry import CouldNotRun\n"
            f"    from flashproof.properties.cases import Case, MaskSpec, Problem, Regime, Shape\n"
            f"except ImportError as exc:  # flashproof, or a package it needs, is not installed here\n"
            f"    could_not_run(f'{{type(exc).__name__}}: {{exc}}')\n\n"
            f"TARGET = {tgt}\n"
            f"CASE = {case!r}\n\n"
            f"if __name__ == '__main__':\n"
            + "".join("    " + line + "\n" for line in missing.splitlines())
            + f"    try:\n"
            f"        replay({name!r}, CASE, target=TARGET, profile={profile!r},\n"
            f"               example_timeout={example_timeout or 0!r})\n"
            f"    except Violation as exc:\n"
            f"        print(f'reproduced: {{type(exc).__name__}}: {{exc}}')\n"
            f"        sys.exit({EXIT_VIOLATION})\n"
            f"    except CouldNotRun as exc:\n"
            f"        could_not_run(exc)\n"
            f"    except Exception as exc:  # flashproof itself failed: neither a pass nor a reproduction\n"
            f"        import traceback\n\n"
            f"        traceback.print_exc()\n"
            f"        could_not_run(f'flashproof failed: {{type(exc).__name__}}: {{exc}}')\n"
            f"    print('not reproduced: the property holds on this case')\n")

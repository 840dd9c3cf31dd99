"""proofs/: every theorem is PROVED, the negative controls FAIL, the runner and modules run.

The proofs run once per session (about 30 s of CPU); each theorem is then its own test."""
import subprocess
import sys

import pytest
import sympy as sp

from flashproof.proofs import core, negative_controls, runner


@pytest.fixture(scope="session")
def results():
    return runner.run_all(echo=lambda *a: None)


@pytest.mark.parametrize("key", list(runner.THEOREMS))
def test_theorem_is_proved(results, key):
    p = results[key]
    bad = [f"{c.name} ({c.detail})" for c in p.checks if not c.ok]
    assert p.checks, f"{key}: no checks ran"
    assert p.ok, f"{key} FAILED; failed checks: {bad}"
    assert p.statement and p.steps, f"{key}: statement/derivation missing from the report"


def test_every_negative_control_fails_a_theorem_and_none_crashes(results):
    """CI's check of theorem 7: every wrong merge and variant FAILS some theorem, none crashes the
    proofs, spec.merge is PROVED by all of them. Prints the table (run with -s to see it)."""
    p = results["negative_controls"]
    table = p.extra["table"]
    print("\n" + negative_controls.format_table(table))
    assert len(table) == len(negative_controls.CONTROLS) + len(negative_controls.VARIANT_CONTROLS) >= 20
    crashed = [(n, why) for n, _, _, res, _, why, _ in table if res == "CRASH"]
    assert not crashed, f"proofs crashed on: {crashed}"
    survivors = [n for n, _, _, res, *_ in table if res != "FAILED"]
    assert not survivors, f"wrong operators PROVED by every theorem: {survivors}"
    for key in negative_controls.THEOREMS_UNDER_TEST:
        assert results[key].ok, f"spec.merge not PROVED by {key}"


def test_theorem_2_alone_rejects_every_merge_control_but_the_exact_ones(results):
    """Theorem 2 (tried first) rejects every wrong merge except those exact in the reals, which only
    theorem 8 (overflow) can reject."""
    table = results["negative_controls"].extra["table"]
    by_8 = {n for n, kind, theorem, *_ in table if kind == "merge" and theorem != "theorem 2"}
    assert by_8 == set(negative_controls.EXACT_IN_THE_REALS), by_8
    assert all(theorem == "theorem 8" for n, kind, theorem, *_ in table if n in by_8)


def test_all_proofs_within_budget(results):
    total = sum(p.seconds for p in results.values())
    # budget from the brief: all proofs in under 2 minutes on this machine (wall, shared 2 cores)
    assert total < 120, {k: round(p.seconds, 1) for k, p in results.items()}


def test_zero_tests_can_fail():
    x, y = sp.symbols("x y", real=True)
    assert core.is_zero(sp.exp(x) * sp.exp(y) - sp.exp(x + y))
    assert not core.is_zero(sp.exp(x) * sp.exp(y) - sp.exp(x - y))
    j = sp.Symbol("j", integer=True)
    a, b = sp.symbols("a b", integer=True, positive=True)
    s = sp.IndexedBase("s", real=True)
    good = sp.Sum(s[j], (j, 1, a)) + sp.Sum(s[j], (j, a + 1, a + b))
    assert core.sums_equal(good, sp.Sum(s[j], (j, 1, a + b)))
    assert not core.sums_equal(good, sp.Sum(s[j], (j, 1, a + b - 1)))
    assert not core.sums_equal(sp.exp(x) * sp.Sum(s[j], (j, 1, a)), sp.Sum(sp.exp(x) * s[j], (j, 1, a + 1)))


def test_runner_cli_writes_report(tmp_path):
    from flashproof import cli
    out = tmp_path / "r" / "proofs.md"
    rc = cli.main(["prove", "--only", "streaming", "rope", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "PROVED" in text and "$$" in text and "Theorem 3" in text and "Theorem 5" in text


def test_runner_exit_1_when_a_proof_fails(tmp_path, monkeypatch):
    from flashproof.proofs import streaming
    failing = core.Proof("streaming", "broken", "s")
    failing.check("deliberately false", False)
    monkeypatch.setattr(streaming, "prove", lambda *a, **k: failing)
    args = type("A", (), {"only": ["streaming"], "out": str(tmp_path / "p.md"), "json_out": None})()
    assert runner.run(args) == 1
    assert "FAILED" in (tmp_path / "p.md").read_text()


def test_module_runs_standalone():
    r = subprocess.run([sys.executable, "-m", "flashproof.proofs.streaming"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PROVED" in r.stdout

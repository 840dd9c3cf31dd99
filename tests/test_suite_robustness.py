"""Suite robustness (issue #7): a hung target is stopped by the per-example time limit and
reported; the Hypothesis database, reproducer files and the journal survive an interrupted run
(Ctrl-C, SIGTERM, SIGKILL); ``--resume`` continues it. docs/robustness.md describes all of it.

The targets (module ``fpr_targets``, written to a scratch folder) are torch's SDPA that
misbehave only inside the property checks the environment names, so load_target's probe call
sees a correct SDPA. In-process tests simulate Ctrl-C with a KeyboardInterrupt raised by the
target; the CLI tests send real signals to a ``flashproof check`` subprocess.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flashproof.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_VIOLATION
from flashproof.properties import suite, timeouts
from flashproof.properties.profiles import PROFILES
from flashproof.properties.cases import case_from_repr
from flashproof.properties.outcomes import FAILED, NOT_RUN, PASSED, TIMEOUT, SuiteInterrupted
from flashproof.properties.registry import TargetTimeout
from flashproof.properties.state import prepare_state_dir
from flashproof.properties.suite import run_suite
from flashproof.properties.timeouts import resolve_example_timeout

FLASHPROOF = Path(sys.executable).with_name("flashproof")
# four cheap properties every SDPA callable declares, in the suite's order: A fails (NaN), C hangs
A, B, C, D = "ones_values_give_ones", "output_in_convex_hull", "reruns_bitwise_equal", "attended_set_exact"
FOUR = [A, B, C, D]

TARGETS = '''\
"""SDPA-signature targets that misbehave inside the property checks named by the environment
(comma-separated property names): FPR_NAN_IN (NaN output), FPR_HANG_IN (sleeps forever),
FPR_INTERRUPT_IN (raises KeyboardInterrupt: a simulated Ctrl-C); FPR_NAN_WHEN / FPR_HANG_WHEN =
"generated" (only in Hypothesis-generated examples: a failure Hypothesis saves in its database and
shrinks) or "corners" (only in the explicit examples: found at once, never shrunk) or "" (always);
FPR_INTERRUPT_AFTER_NAN=n: the (n+1)-th NaN call raises KeyboardInterrupt (Ctrl-C while shrinking)."""
import os
import sys
import threading
import time

import torch
import torch.nn.functional as F

from mutants.peers import per_batch_element  # tests/ is on the path (conftest; PYTHONPATH for the CLI runs)

NAN_CALLS = [0]


def _sdpa(q, k, v, attn_mask, is_causal, scale, enable_gqa):
    def one(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)
    return per_batch_element(one, q, k, v, attn_mask) if q.shape[0] > 1 else one(q, k, v, attn_mask)


def _running():
    """The property this call is an example of: the suite runs each example in a thread named
    flashproof-example:<property> ("" outside the suite: load_target's probe, a replay without limit)."""
    name = threading.current_thread().name
    return name.split(":", 1)[1] if name.startswith("flashproof-example:") else ""


def _in(names):
    return _running() in names


def _in_any_property():
    return bool(_running())


def _generated():
    """Whether Hypothesis is generating, not running an explicit example (main thread's stack)."""
    f = sys._current_frames().get(threading.main_thread().ident)
    while f is not None:
        if f.f_code.co_name == "execute_explicit_examples":
            return False
        f = f.f_back
    return True


def _env(name):
    return [n for n in os.environ.get(name, "").split(",") if n]


def _when(var):
    when = os.environ.get(var, "")
    return not when or (when == "generated") == _generated()


def scripted(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    o = _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa)
    if _in(_env("FPR_INTERRUPT_IN")):
        raise KeyboardInterrupt
    if _in(_env("FPR_HANG_IN")) and _when("FPR_HANG_WHEN"):
        time.sleep(10 ** 6)
    if _in(_env("FPR_NAN_IN")) and _when("FPR_NAN_WHEN"):
        NAN_CALLS[0] += 1
        limit = os.environ.get("FPR_INTERRUPT_AFTER_NAN")
        if limit and NAN_CALLS[0] > int(limit):
            raise KeyboardInterrupt
        return torch.full_like(o, float("nan"))
    return o


def busy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if _in_any_property():
        while True:  # a pure-Python hang: the asynchronous exception stops it
            pass
    return _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def sleepy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if _in_any_property():
        time.sleep(10 ** 6)  # blocks in C: cannot be stopped, only abandoned
    return _sdpa(query, key, value, attn_mask, is_causal, scale, enable_gqa)


def hangs_on_load(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    time.sleep(10 ** 6)  # hangs in load_target's probe call too
'''


@pytest.fixture(scope="module")
def tdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fpr")
    (d / "fpr_targets.py").write_text(TARGETS)
    sys.path.insert(0, str(d))
    import fpr_targets  # noqa: F401  (imports torch now: the load-timeout test's 1 s alarm must not cut it short)
    yield d
    sys.path.remove(str(d))
    sys.modules.pop("fpr_targets", None)


@pytest.fixture
def scripted(tdir, monkeypatch):
    for var in ("FPR_NAN_IN", "FPR_HANG_IN", "FPR_INTERRUPT_IN", "FPR_INTERRUPT_AFTER_NAN", "FPR_NAN_WHEN",
                "FPR_HANG_WHEN"):
        monkeypatch.delenv(var, raising=False)
    import fpr_targets

    fpr_targets.NAN_CALLS[0] = 0
    return "fpr_targets:scripted"


def _statuses(res):
    return [(o.name, o.status) for o in res.outcomes]


# ============================================================================ time limit (in-process)
def test_busy_loop_is_stopped_and_the_run_goes_on(tdir):
    t0 = time.monotonic()
    res = run_suite("fpr_targets:busy", select=[B, C], example_timeout=1)
    took = time.monotonic() - t0
    assert _statuses(res) == [(B, TIMEOUT), (C, TIMEOUT)]  # the busy call was stopped: C still ran
    assert res.exit_code == EXIT_VIOLATION and res.failures == res.outcomes
    o = res[B]
    assert f"an example of {B!r} did not finish within the per-example time limit of 1 s" in o.message
    assert "inside a call of the target" in o.message and "its call was stopped" in o.message
    for word in ("shape: B=", "dtype", "seed:", "replay("):
        assert word in o.reproducer
    assert o.case is not None and o.examples == 1
    assert not any(th.is_alive() for th in res.abandoned)
    assert took < 10, took  # 2 x (1 s limit + the stop)


def test_sleeping_target_is_abandoned_and_the_rest_not_run(tdir):
    t0 = time.monotonic()
    res = run_suite("fpr_targets:sleepy", select=[B, C, D], example_timeout=1)
    took = time.monotonic() - t0
    assert _statuses(res) == [(B, TIMEOUT), (C, NOT_RUN), (D, NOT_RUN)]
    assert "could not be stopped" in res[B].message
    assert res[C].message.startswith(f"the target hung in {B!r}")
    assert res.exit_code == EXIT_VIOLATION
    assert any(th.is_alive() for th in res.abandoned)  # still asleep: abandoned, as documented
    assert took < 6, took
    t0 = time.monotonic()  # the reproducer's replay times out too
    with pytest.raises(TargetTimeout, match="did not finish within the per-example time limit of 0.5 s"):
        suite.replay(B, res[B].case, target="fpr_targets:sleepy", example_timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_a_target_that_hangs_while_loading(tdir, monkeypatch):
    monkeypatch.setattr(timeouts, "LOAD_TIMEOUT_FLOOR", 1.0)
    t0 = time.monotonic()
    with pytest.raises(TargetTimeout, match="the target did not load within 1 s"):
        run_suite("fpr_targets:hangs_on_load", select=[B], example_timeout=0.5)
    assert time.monotonic() - t0 < 5


def test_example_timeout_values():
    assert resolve_example_timeout(None, "ci") == PROFILES["ci"].example_timeout == 60
    assert resolve_example_timeout(None, "flashproof-deep") == PROFILES["deep"].example_timeout
    assert resolve_example_timeout(0, "ci") is None and resolve_example_timeout(float("inf")) is None
    assert resolve_example_timeout(2.5) == 2.5
    for bad, exc in ((-1, ValueError), (float("nan"), ValueError), ("3", TypeError), (True, TypeError)):
        with pytest.raises(exc, match="example_timeout"):
            run_suite("torch.nn.functional:scaled_dot_product_attention", select=[B], example_timeout=bad)
    with pytest.raises(ValueError, match="resume=True needs state_dir"):
        run_suite("torch.nn.functional:scaled_dot_product_attention", select=[B], resume=True)
    with pytest.raises(TypeError, match="state_dir"):
        run_suite("torch.nn.functional:scaled_dot_product_attention", select=[B], state_dir=3)


# ============================================================================ state files (in-process)
def test_state_dir_gets_a_gitignore_only_when_flashproof_creates_it(tmp_path):
    new = tmp_path / "new"
    prepare_state_dir(new)
    assert (new / ".gitignore").read_text().splitlines()[-1] == "*"
    prepare_state_dir(tmp_path)  # an existing folder (a checkout, say) is left as it is
    assert not (tmp_path / ".gitignore").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="state directory"):
        prepare_state_dir(tmp_path / "file")


def _db_entries(db: Path):
    return [p for p in db.rglob("*") if p.is_file()] if db.exists() else []


def test_reproducer_files_and_database_of_a_failure(scripted, monkeypatch, tmp_path):
    from flashproof.properties import profiles

    monkeypatch.setitem(profiles.PROFILES, "ci", profiles.PROFILES["ci"].replace(shrink_seconds=1))  # the file holds whatever shrinking reached: keep it short
    monkeypatch.setenv("FPR_NAN_IN", A)
    monkeypatch.setenv("FPR_NAN_WHEN", "generated")
    res = run_suite(scripted, select=[A], state_dir=tmp_path)
    o = res[A]
    assert o.status == FAILED and o.reproducer_file
    py = Path(o.reproducer_file)
    doc = json.loads(py.with_suffix(".json").read_text())
    assert py.parent == tmp_path / "reproducers" and py.name.startswith(f"{A}-")
    assert doc["minimal"] is True and doc["status"] == FAILED and doc["target"] == scripted
    assert case_from_repr(doc["case_repr"]) == o.case
    assert doc["case"]["type"] == "Case" and doc["case"]["problem"]["shape"]["type"] == "Shape"
    assert "NaN" in doc["message"]
    assert _db_entries(tmp_path / "hypothesis"), "the generated failure is saved in the Hypothesis database"
    # the file replays the case: it exits 1 against the target, 0 once the target is correct
    ns = {"__name__": "__main__"}
    with pytest.raises(SystemExit) as exit_:
        exec(compile(py.read_text(), str(py), "exec"), ns)
    assert exit_.value.code == 1
    ns = {"__name__": "not main"}
    exec(compile(py.read_text(), str(py), "exec"), ns)
    assert suite.replay(A, ns["CASE"], target="torch.nn.functional:scaled_dot_product_attention")


def test_reproducer_is_on_disk_before_shrinking_ends(scripted, monkeypatch, tmp_path):
    """Ctrl-C while Hypothesis shrinks: the first failing example is already saved (file and DB)."""
    monkeypatch.setenv("FPR_NAN_IN", A)
    monkeypatch.setenv("FPR_NAN_WHEN", "generated")
    monkeypatch.setenv("FPR_INTERRUPT_AFTER_NAN", "1")
    with pytest.raises(SuiteInterrupted) as exc:
        run_suite(scripted, select=[A, B], state_dir=tmp_path)
    res = exc.value.result
    assert res.interrupted and res.exit_code == EXIT_INTERRUPTED == 130
    assert _statuses(res) == [(A, NOT_RUN), (B, NOT_RUN)]
    (js,) = (tmp_path / "reproducers").glob(f"{A}-*.json")
    doc = json.loads(js.read_text())
    assert doc["minimal"] is False and "NaN" in doc["message"]
    assert _db_entries(tmp_path / "hypothesis")
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 1  # the header only: nothing finished


# ============================================================================ journal and resume (in-process)
def _journal(path: Path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return lines[0], [x for x in lines[1:] if "name" in x]


def test_resume_after_an_interrupt_covers_every_property_once(scripted, monkeypatch, tmp_path):
    monkeypatch.setenv("FPR_NAN_IN", A)
    monkeypatch.setenv("FPR_NAN_WHEN", "corners")  # found at once, no shrinking
    monkeypatch.setenv("FPR_INTERRUPT_IN", C)  # Ctrl-C while C runs
    seen = []
    with pytest.raises(SuiteInterrupted) as exc:
        run_suite(scripted, select=FOUR, state_dir=tmp_path, progress=seen.append)
    first = exc.value.result
    assert _statuses(first) == [(A, FAILED), (B, PASSED), (C, NOT_RUN), (D, NOT_RUN)]
    assert [o.name for o in seen] == [A, B] and first.exit_code == 130
    header, entries = _journal(tmp_path / "journal.jsonl")
    assert header["key"]["target"] == scripted and header["key"]["profile"] == "ci"
    assert [(e["name"], e["status"]) for e in entries] == [(A, FAILED), (B, PASSED)]

    monkeypatch.delenv("FPR_INTERRUPT_IN")
    notes = []
    second = run_suite(scripted, select=FOUR, state_dir=tmp_path, resume=True, notify=notes.append)
    assert _statuses(second) == [(A, FAILED), (B, PASSED), (C, PASSED), (D, PASSED)]
    assert [o.resumed for o in second.outcomes] == [True, True, False, False]
    assert second[A].case == first[A].case and second[A].message == first[A].message
    assert second[A].reproducer_file == first[A].reproducer_file
    assert notes == second.notes and "2 properties already finished" in notes[0]
    assert second.exit_code == EXIT_VIOLATION  # the resumed failure still counts
    assert "(resumed)" in second.table() and "2 resumed from the journal" in second.table()
    _, entries = _journal(tmp_path / "journal.jsonl")
    assert sorted(e["name"] for e in entries) == sorted(FOUR)  # each finished property once

    # a journal of another target or profile is not resumed silently
    other = run_suite("torch.nn.functional:scaled_dot_product_attention", select=[B], state_dir=tmp_path,
                      resume=True)
    assert not other[B].resumed and "from another run" in other.notes[0] and "target" in other.notes[0]
    header, entries = _journal(tmp_path / "journal.jsonl")
    assert header["key"]["target"] == "torch.nn.functional:scaled_dot_product_attention" and len(entries) == 1


def test_resume_reads_a_journal_cut_short_by_a_kill(scripted, tmp_path):
    run_suite(scripted, select=[B, C], state_dir=tmp_path)
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"name": "batch_inv')  # a kill in the middle of a write
    res = run_suite(scripted, select=[B, C, D], state_dir=tmp_path, resume=True)
    assert [o.resumed for o in res.outcomes] == [True, True, False] and res.exit_code == EXIT_OK
    # without resume a run starts a fresh journal
    run_suite(scripted, select=[D], state_dir=tmp_path)
    assert [e["name"] for e in _journal(tmp_path / "journal.jsonl")[1]] == [D]


# ============================================================================ the CLI and the plugin (subprocesses)
class _Proc:
    """A subprocess whose output is read by a thread, so a test can wait for a line."""

    def __init__(self, argv, env, cwd):
        self.p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    def wait_for(self, text, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(text in line for line in self.lines):
                return
            if self.p.poll() is not None and not self.t.is_alive():
                break
            time.sleep(0.05)
        self.p.kill()
        raise AssertionError(f"{text!r} never printed; output:\n{self.out}")

    def finish(self, timeout=120):
        rc = self.p.wait(timeout)
        self.t.join(10)
        return rc

    @property
    def out(self):
        return "".join(self.lines)


def _env(tdir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FPR_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(tdir), str(Path(__file__).parent)]
                                        + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def _check(*args):
    exe = [str(FLASHPROOF)] if FLASHPROOF.exists() else [sys.executable, "-m", "flashproof.cli"]
    return exe + ["check", "fpr_targets:scripted", *[a for n in FOUR for a in ("--select", n)], *args]


def test_cli_signals_resume_and_timeout(tdir, tmp_path):
    """SIGINT, SIGTERM and SIGKILL after the first failure is reported (B passed, C hangs): all
    keep the reproducer, the database and the journal; SIGINT/SIGTERM print what finished and exit
    130/143; --resume then runs only C and D; the reproducer file reproduces; a hang under
    --example-timeout 1 exits 1 at once."""
    # A fails in its explicit examples (no shrinking), but under SIGKILL in generated ones (saved in the DB)
    hang = _env(tdir, FPR_NAN_IN=A, FPR_NAN_WHEN="corners", FPR_HANG_IN=C)
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
    runs = {sig: _Proc(_check("--state-dir", f"st-{sig.name}"),
                       dict(hang, FPR_NAN_WHEN="generated") if sig == signal.SIGKILL else hang, tmp_path)
            for sig in sigs}
    t0 = time.monotonic()
    timeout = _Proc(_check("--state-dir", "st-timeout", "--example-timeout", "1"), hang, tmp_path)
    for sig, r in runs.items():
        r.wait_for(f"passed       {B}")
        time.sleep(0.3)  # inside C's hang now
        r.p.send_signal(sig)
    rc = {sig: r.finish() for sig, r in runs.items()}
    assert rc == {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: 128 + signal.SIGTERM,
                  signal.SIGKILL: -signal.SIGKILL}, {s.name: r.out for s, r in runs.items()}
    for sig in (signal.SIGINT, signal.SIGTERM):
        out = runs[sig].out
        assert f"INTERRUPTED ({sig.name}) after 2 of 4 properties" in out, out
        assert f"2 not run (the run was interrupted): {C}, {D}" in out and "--resume" in out and "Traceback" not in out
    assert _db_entries(tmp_path / "st-SIGKILL" / "hypothesis")
    for sig in sigs:
        st = tmp_path / f"st-{sig.name}"
        assert len(list((st / "reproducers").glob(f"{A}-*.py"))) == 1, sig
        assert [(e["name"], e["status"]) for e in _journal(st / "journal.jsonl")[1]] == [(A, FAILED), (B, PASSED)]
    assert timeout.finish() == EXIT_VIOLATION, timeout.out
    assert time.monotonic() - t0 < 60
    assert f"timeout      {C}" in timeout.out and "not run (the target hung in" in timeout.out
    assert "per-example time limit of 1 s" in timeout.out and "Traceback" not in timeout.out

    # resume the SIGINT run with a target that no longer hangs, and run the SIGKILL run's reproducer
    fixed = _env(tdir, FPR_NAN_IN=A, FPR_NAN_WHEN="corners")
    (py,) = (tmp_path / "st-SIGKILL" / "reproducers").glob(f"{A}-*.py")
    resume = _Proc(_check("--state-dir", "st-SIGINT", "--resume", "--json", "resumed.json"), fixed, tmp_path)
    repro = _Proc([sys.executable, str(py)], dict(fixed, FPR_NAN_WHEN="generated"), tmp_path)  # as that run
    assert repro.finish() == 1 and "reproduced: Violation" in repro.out, repro.out
    assert resume.finish() == EXIT_VIOLATION, resume.out  # A's recorded failure stands
    assert "resume: 2 properties already finished" in resume.out
    doc = json.loads((tmp_path / "resumed.json").read_text())
    assert [(o["name"], o["status"], o["resumed"]) for o in doc["outcomes"]] == [
        (A, FAILED, True), (B, PASSED, True), (C, PASSED, False), (D, PASSED, False)]


def test_plugin_timeout_fails_the_test_and_keeps_reproducers(tdir, tmp_path):
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flashproof.properties",
            "--flashproof-target=fpr_targets:scripted", "--flashproof-example-timeout=1",
            "--flashproof-state-dir=st", "-k", " or ".join(f"test_{n}" for n in (A, C, D))]
    # C hangs in its first generated example: Hypothesis saves that example in the database
    r = _Proc(argv, _env(tdir, FPR_NAN_IN=A, FPR_NAN_WHEN="corners", FPR_HANG_IN=C, FPR_HANG_WHEN="generated"),
              tmp_path)
    assert r.finish(timeout=300) == 1, r.out
    assert "2 failed, 1 skipped" in r.out and "TIMEOUT" in r.out and "reproducer file:" in r.out
    names = sorted(p.name.split("-")[0] for p in (tmp_path / "st" / "reproducers").glob("*.py"))
    assert names == sorted([A, C])
    assert _db_entries(tmp_path / "st" / "hypothesis")

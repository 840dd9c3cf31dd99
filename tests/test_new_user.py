"""Issue 15 as a new user meets it, in a fresh folder holding only their ``myattn.py`` (a copy of
tests/fakes/myattn.py), with no PYTHONPATH: ``flashproof check myattn:attention`` and ``pytest
--pyargs flashproof.properties --flashproof-target=myattn:attention`` both run the whole ci suite from
that folder with 0 failures and 0 errors; a planted bug (no max subtraction) fails with a reproducer
file; and that file's exit status is honest:

- 0: the property holds on the case now (the file pointed at the correct attention);
- 1: the violation is reproduced;
- 2: it could not run here, with the reason: the target module does not import (run from another
  folder), a package it imports is missing, its device is absent, flashproof itself does not import,
  the case is outside the target's declared domain.

replay() answers the same cases the same way: True, Violation, CouldNotRun.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashproof.properties import replay
from flashproof.properties.oracle import Violation
from flashproof.properties.registry import CouldNotRun

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PROP = "output_within_error_bound"

#: Modules beside myattn.py: a target whose device is absent, one whose import needs a missing package,
#: one whose declared domain excludes the reproducer's case.
MODULES = {
    "gpuonly.py": "from flashproof.properties.targets import Target\nfrom myattn import attention\n\n\n"
                  "def target():\n    return Target(name='gpuonly', sdpa=attention, devices=('cuda',))\n",
    "needs_pkg.py": "import fp_no_such_package  # noqa: F401\n\n\ndef attention(q, k, v):\n    return q\n",
    "narrow.py": "from flashproof.properties.targets import from_sdpa\nfrom myattn import attention\n\n\n"
                 "def target():\n    return from_sdpa(attention, name='narrow', min_lk=100, max_lk=200)\n",
}


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "PYTHONPATH"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(cmd, cwd, timeout=900):
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _shown(r):
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-4000:]}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    if not (BIN / "flashproof").exists() or not (BIN / "pytest").exists():
        pytest.skip(f"no flashproof / pytest executables beside {sys.executable} (install the package: make test)")
    d = tmp_path_factory.mktemp("myrepo")
    shutil.copy(HERE / "fakes" / "myattn.py", d / "myattn.py")
    for name, text in MODULES.items():
        (d / name).write_text(text)
    return d


@pytest.fixture(scope="module")
def planted(repo):
    """``flashproof check`` of the planted bug on one property, from the repo: its reproducer file."""
    r = _run([str(BIN / "flashproof"), "check", "myattn:no_max_subtraction", "--select", PROP, "--quiet"], repo)
    assert r.returncode == 1, _shown(r)
    (path,) = (repo / ".flashproof" / "reproducers").glob(f"{PROP}-*.py")
    return path


def test_a_new_user_runs_both_entry_points_from_their_repo_with_no_failure(repo):
    """The whole ci suite, no --select, from the repo's root: exit 0 from both, 0 failed and 0 errors."""
    check = subprocess.Popen([str(BIN / "flashproof"), "check", "myattn:attention", "--quiet"], cwd=repo, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    r = _run([str(BIN / "pytest"), "-p", "no:cacheprovider", "--pyargs", "flashproof.properties",
              "--flashproof-target=myattn:attention"], repo)
    out, err = check.communicate(timeout=900)
    assert check.returncode == 0, f"exit {check.returncode}\n{out[-4000:]}\n{err[-4000:]}"
    assert "judged by nan_policy 'ieee'" in out and re.search(r"\d+ passed", out), out[-2000:]
    assert not re.search(r"\b(failed|error)\b", out.split("-" * 8)[-1]), out[-3000:]
    assert r.returncode == 0, _shown(r)
    assert re.search(r"\d+ passed", r.stdout) and " failed" not in r.stdout and " error" not in r.stdout, r.stdout
    assert "judged by nan_policy 'ieee'" in r.stdout, r.stdout[:2000]


def test_the_planted_bug_reproduces_with_exit_1(repo, planted):
    r = _run([sys.executable, str(planted)], repo)
    assert r.returncode == 1 and "reproduced:" in r.stdout, _shown(r)
    text = planted.read_text()
    assert "exit 0: the property holds on this case; exit 1: the violation is reproduced" in text
    assert "exit 2: it could not run here" in text


def _with_target(planted, target, where):
    """The planted bug's reproducer file with TARGET set to ``target``, written into folder ``where``."""
    text = re.sub(r"^TARGET = .*$", f"TARGET = {target!r}", planted.read_text(), flags=re.M)
    path = Path(where) / f"repro_{abs(hash(target)) % 10 ** 6}.py"
    path.write_text(text)
    return path


def test_the_reproducer_exits_0_once_the_property_holds(repo, planted):
    r = _run([sys.executable, str(_with_target(planted, "myattn:attention", repo))], repo)
    assert r.returncode == 0 and "not reproduced: the property holds on this case" in r.stdout, _shown(r)


@pytest.mark.parametrize("target, where, why", [
    ("myattn:no_max_subtraction", "elsewhere", "cannot import module 'myattn'"),
    ("needs_pkg:attention", "repo", "No module named 'fp_no_such_package'"),
    ("gpuonly:target", "repo", "declares devices ('cuda',), none available here"),
    ("narrow:target", "repo", "outside narrow's declared domain"),
], ids=["target-does-not-load", "package-missing", "device-absent", "case-outside-the-domain"])
def test_the_reproducer_exits_2_when_it_cannot_run(repo, planted, tmp_path, target, where, why):
    if target.startswith("gpuonly") and torch.cuda.is_available():
        pytest.skip("a CUDA device is present here")
    folder = repo if where == "repo" else tmp_path
    r = _run([sys.executable, str(_with_target(planted, target, folder))], folder)
    assert r.returncode == 2, _shown(r)
    assert "could not run:" in r.stderr and why in r.stderr, _shown(r)
    assert "reproduced" not in r.stdout


def test_the_reproducer_exits_2_without_flashproof(repo, planted):
    r = _run([sys.executable, "-S", str(planted)], repo)  # -S: no site-packages, so no flashproof
    assert r.returncode == 2 and "could not run: ModuleNotFoundError" in r.stderr, _shown(r)


def test_replay_answers_the_same_cases_the_same_way(repo, planted, monkeypatch):
    """replay() from Python: True (holds), Violation (reproduced), CouldNotRun with the reason (cannot run)."""
    monkeypatch.chdir(repo)
    monkeypatch.syspath_prepend(str(repo))
    ns = {"__name__": "not main"}
    exec(compile(planted.read_text(), str(planted), "exec"), ns)
    case = ns["CASE"]
    assert replay(PROP, case, target="myattn:attention") is True
    with pytest.raises(Violation):
        replay(PROP, case, target="myattn:no_max_subtraction")
    for target, why in (("fp_no_such_module_abc:fn", "cannot import module"),
                        ("needs_pkg:attention", "fp_no_such_package"),
                        ("narrow:target", "outside narrow's declared domain")):
        with pytest.raises(CouldNotRun, match=why):
            replay(PROP, case, target=target)
    with pytest.raises(CouldNotRun, match="does not declare what 'lse_is_natural_log' needs"):
        replay("lse_is_natural_log", case, target="myattn:attention")
    if not torch.cuda.is_available():
        with pytest.raises(CouldNotRun, match="none available here"):
            replay(PROP, case, target="gpuonly:target")

"""The set-up behind README's two commands: the Makefile and the torch pin of a CPU-only install.

Bug (issue 16): the CPU-only install pinned torch==2.13.0+cpu, which plain PyPI does not serve, so
on an ordinary CPU machine `make audit` failed to resolve torch. constraints/pip_args.py keeps the
pin where pip's indexes serve it (this machine, CI) and otherwise falls back to the default torch
with one line saying so. Bug: the Makefile's .PHONY named check and bench, which had no recipes."""
import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "constraints", "pip_args.py")
CPU_TXT = os.path.join(REPO, "constraints", "cpu.txt")


def test_every_phony_target_has_a_recipe():
    text = open(os.path.join(REPO, "Makefile")).read()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    assert {"audit", "test"} <= set(phony)
    for name in phony:
        rule = re.search(rf"^{re.escape(name)}:[^\n]*\n((?:\t[^\n]*\n)+)", text, re.M)
        assert rule and rule.group(1).strip(), f".PHONY names {name!r}, which has no recipe"


def _pinned():
    return re.search(r"^torch==(\S+)", open(CPU_TXT).read(), re.M).group(1)


def _exe(path, body):
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _run(tmp_path, pip, *, gpu=False):
    """pip_args.py with a fake nvidia-smi (or none) first on PATH; (stdout, stderr lines, rc)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    smi = bin_ / "nvidia-smi"
    if gpu:
        _exe(smi, 'echo "GPU 0: NVIDIA H200 (UUID: GPU-0)"\n')
    else:
        _exe(smi, "echo 'NVIDIA-SMI has failed' >&2; exit 9\n")
    env = dict(os.environ, PATH=str(bin_) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run([sys.executable, SCRIPT, "--pip", pip], capture_output=True, text=True, env=env, timeout=600)
    return r.stdout.strip(), [ln for ln in r.stderr.splitlines() if ln.strip()], r.returncode


@pytest.mark.parametrize("listing,pinned", [
    ("torch (2.15.0)\nAvailable versions: 2.15.0, 2.14.1, {pin}, 2.13.0\n", True),   # this machine's indexes
    ("torch (2.15.0)\nAvailable versions: 2.15.0, 2.14.1, 2.13.0, 2.12.0\n", False),  # plain PyPI
])
def test_fake_pip_decides_the_pin(tmp_path, listing, pinned):
    pip = _exe(tmp_path / "pip", f"""
        [ "$1 $2 $3" = "index versions torch" ] || exit 3
        printf '%s' "{listing.format(pin=_pinned())}"
        echo 'WARNING: pip index is currently an experimental command.' >&2
    """)
    out, err, rc = _run(tmp_path, pip)
    assert rc == 0
    if pinned:
        assert out == f"-c {CPU_TXT}" and not [e for e in err if "flashproof" in e]
    else:
        assert out == "" and len([e for e in err if "flashproof" in e]) == 1
        line = next(e for e in err if "flashproof" in e)
        assert f"torch=={_pinned()}" in line and "default torch" in line and "download.pytorch.org/whl/cpu" in line


def test_no_pin_with_a_gpu(tmp_path):
    pip = _exe(tmp_path / "pip", "echo never asked >&2; exit 7\n")
    assert _run(tmp_path, pip, gpu=True) == ("", [], 0)


def test_pin_kept_when_pip_cannot_tell(tmp_path):
    """A pip without the `index` command cannot say: the pin stays (never GBs of CUDA wheels silently)."""
    pip = _exe(tmp_path / "pip", "echo 'ERROR: unknown command \"index\"' >&2; exit 1\n")
    out, err, rc = _run(tmp_path, pip)
    assert (out, rc) == (f"-c {CPU_TXT}", 0) and not [e for e in err if "flashproof" in e]


@pytest.mark.parametrize("served", [True, False])
def test_real_pip_against_a_fake_index(tmp_path, served):
    """pip itself, offline, its only index a folder of (empty) wheel files: with the +cpu build the
    pin is used; with only plain builds (what PyPI serves) the fallback and its one line."""
    idx = tmp_path / "index"
    idx.mkdir()
    (idx / "torch-2.14.0-py3-none-any.whl").write_bytes(b"")
    (idx / "torch-2.13.0-py3-none-any.whl").write_bytes(b"")
    if served:
        (idx / f"torch-{_pinned()}-py3-none-any.whl").write_bytes(b"")
    pip = _exe(tmp_path / "pip", f"""
        PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_FIND_LINKS={idx} exec {sys.executable} -m pip "$@"
    """)
    out, err, rc = _run(tmp_path, pip)
    assert rc == 0
    assert (out == f"-c {CPU_TXT}") == served
    assert len([e for e in err if e.startswith("flashproof:")]) == (0 if served else 1), err


def test_makefile_installs_with_the_scripts_arguments():
    """`make -n` shows the install taking pip_args.py's answer, failing when the script fails."""
    r = subprocess.run(["make", "-n", "-B", "-C", REPO, ".venv/bin/.installed"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "pip_args.py" in ln)
    assert re.search(r'args="\$\(.*constraints/pip_args\.py --pip \S+\)" && \S+ install -q \$args -e "?\.(\[test\])?"?', line), line

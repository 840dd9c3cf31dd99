#!/usr/bin/env python3
"""Print the pip arguments that pin torch for the Makefile's install (README's two commands).

- A CUDA GPU (``nvidia-smi -L`` lists one): nothing; pip installs torch's default build.
- No GPU, and pip's configured indexes serve the CPU build pinned in cpu.txt (this machine, CI,
  or ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``): ``-c <path of cpu.txt>``.
- No GPU, and no index serves it (plain PyPI has no ``+cpu`` builds): nothing, and ONE line on
  stderr saying the default torch is installed instead (on Linux, several GB of CUDA wheels)
  and how to get the CPU build.

Whether the build is served is what ``pip index versions torch`` lists, with pip's own
configuration (indexes, find-links, PIP_* variables). When pip cannot answer at all (no
``index`` command) the pin is kept, so a machine that cannot tell never pulls GBs silently.

Usage: python3 constraints/pip_args.py [--pip PIP]   (PIP: the pip executable to ask; default
this interpreter's ``-m pip``). Exit 0; 2 on a bad cpu.txt.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

__all__ = ["has_gpu", "pinned_torch", "served_versions", "pip_args", "main", "CPU_INDEX"]

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_TXT = os.path.join(HERE, "cpu.txt")
#: the CPU wheel index README points pip at
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def has_gpu() -> bool:
    """Whether ``nvidia-smi -L`` runs and succeeds (the Makefile's test for a CUDA GPU)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def pinned_torch(path=CPU_TXT) -> str:
    """The version cpu.txt pins torch to (``torch==X``); ValueError if it pins none."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\s*torch\s*==\s*([^\s;#]+)", line)
            if m:
                return m.group(1)
    raise ValueError(f"{path} pins no torch version (a line 'torch==X' is expected)")


def served_versions(pip) -> list | None:
    """Versions of torch pip's configured indexes offer ([] when none), or None when pip cannot say."""
    try:
        r = subprocess.run([*pip, "index", "versions", "torch"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^Available versions:\s*(.*)$", r.stdout, re.M)
    if m:
        return [v.strip() for v in m.group(1).split(",") if v.strip()]
    if "No matching distribution" in r.stdout + r.stderr:
        return []
    return None  # e.g. a pip without the `index` command


def pip_args(pip, *, gpu=None, cpu_txt=CPU_TXT, warn=print) -> list:
    """The arguments for ``pip install ... -e .`` (see the module docstring)."""
    if has_gpu() if gpu is None else gpu:
        return []
    want = pinned_torch(cpu_txt)
    served = served_versions(pip)
    if served is None or want in served:
        return ["-c", cpu_txt]
    warn(f"flashproof: no GPU, and pip's indexes do not serve torch=={want} (plain PyPI has no +cpu builds): "
         f"installing the default torch instead (on Linux several GB of CUDA wheels); for the CPU build run "
         f"PIP_EXTRA_INDEX_URL={CPU_INDEX} make ...")
    return []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pip", default=None, help="the pip executable to ask (default: this interpreter's -m pip)")
    args = ap.parse_args(argv)
    pip = [args.pip] if args.pip else [sys.executable, "-m", "pip"]
    try:
        out = pip_args(pip, warn=lambda line: print(line, file=sys.stderr))
    except (OSError, ValueError) as exc:
        print(f"constraints/pip_args.py: {exc}", file=sys.stderr)
        return 2
    print(" ".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The property suite under pytest-xdist (``pytest -n N --pyargs flashproof.properties``): the same
verdicts as a serial run, one length decision for all workers, each property in one worker, each
worker's device reported; and the plugin's per-worker GPU assignment and options.

The GPU side (each worker on its own GPU, or both on the one GPU) is run on the GPU machines:
docs/gpu-runs.md, "pytest-xdist".
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from flashproof.properties import plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH = "torch.nn.functional:scaled_dot_product_attention"
#: one or two properties of each catalogue (forward, invariance, precision, determinism, masks), the
#: declared-not and skipped kinds included: what the suite does for torch's SDPA on the CPU
SUBSET = ("output_within_error_bound or tail_tiles or kv_permutation or duplicate_key or ones_values or "
          "fp32_stays or batch_invariant or reruns_bitwise or fully_masked or garbage_in_masked or nan_propagates "
          "or lse_is_natural or long_context")


def _pytest(tmp_path, name, *extra):
    report = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flashproof.properties",
           f"--flashproof-target={TORCH}", "--hypothesis-profile=ci", "-k", SUBSET,
           f"--flashproof-state-dir={tmp_path / name}", f"--flashproof-report={report}", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return json.loads(report.read_text()), r.stdout


def test_two_workers_give_the_serial_verdicts(tmp_path):
    pytest.importorskip("xdist")
    serial, _ = _pytest(tmp_path, "serial")
    par, out = _pytest(tmp_path, "par", "-n", "2")
    verdict = lambda doc: {p["property"]: p["status"] for p in doc["properties"]}  # noqa: E731
    assert len(serial["properties"]) >= 12 and verdict(par) == verdict(serial)
    assert len(par["properties"]) == len(set(verdict(par)))  # each property ran in exactly one worker
    assert set(par["workers"]) == {"gw0", "gw1"} and {p["worker"] for p in par["properties"]} == {"gw0", "gw1"}
    # one length decision for the session: every worker draws from the same level (and here the serial
    # run's, torch's SDPA being far below every threshold)
    assert par["max_len"] == serial["max_len"] == [512], (par["max_len"], serial["max_len"])
    assert len({json.dumps(w["length"], sort_keys=True) for w in par["workers"].values()}) == 1
    for wid, w in par["workers"].items():
        assert w["device"] == "cpu" and f"worker {wid}: target" in out
    decision = json.loads((tmp_path / "par" / "length-budget.json").read_text())
    assert decision["key"]["target"] == TORCH and decision["decision"]["max_len"] == 512


def test_bad_plugin_options_are_usage_errors(tmp_path):
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--pyargs", "flashproof.properties",
            "-k", "lse_is_natural_log", f"--flashproof-target={TORCH}"]
    for opt, msg in (("--flashproof-max-len=0", "--flashproof-max-len must be a positive number of keys"),
                     ("--flashproof-max-len=lots", "--flashproof-max-len must be a positive number of keys"),
                     (f"--flashproof-report={tmp_path}", "not a writable file path")):
        r = subprocess.run(base + [opt], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 4 and msg in r.stderr, (opt, r.returncode, r.stdout[-2000:], r.stderr[-2000:])


def test_pinned_max_len_and_the_memory_table(tmp_path):
    doc, out = _pytest(tmp_path, "pinned", "--flashproof-max-len=64", "--flashproof-memory", "-k", "ones_values")
    assert doc["max_len"] == [64] and doc["workers"]["main"]["length"]["how"] == "pinned"
    assert "max_len 64 (pinned; the profile's is 40)" in out
    assert "device memory: not measured (no CUDA device" in out


# ----------------------------------------------------------------------------- GPU per worker
def _node(wid, config):
    return types.SimpleNamespace(gateway=types.SimpleNamespace(id=wid), workerinput={}, config=config)


def test_each_worker_gets_its_own_gpu_when_several_are_visible(monkeypatch):
    for visible, want in ((["0", "1"], {"gw0": ("0", 0), "gw1": ("1", 1), "gw2": ("0", 0)}),
                          (["GPU-aa", "GPU-bb", "GPU-cc"], {"gw0": ("GPU-aa", 0), "gw1": ("GPU-bb", 1),
                                                           "gw2": ("GPU-cc", 2)}),
                          (["3"], {}), ([], {})):
        monkeypatch.setattr(plugin, "_visible_cuda", lambda v=visible: list(v))
        config = types.SimpleNamespace()
        got = {}
        for wid in ("gw0", "gw1", "gw2"):
            node = _node(wid, config)
            plugin.pytest_configure_node(node)
            if "flashproof_cuda" in node.workerinput:
                got[wid] = node.workerinput["flashproof_cuda"]
        assert got == want, visible


def test_a_worker_takes_its_gpu_before_cuda_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    config = types.SimpleNamespace(workerinput={"workerid": "gw1", "flashproof_cuda": ("1", 1)})
    plugin._take_worker_device(config)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    plugin._take_worker_device(types.SimpleNamespace(workerinput={"workerid": "gw0"}))  # one GPU: shared, untouched
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_visible_cuda_follows_the_environment(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    assert plugin._visible_cuda() == ["4", "6"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert plugin._visible_cuda() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert plugin._visible_cuda() == []

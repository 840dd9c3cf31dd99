"""On a CUDA GPU: device memory over a run of the property suite, the long-context property on a
full device, and pytest-xdist workers' devices (issue 18). Skipped without a GPU (CI has none);
the CPU side of each is in tests/test_memory.py and tests/test_xdist.py, the commands and results
in docs/gpu-runs.md.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (device memory, GPUs per worker)"),
]

#: properties that allocate the most (the long context at > 2^31 elements, split-KV decode, the
#: backward) and a few of every catalogue
HEAVY = ["long_context_sampled_rows", "output_within_error_bound", "tilings_agree", "split_counts_agree",
         "paged_garbage_in_unused_pages", "gradients_match_reference", "batch_invariant", "kv_permutation_invariant",
         "garbage_in_padding_isolated"]


def test_suite_retains_no_device_memory():
    """Two passes of the heavy properties in one process (gpu profile, flashproof's kernel): every
    property's peak is measured, and the second pass retains nothing: whatever the first left
    allocated (one-time caches: cuBLAS workspaces, the kernel's own) does not grow with more runs."""
    from flashproof.properties import run_suite

    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    first = run_suite(None, profile="gpu", select=HEAVY)
    after_first = torch.cuda.memory_allocated()
    second = run_suite(None, profile="gpu", select=HEAVY)
    after_second = torch.cuda.memory_allocated()
    print(first.table(), second.table(), sep="\n\n")
    for res in (first, second):
        assert not res.failures and not res.errors, res.details()
        ran = [o for o in res.outcomes if o.status == "passed"]
        assert ran and all(o.peak_bytes is not None and o.peak_bytes > 0 for o in ran), \
            [(o.name, o.peak_bytes) for o in ran]
    grown = {o.name: o.retained_bytes for o in second.outcomes if o.retained_bytes}
    assert after_second <= after_first and not {k: v for k, v in grown.items() if v > 0}, (
        f"allocated: start {start}, after pass 1 {after_first}, after pass 2 {after_second}; "
        f"retained per property in pass 2: {grown}")


def test_long_context_skips_with_its_need_on_a_full_device():
    """With the device filled to a few GB free, the long-context property is skipped with its need,
    never an out-of-memory error or an ERROR row; with the memory back, it runs."""
    from flashproof.properties import run_suite

    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    ballast = torch.empty(max(0, free - 6 * 10 ** 9), dtype=torch.uint8, device="cuda")
    try:
        res = run_suite(None, profile="gpu", select=["long_context_sampled_rows"])
    finally:
        del ballast
        torch.cuda.empty_cache()
    (o,) = res.outcomes
    assert o.status == "skipped" and re.match(r"needs [0-9.]+ GB, [0-9.]+ free \(of ", o.message), o.message
    res = run_suite(None, profile="gpu", select=["long_context_sampled_rows"])
    assert res.outcomes[0].status in ("passed", "skipped"), res.details()
    print(res.outcomes[0].status, res.outcomes[0].message, res.outcomes[0].peak_bytes)


def test_xdist_workers_devices(tmp_path):
    """pytest -n 2 on this machine's GPUs: the run passes; with one GPU both workers name the same
    device, with two or more each names its own."""
    pytest.importorskip("xdist")
    report = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--pyargs",
           "flashproof.properties", "--hypothesis-profile=gpu", "-k",
           "output_within_error_bound or tilings_agree or kv_permutation or batch_invariant or garbage_in_padding",
           f"--flashproof-state-dir={tmp_path / 'state'}", f"--flashproof-report={report}"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
    print(r.stdout[-3000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    workers = json.loads(report.read_text())["workers"]
    devices = {wid: w["device"] for wid, w in workers.items()}
    assert set(devices) == {"gw0", "gw1"}, devices
    if torch.cuda.device_count() == 1:
        assert len(set(devices.values())) == 1 and next(iter(devices.values())).startswith("cuda:0"), devices
    else:
        assert len(set(devices.values())) == 2, devices
        assert {w["cuda_visible_devices"] for w in workers.values()} != {os.environ.get("CUDA_VISIBLE_DEVICES")}

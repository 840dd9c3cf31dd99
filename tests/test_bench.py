"""`flashproof bench`'s output naming, without a GPU (the timing itself is faked).

Bug (issue 16): bench always wrote h100.md into benchmarks/results by default, so a run on any GPU
inside the repo overwrote the committed table. It names its table after the device it ran on and
writes under --out, by default a folder of its own."""
import hashlib
import os

import pytest

from flashproof import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name,slug", [("NVIDIA H200", "h200"), ("NVIDIA H100 80GB HBM3", "h100"),
                                       ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx-4090"),
                                       ("NVIDIA H100 PCIe", "h100"), ("AMD Instinct MI300X", "mi300x"),
                                       ("", "gpu"), ("../..", "gpu")])
def test_device_slug(name, slug):
    assert bench.device_slug(name) == slug
    assert bench.table_path("d", name) == os.path.join("d", slug + ".md")


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch says an 'NVIDIA H200' is there, and bench() returns one timed row and no decode rows."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    row = dict(impl="flashproof", dtype="bfloat16", B=1, H=16, L=1024, E=128, causal=False, pass_="fwd", ms=1.0,
               tflops=100.0)
    monkeypatch.setattr(bench, "bench", lambda **kw: ([row], []))


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_bench_names_its_table_after_the_device_and_writes_under_out(fake_gpu, tmp_path, monkeypatch, capsys):
    from flashproof.cli import main

    committed = os.path.join(REPO, "benchmarks", "results", "h100.md")
    before = _digest(committed)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 0  # the default --out
    assert (tmp_path / bench.DEFAULT_OUT / "h200.md").exists()
    assert "NVIDIA H200" in (tmp_path / bench.DEFAULT_OUT / "h200.md").read_text()
    assert not (tmp_path / "benchmarks").exists()
    assert main(["bench", "--quick", "--out", str(tmp_path / "elsewhere")]) == 0
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["bench.json", "h200.md", "tflops_vs_L.png"]
    assert "h200.md" in capsys.readouterr().out
    assert _digest(committed) == before


def test_bench_checks_out_before_running(fake_gpu, tmp_path, monkeypatch, capsys):
    from flashproof.cli import main

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(bench, "bench", lambda **kw: pytest.fail("bench ran before --out was checked"))
    assert main(["bench", "--out", str(tmp_path / "file" / "sub")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_decode_table_has_both_ways_of_calling_for_both_implementations(tmp_path, monkeypatch):
    """Issue 17: the decode table shows eager and replayed GB/s for ours and SDPA flash, and their ratios;
    a paged row is compared with the contiguous row's flash."""
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    nb = 1e6
    drows = [dict(B=8, Lk=4096, paged=False, bytes=nb, ms=0.001, ms_eager=0.004, gbs=1000.0, gbs_eager=250.0,
                  frac_copy=0.25, flash_ms=0.002, flash_ms_eager=0.002),
             dict(B=8, Lk=4096, paged=True, bytes=nb, ms=0.001, ms_eager=0.001, gbs=1000.0, gbs_eager=1000.0,
                  frac_copy=0.25),
             dict(copy_gbs=4000.0)]
    path = bench.write_tables([], drows, str(tmp_path), command="flashproof bench --quick")
    text = open(path).read()
    assert "| 8 | 4096 | 0 | 250 | 1000 | 25% | 500 | 500 | 0.50x | 2.00x |" in text
    assert "| 8 | 4096 | 1 | 1000 | 1000 | 25% | 500 | 500 | 2.00x | 2.00x |" in text


def test_small_grid_table_has_eager_and_replayed_for_ours_and_flash(tmp_path, monkeypatch):
    """Issue 17, goal 3: the small-grid causal rows show eager and replayed TFLOP/s for ours and SDPA
    flash, so a host-bound ratio and a GPU-bound one read apart."""
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    base = dict(dtype="bfloat16", B=1, H=16, L=1024, E=128, causal=True, pass_="fwd", grid="small")
    rows = [dict(base, impl="flashproof", ms=2.0, tflops=50.0, ms_graph=1.0, tflops_graph=100.0),
            dict(base, impl="sdpa-flash", ms=1.0, tflops=100.0, ms_graph=2.0, tflops_graph=50.0),
            dict(base, impl="sdpa-cudnn", ms=1.0, tflops=100.0)]
    monkeypatch.setattr(bench, "_plot", lambda rows, out: None)
    text = open(bench.write_tables(rows, [], str(tmp_path), command="flashproof bench --quick")).read()
    assert "| 1024 | 1×16 | 50 | 100 | 100 | 50 | 0.50x | 2.00x |" in text

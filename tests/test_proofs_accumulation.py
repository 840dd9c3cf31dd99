"""proofs/accumulation.py: the block-FMA model's names, its unit, and the probe that identifies a
device's matrix unit from bit-exact results (benchmarks/accumulation_probe.py runs it on a GPU)."""
from fractions import Fraction

import numpy as np
import pytest

from flashproof.proofs import accumulation as acc
from flashproof.proofs import kernel_sim as ks


@pytest.mark.parametrize("name,ok", [("fp32", True), ("fp32_rz", True), ("same", True), ("fp64", True),
                                     ("fp32_blockfma_k8_x0_rz", True), ("fp32_blockfma_k16_x3_rn", True),
                                     ("fp32_blockfma_k0_x0_rz", False), ("fp32_blockfma_k8_x0_rd", False),
                                     ("blockfma", False), ("fp16", False)])
def test_names(name, ok):
    if ok:
        m = acc.mma_model(name, u_acc=2.0 ** -24)
        assert m.k >= 1 and 0 < m.u < 1e-5
    else:
        with pytest.raises(ValueError, match="accumulator"):
            acc.mma_model(name, u_acc=2.0 ** -24)


def test_block_name_validation():
    assert acc.block_fma_name(8, 0, "rz") == "fp32_blockfma_k8_x0_rz"
    for bad in (dict(k=0, extra_bits=0, final="rz"), dict(k=8, extra_bits=-1, final="rz"),
                dict(k=8, extra_bits=0, final="up")):
        with pytest.raises(ValueError):
            acc.block_fma_name(**bad)


def test_vectorised_block_fma_is_bit_exact():
    rng = np.random.default_rng(0)
    for _ in range(150):
        m = int(rng.integers(1, 25))
        kb, x, fin = int(rng.choice([1, 2, 4, 8, 16])), int(rng.choice([0, 1, 3])), str(rng.choice(["rn", "rz"]))
        a = ks.round_to(rng.standard_normal(m) * 2.0 ** rng.integers(-8, 8, size=m), "bfloat16").astype(float)
        b = ks.round_to(rng.standard_normal(m), "bfloat16").astype(float)
        c = np.float32(rng.standard_normal() * 2.0 ** rng.integers(-4, 4))
        got = ks.block_fma(np.array(c), a, b, k_blk=kb, extra_bits=x, final=fin)
        ref = acc.simulate_block_fma(Fraction(float(c)), [Fraction(float(t)) for t in a],
                                     [Fraction(float(t)) for t in b], k=kb, extra_bits=x, final=fin)
        assert Fraction(float(got)) == ref, (m, kb, x, fin)


@pytest.mark.parametrize("truth", [(8, 0, "rz"), (4, 3, "rn"), (16, 1, "rz"), (1, 30, "rn"), (64, 2, "rn")])
def test_probe_identifies_the_model(truth):
    bat = acc.probe_battery("float16", seed=3, calls=4)
    ok, name = acc.consistent_models(bat, acc.simulate_probe(bat, truth))
    assert truth in ok
    k, x, f = acc.BLOCK_FMA_RE.match(name).groups()
    declared = (int(k), int(x), f)
    for m in (1, 16, 64, 128, 1000):  # the declared model's count x unit covers the truth's at every length
        assert ((m - 1) / declared[0] + 1) * acc.block_fma_unit(*declared) >= \
            -(-m // truth[0]) * acc.block_fma_unit(*truth) * (1 - 1e-12) or declared == truth


def test_probe_rejects_a_unit_outside_the_family():
    """An IEEE fp32 pairwise (tree) sum is no block FMA: nothing matches, nothing is declared."""
    bat = acc.probe_battery("float16", seed=4, calls=2)

    def tree(x):
        while x.shape[-1] > 1:
            if x.shape[-1] % 2:
                x = np.concatenate([x, np.zeros(x.shape[:-1] + (1,), np.float32)], -1)
            x = (x[..., 0::2] + x[..., 1::2]).astype(np.float32)
        return x[..., 0]

    obs = [tree(np.concatenate([c[:, None], a.astype(np.float32)], -1)) for c, a in bat]
    ok, name = acc.consistent_models(bat, obs)
    assert ok == [] and name is None, ok

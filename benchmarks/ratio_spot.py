"""A same-run spot check of a kernel change's speed: flashproof against SDPA flash and cuDNN at a few rows
of `flashproof bench --quick`, timed as the bench times them (bf16, E=128, H=16).

    python3 benchmarks/ratio_spot.py

Prints one line per row with both ratios, to set beside the full bench table's (benchmarks/results/<gpu>.md)
when a change is too small to rerun the whole bench.
"""
from __future__ import annotations

import sys

ROWS = [(4096, 8, False, False), (4096, 8, True, False), (4096, 8, False, True), (4096, 8, True, True),
        (1024, 32, True, False), (1024, 32, True, True), (1024, 16, True, False)]  # (L, B, causal, backward)


def main():
    import torch

    from flashproof.bench import _impls, _time, attention_flops

    impls = {n: f for n, f in _impls().items() if n in ("flashproof", "sdpa-flash", "sdpa-cudnn")}
    for L, b, causal, backward in ROWS:
        q, k, v = (torch.randn(b, 16, L, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        fl = attention_flops(b, 16, L, L, 128, causal=causal, backward=backward)
        t = {n: fl / _time(f, backward=backward, q=q, k=k, v=v, c=causal) / 1e9 for n, f in impls.items()}
        print(f"L{L} B{b} causal={int(causal)} {'bwd' if backward else 'fwd'}: " + " ".join(
            f"{n} {x:.0f}" for n, x in t.items()) + f" | vs flash {t['flashproof'] / t['sdpa-flash']:.2f}x"
              f" vs cuDNN {t['flashproof'] / t['sdpa-cudnn']:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reproducer: torch SDPA's flash backend on head-dim rows that are not 16-byte aligned.

    python3 benchmarks/repro_flash_misaligned.py            # runs each variant in a subprocess

Found by the gpu profile's garbage_in_padding_isolated property (fp16, E=40 stored in rows of 45
elements: a view of a padded buffer, last-dim stride 1). Each variant runs in its own process
because a CUDA error poisons the context. Prints one line per variant: ok / the error.
"""
import subprocess
import sys

CHILD = r'''
import sys, torch
from torch.nn.attention import SDPBackend, sdpa_kernel
pad, hkv = int(sys.argv[1]), int(sys.argv[2])
e, h = 40, 2
def view(b, hh, n):
    buf = torch.randn(b, hh, n, e + pad, device="cuda", dtype=torch.float16)
    return buf[..., :e]
q, k, v = view(1, h, 7), view(1, hkv, 21), view(1, hkv, 21)
with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != h)
torch.cuda.synchronize()
ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=hkv != h)
print("ok, max|diff| vs math fp32 =", float((o.float() - ref).abs().max()))
'''

if __name__ == "__main__":
    for pad, hkv in ((5, 1), (5, 2), (8, 1), (8, 2), (0, 1)):
        r = subprocess.run([sys.executable, "-c", CHILD, str(pad), str(hkv)], capture_output=True, text=True)
        last = (r.stdout.strip().splitlines() or r.stderr.strip().splitlines() or ["?"])[-1]
        err = next((l for l in r.stderr.splitlines() if "Error" in l), "")
        print(f"row stride {40 + pad} elements, Hkv={hkv} (H=2): rc={r.returncode} {err or last}", flush=True)

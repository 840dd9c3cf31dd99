"""The kernels build for the H100 (sm_90) on a CPU-only machine.

CI runs the kernels only under the interpreter, which accepts code that the compiler rejects
(e.g. non-constexpr globals, found this way). Triton's bundled ptxas builds the code for
sm_90 without a GPU; this test builds each kernel once, in a subprocess with
TRITON_INTERPRET=0 (this process already runs interpreted).
"""
import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent('''
    import os, sys, tempfile
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import flashproof.kernels  # noqa: F401
    A = sys.modules["flashproof.kernels.attention"]
    D = sys.modules["flashproof.kernels.decode"]
    ptr = {n: "*bf16" for n in "Q K V BIAS O DO DQ DK DV".split()}
    ptr.update({n: "*fp32" for n in "LSE2 DELTA DLSE MS ACC LS".split()}, SEQLENS="*i32", BT="*i32", RERUN="*i32")
    floats = {"QK_SCALE", "OUT_SCALE", "DS_SCALE"}

    def build(fn, consts, desc=(), tag="", **opts):
        sig = {n: "constexpr" if n in consts else desc[n] if n in desc else ptr.get(n) or ("fp32" if n in floats
               else "i64" if n.startswith("s") else "i32") for n in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=4, num_stages=2, enable_fp_fusion=False, **opts))
        print(fn.__name__ + tag, "smem", k.metadata.shared, flush=True)
        return k

    c = dict(E=40, EV=24, BLOCK_M=32, BLOCK_N=32, BLOCK_DK=64, BLOCK_DV=32, HAS_LEFT=True, HAS_RIGHT=True,
             SOFTCAP=True, HAS_BIAS=True, PRECISION="tf32", UPCAST=False)
    # K, V (Q, dO in dK/dV) as tensor descriptors of [1, 1, rows, head block] (attention._tma_descriptor)
    kv = {"K": "tensordesc<bf16[1, 1, 32, 64]>", "V": "tensordesc<bf16[1, 1, 32, 32]>"}
    qdo = {"Q": "tensordesc<bf16[1, 1, 32, 64]>", "DO": "tensordesc<bf16[1, 1, 32, 32]>"}
    for exact in (False, True):  # the fast pass and the exact pass (blocks.rerun_flag)
        for tma in (False, True):
            build(A._fwd_kernel, dict(c, EXACT=exact, TMA=tma), kv if tma else ())
            build(A._bwd_dq_kernel, dict(c, KAHAN=False, EXACT=exact, TMA=tma), kv if tma else ())
            build(A._bwd_dkdv_kernel, dict(c, KAHAN=True, EXACT=exact, TMA=tma, COMPUTE_DK=True, COMPUTE_DV=True),
                  qdo if tma else ())
        # the split dK/dV kernels (tiles.backward_split): one accumulator each, the other compiled out
        for dk_only in (False, True):
            build(A._bwd_dkdv_kernel, dict(c, KAHAN=exact, EXACT=exact, TMA=not exact, COMPUTE_DK=dk_only,
                                           COMPUTE_DV=not dk_only), qdo if not exact else (),
                  tag=" dk" if dk_only else " dv")
    build(A._bwd_delta_kernel, dict(EV=24, BLOCK_M=32, BLOCK_DV=32, HAS_DLSE=True))
    for page_tiles in (False, True):
        build(D._decode_kernel, dict(E=40, EV=24, BLOCK_M=16, BLOCK_N=32, BLOCK_DK=64, BLOCK_DV=32, HAS_LEFT=True,
                                     HAS_RIGHT=True, BOTTOM_RIGHT=True, SOFTCAP=False, HAS_SEQLENS=True, PAGED=True,
                                     PAGE_TILES=page_tiles, FINALIZE=False, PRECISION="tf32", UPCAST=False))
    build(D._merge_kernel, dict(EV=24, BLOCK_M=16, BLOCK_DV=32, UPCAST=False))
    # JITFunction.run compiles with debug = the decorator's flag (or TRITON_DEBUG); ASTSource needs it given
    k = build(D._check_kernel, dict(HAS_SEQLENS=True, PAGED=True, BLOCK_P=256), debug=D._check_kernel.debug)
    print("_check_kernel asserts", k.asm["ptx"].count("call.uni __assertfail"), flush=True)
''')


def test_kernels_build_for_sm90():
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("this triton build has no NVIDIA backend (no ptxas) to compile with")
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    for name in ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_bwd_delta_kernel", "_decode_kernel",
                 "_merge_kernel", "_check_kernel", "_bwd_dkdv_kernel dk", "_bwd_dkdv_kernel dv"):
        assert name in r.stdout, r.stdout
    # decode's device check: its two asserts (seqlens, pages) are in the code; no int32 overflow
    # asserts (which debug=True adds to int32 arithmetic) beside them
    assert "_check_kernel asserts 2\n" in r.stdout, r.stdout

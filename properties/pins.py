"""Counterexamples found against real targets, pinned as explicit examples of their property.

Each runs first, on every target whose declared capabilities can express it (registry.pinned_cases),
so a regression is caught deterministically even at the ci profile's few generated examples.
"""
from .cases import Case, MaskSpec, Problem, Regime, Shape
from .registry import pin

__all__ = []

# flashproof.kernels (interpreter): bf16 conversions truncate; 2 ulps over a round-to-nearest bound.
pin("output_within_error_bound",
    Case(problem=Problem(shape=Shape(lq=2, lk=2), dtype="bfloat16", mask=MaskSpec(causal="top_left"))),
    Case(problem=Problem(shape=Shape(lq=16, lk=15, e=8, ev=8), dtype="bfloat16", regime=Regime("large", 0.0, 30.0),
                         softcap=5.0)),
    found="flashproof.kernels under TRITON_INTERPRET=1 (bf16 truncation, now modelled)")
pin("kv_permutation_invariant",
    Case(problem=Problem(shape=Shape(batch=2, heads=2, lq=16, lk=13, ev=8), dtype="bfloat16", regime=Regime("ties"),
                         mask=MaskSpec(attn_mask="bool", density=0.7, empty_rows=2, full=True), scale=1.0, seed=9363),
         extra=(("perm_seed", 1432),)),
    found="flashproof.kernels under TRITON_INTERPRET=1 (bf16 truncation)")

# flashproof.kernels: NaN in keys/values masked only by attn_mask leaks through the bias path.
_GARBAGE_PIN = Case(problem=Problem(shape=Shape(heads=2, lq=5, lk=37), mask=MaskSpec(attn_mask="bool", density=0.8),
                                    seed=602), extra=(("via", "attn_mask_columns"), ("garbage", "nan"), ("where", "kv")))
pin("garbage_in_masked_keys_isolated", _GARBAGE_PIN, found="flashproof.kernels (attn_mask bias path) and torch CPU SDPA")
# the same case under nan_policy="ieee" (which allows that leak within the head, and nothing else)
pin("garbage_in_masked_keys_ieee", Case(problem=_GARBAGE_PIN.problem, extra=_GARBAGE_PIN.extra + (("slice_seed", 0),)),
    found="flashproof.kernels (attn_mask bias path) and torch CPU SDPA")

# tiled_peer (fixed) and flashproof.kernels: NaN q in a row masked by an additive -inf row; torch CPU SDPA: a
# NaN q in a row that attends keys gives 0 (a genuine deviation under either policy).
_NAN_PINS = (Case(problem=Problem(shape=Shape(e=8, ev=8), mask=MaskSpec(attn_mask="additive", empty_rows=1)),
                  extra=(("where", "q"), ("nan_seed", 0))),
             Case(problem=Problem(shape=Shape(e=8, ev=8)), extra=(("where", "q"), ("nan_seed", 0))))
pin("nan_propagates_only_to_attending_rows", *_NAN_PINS,
    found="tiled_peer (additive -inf did not mask a NaN logit), flashproof.kernels, torch CPU SDPA")
pin("nan_propagates_ieee", *_NAN_PINS, found="torch CPU SDPA (a row whose q holds a NaN gives 0)")

# tiled_peer (fixed): exp(0 - m) = inf in the discarded branch of a masked key, 0 * inf = NaN in dQ/dK.
pin("gradients_match_reference",
    Case(problem=Problem(shape=Shape(lk=2, e=8, ev=8), regime=Regime("spread", 0.0, 1000.0),
                         mask=MaskSpec(causal="top_left")), extra=(("do_seed", 0),)),
    found="tiled_peer (masked-key exp overflow in the discarded where branch)")
pin("grad_dk_sums_to_zero",
    Case(problem=Problem(shape=Shape(lk=2, e=8, ev=8), regime=Regime("spread", 0.0, 1000.0),
                         mask=MaskSpec(causal="top_left")), extra=(("do_seed", 0),)),
    found="tiled_peer (masked-key exp overflow in the discarded where branch)")

# flashproof's own false alarms found at the deep profile against torch CPU SDPA (fixed, pinned):
# an fp16 gradient beyond 65504 legitimately overflows; a short fp16 draw stayed below 65504.
pin("grad_masked_rows_zero",
    Case(problem=Problem(shape=Shape(heads=2, lq=63, lk=63, e=8, ev=8), regime=Regime("spread", 0.0, 30.0),
                         mask=MaskSpec(attn_mask="bool", density=0.7, empty_rows=2), values="large"),
         extra=(("via", "attn_mask_bool"), ("do_seed", 0))),
    found="torch CPU SDPA at the deep profile (suite false alarm, fixed)")
pin("fp16_large_dot_products_finite",
    Case(problem=Problem(shape=Shape(e=16, ev=16), regime=Regime("large", 0.0, 30000.0), seed=11)),
    found="torch CPU SDPA at the deep profile (construction fell short of 65504, fixed)")

# flashproof's own false alarm at the deep profile against tiled_peer (fixed): the exact single-key
# logit applied softcap after the additive bias instead of before.
pin("lse_is_natural_log",
    Case(problem=Problem(shape=Shape(e=8, ev=8), mask=MaskSpec(attn_mask="additive"), softcap=5.0),
         tile=(("block_m", 16), ("block_n", 16))),
    found="tiled_peer at the deep profile (suite false alarm, fixed)")

# torch SDPA math (CPU, fp32): batched calls are not bitwise batch invariant (docs/findings.md F4).
pin("batch_invariant",
    Case(problem=Problem(shape=Shape(batch=2, lq=5, lk=5, e=24, ev=24), dtype="float32")),
    found="torch CPU SDPA math backend, fp32, H=1 (the suite's math peer now calls it per batch element)")

# flashproof's own false alarm on the H200 against torch SDPA cudnn and efficient (fixed): one
# allowed key makes the value spread W = 0, and attention_shift_bound gave inf * 0 = NaN at large logits.
pin("rope_reencoded_cache_matches",
    Case(problem=Problem(shape=Shape(lk=2, e=8, ev=8), dtype="bfloat16", regime=Regime("large", 0.0, 100000.0),
                         mask=MaskSpec(causal="top_left")),
         extra=(("style", "interleaved"), ("base", 10000.0), ("start", 0), ("delta", 0))),
    found="torch SDPA cudnn and efficient on the H200 (suite false alarm: NaN bound, fixed)")

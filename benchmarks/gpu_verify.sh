#!/usr/bin/env bash
# The GPU verification of one device call (docs/gpu-runs.md, session 5), in the repository root of
# the GPU machine, with the wheels of .whl/ carried (python-flint for the certified reference,
# pytest-xdist and execnet, and the peers' pure-Python packages). Everything writes under $OUT.
#
#   bash benchmarks/gpu_verify.sh kernel   # flashproof's kernel: the gpu profile in four parallel
#                                          # groups, the accumulation probe, the bound check, pytest -n 2
#   bash benchmarks/gpu_verify.sh peers    # every peer of benchmarks/peers/ through the gpu profile
#   bash benchmarks/gpu_verify.sh bench    # flashproof bench --quick alone, then the gpu profile + kernel checks
#   bash benchmarks/gpu_verify.sh verify   # ratio_spot.py (a few bench rows), then the gpu profile + kernel checks
#
# Groups run as parallel processes: the suite's exact references are CPU work (16 cores there),
# the GPU is shared. Each process is cut at LIMIT seconds so that the call returns its files.
set -u
cd "$(dirname "$0")/.."
FINAL=${OUT:?set OUT}
# the device tool returns at most 8 files: everything is written under a work folder, then packed
OUT=$(mktemp -d /tmp/gpu-verify.XXXX)
LIMIT=${LIMIT:-510}
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1
python3 -m pip install -q --no-deps --no-index .whl/python_flint-*.whl .whl/pytest_xdist-*.whl \
  .whl/execnet-*.whl .whl/fla_core-*.whl .whl/flash_attention_triton-*.whl >>"$OUT/install.txt" 2>&1
python3 -c "import einops, packaging" 2>/dev/null || python3 -m pip install -q --no-deps --no-index \
  .whl/einops-*.whl .whl/packaging-*.whl >>"$OUT/install.txt" 2>&1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null; } >"$OUT/versions.txt"
python3 -c "import flint, fla, einops" >>"$OUT/install.txt" 2>&1 || echo "MISSING WHEELS" >>"$OUT/install.txt"
set -f  # from here the --select patterns are fnmatch patterns for flashproof, never shell globs

sel() { for p in "$@"; do printf -- '--select %s ' "$p"; done; }
check() {  # name target selects...
  local name=$1 target=$2; shift 2
  timeout "$LIMIT" flashproof check $target --profile gpu --state-dir "/tmp/state-$name" \
    --json "$OUT/$name.json" $(sel "$@") >"$OUT/$name.txt" 2>&1
  echo "$name exit $?" >>"$OUT/exits.txt"
}

xdist1() {  # issue 18 on one GPU: two xdist workers name the same single device, and do not fail
    timeout 300 python3 -m pytest -q -p no:cacheprovider -n 2 --pyargs flashproof.properties \
      --hypothesis-profile=gpu -k "output_within_error_bound or tilings_agree or ones_values or reruns" \
      --flashproof-report="$OUT/xdist1.json" --flashproof-state-dir=/tmp/state-xdist >"$OUT/xdist1.txt" 2>&1
    echo "xdist1 exit $?" >>"$OUT/exits.txt"
}

kernel_profile() {  # flashproof's kernel through the whole gpu profile, in four parallel groups (not waited for)
  check k-forward "" output_within_error_bound tail_tiles_every_residue tilings_agree \
    tiled_reference_equals_monolithic lse_merge_of_parts_equals_whole long_context_sampled_rows \
    row_shift_leaves_output_and_moves_lse kv_permutation_invariant duplicate_key_adds_ln2 &
  check k-precision "" ones_values_give_ones output_in_convex_hull head_dim_zero_padding_invariant \
    fp16_large_dot_products_finite fp32_stays_within_fp32_bound fp32_weight_ratios_exact reruns_bitwise_equal \
    batch_invariant fully_masked_rows_zero_and_neg_inf causal_alignment_on_unequal_lengths attended_set_exact \
    window_wider_than_sequence_is_causal invalid_window_rejected &
  check k-masks "" 'softcap_*' lse_is_natural_log single_key_with_sentinel_logit logits_below_mask_sentinels \
    'garbage_*' 'nan_*' decode_within_error_bound split_counts_agree 'paged_*' prefill_then_decode_equals_prefill &
  check k-backward "" 'grad*' rope_reencoded_cache_matches scale_equivariant gqa_equals_repeated_mha &  # k-forward ran longest
}

profile_and_checks() {  # the gpu profile and the kernel checks with memcheck side by side, waited for
  kernel_profile
  ( timeout "$LIMIT" python3 benchmarks/gpu_kernel_checks.py all --out "$OUT/checks" --timeout "$((LIMIT - 30))" \
      --sanitizer-timeout "$((LIMIT - 10))" >"$OUT/checks.txt" 2>&1
    echo "kernel-checks exit $?" >>"$OUT/exits.txt" ) &
  wait
}

mode() {
case "$1" in
kernel)
  kernel_profile
  ( timeout "$LIMIT" python3 benchmarks/accumulation_probe.py --out "$OUT/probe" >"$OUT/probe.txt" 2>&1
    echo "probe exit $?" >>"$OUT/exits.txt"
    timeout "$LIMIT" python3 benchmarks/bound_check_gpu.py --out "$OUT/bound-check.json" >"$OUT/bound-check.txt" 2>&1
    echo "bound-check exit $?" >>"$OUT/exits.txt"
    xdist1 ) &
  wait
  ;;
followup)  # the single-device xdist run, and the compiled shared memory of every accepted tile config
  xdist1 &
  ( for dt in float16:128x128,128x256,256x256 float32:64x64,128x128; do
      timeout "$LIMIT" python3 benchmarks/tile_smem.py --jobs "${SMEM_JOBS:-6}" --dtypes "${dt%%:*}" \
        --dims "${dt#*:}" --out "$OUT/tile-smem-${dt%%:*}.json" >>"$OUT/tile-smem.txt" 2>&1
      echo "tile-smem ${dt%%:*} exit $?" >>"$OUT/exits.txt"
    done ) &
  wait
  ;;
final)  # session 6's last call: the gpu profile after the tile-estimate change, flex's properties the peers
         # call did not reach, the peers' failures that were the suite's own (re-judged), fla's padding NaN
  kernel_profile
  check flex-a benchmarks.peers.flex:target fp32_weight_ratios_exact reruns_bitwise_equal batch_invariant \
    fully_masked_rows_zero_and_neg_inf causal_alignment_on_unequal_lengths attended_set_exact \
    window_wider_than_sequence_is_causal invalid_window_rejected 'softcap_*' &
  check flex-b benchmarks.peers.flex:target lse_is_natural_log single_key_with_sentinel_logit \
    logits_below_mask_sentinels 'garbage_*' 'nan_*' decode_within_error_bound split_counts_agree 'paged_*' \
    prefill_then_decode_equals_prefill &
  check flex-c benchmarks.peers.flex:target 'grad*' rope_reencoded_cache_matches &
  check re-flash benchmarks.peers.torch_sdpa:flash garbage_in_padding_isolated &
  check re-cudnn benchmarks.peers.torch_sdpa:cudnn rope_reencoded_cache_matches &
  check re-efficient benchmarks.peers.torch_sdpa:efficient rope_reencoded_cache_matches &
  check re-fat benchmarks.peers.flash_attention_triton:target output_within_error_bound ones_values_give_ones \
    fp16_large_dot_products_finite logits_below_mask_sentinels &
  ( timeout "$LIMIT" python3 -m benchmarks.peers.diag_padding benchmarks.peers.fla:target --lq 148 --lk 148 --e 8 \
      --dtype bfloat16 --regime large --spread 1e15 --causal top_left --pad 1 >"$OUT/diag-fla.txt" 2>&1
    echo "diag-fla exit $?" >>"$OUT/exits.txt"
    timeout "$LIMIT" python3 -m benchmarks.peers.diag_padding benchmarks.peers.fla:target --lq 148 --lk 148 --e 8 \
      --dtype bfloat16 --pad 1 >>"$OUT/diag-fla.txt" 2>&1
    echo "diag-fla-standard exit $?" >>"$OUT/exits.txt" ) &
  wait
  ;;
bench)  # session 7's last call: `flashproof bench --quick` alone on the GPU, then the gpu profile and the
        # kernel checks with memcheck side by side, all on the final kernel commit
  timeout 200 python3 benchmarks/exact_launch_check.py >"$OUT/exact-launch.txt" 2>&1
  rc=$?; echo "exact-launch exit $rc" >>"$OUT/exits.txt"
  [ "$rc" -eq 0 ] || return  # the rest would judge a broken launch path
  timeout "${BENCH_LIMIT:-260}" flashproof bench --quick --out "$OUT/bench" >"$OUT/bench.txt" 2>&1
  echo "bench exit $?" >>"$OUT/exits.txt"
  timeout 120 python3 benchmarks/host_overhead.py --out "$OUT/host" >"$OUT/host.txt" 2>&1  # alone: host timing
  echo "host exit $?" >>"$OUT/exits.txt"
  profile_and_checks
  ;;
verify)  # a kernel change after the bench: a same-run spot check of its speed, then the gpu profile and the
         # kernel checks with memcheck side by side
  timeout 120 python3 benchmarks/ratio_spot.py >"$OUT/ratio-spot.txt" 2>&1
  echo "ratio-spot exit $?" >>"$OUT/exits.txt"
  profile_and_checks
  ;;
peers)
  for p in flex:target torch_sdpa:flash torch_sdpa:cudnn torch_sdpa:efficient fla:target \
           flash_attention_triton:target; do
    check "peer-${p%%:*}-${p##*:}" "benchmarks.peers.$p" '*' &
  done
  wait
  ;;
esac
}

for m in "$@"; do
  case "$m" in kernel|peers|followup|final|bench|verify) ;; *) echo "usage: OUT=DIR bash benchmarks/gpu_verify.sh kernel|peers|followup|final|bench|verify ..." >&2; exit 2;; esac
done
[ $# -gt 0 ] || { echo "usage: OUT=DIR bash benchmarks/gpu_verify.sh kernel|peers|followup|final|bench|verify ..." >&2; exit 2; }
for m in "$@"; do mode "$m" & done  # the modes named run side by side
wait
cat "$OUT/exits.txt"
tag=$(IFS=-; echo "$*")
cp "$OUT/exits.txt" "$FINAL/exits-$tag.txt"
tar czf "$FINAL/verify-$tag.tgz" -C "$OUT" .

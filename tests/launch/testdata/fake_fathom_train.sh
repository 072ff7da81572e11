#!/usr/bin/env bash
# A stand-in for `fathom train` in fp8_accuracy_script_test.cc: deterministic main-LM losses per precision and
# train.seed (fp8 scaled by 1 + FAKE_FP8_REL), and the eval line at train.eval_every, in fathom's log format.
# FAKE_STATE=FILE FAKE_DRIFT=x: the n-th run (counted in FILE, from 0) adds n * x to its losses from step 30 on,
# as a GPU run that is not reproducible would. Like fathom it prints train.deterministic in a recipe-as-run
# block and, with train.log_dir, writes metrics.jsonl (lm_loss and grad_norm at full precision).
steps=0; prec=bf16; seed=0; every=0; batches=0; det=false; log_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --set) case "$2" in
      train.steps=*) steps=${2#*=};; train.precision=*) prec=${2#*=};; train.seed=*) seed=${2#*=};;
      train.eval_every=*) every=${2#*=};; train.eval_steps=*) batches=${2#*=};;
      train.deterministic=*) det=${2#*=};; train.log_dir=*) log_dir=${2#*=};; esac; shift 2;;
    *) shift;;
  esac
done
printf '# recipe as run (fake):\ntrain:\n  steps: %s\n  deterministic: %s\n# end of recipe\n' "$steps" "$det"
metrics=/dev/null
if [[ -n "$log_dir" ]]; then mkdir -p "$log_dir"; metrics="$log_dir/metrics.jsonl"; : > "$metrics"; fi
rel=0; [[ $prec == fp8 ]] && rel=${FAKE_FP8_REL:-0}
drift=0
if [[ -n "${FAKE_STATE:-}" ]]; then
  runs=$( (cat "$FAKE_STATE" 2>/dev/null || true) | wc -l)
  echo run >> "$FAKE_STATE"
  drift=$(awk -v n="$runs" -v x="${FAKE_DRIFT:-0}" 'BEGIN { printf "%.9f", n * x }')
fi
awk -v n="$steps" -v rel="$rel" -v seed="$seed" -v every="$every" -v nb="$batches" -v drift="$drift" \
    -v metrics="$metrics" 'BEGIN {
  for (s = 1; s <= n; s++) {
    lm = (3.0 - 0.001 * s + 0.01 * seed) * (1 + rel) + (s >= 30 ? drift : 0)
    printf "{\"step\":%d,\"wall_time\":0,\"loss\":%.17g,\"lm_loss\":%.17g,\"grad_norm\":%.17g}\n", s, lm, lm, 1.5 + (s >= 30 ? drift : 0) > metrics
    printf "step %5d/%d | lm %.6f | mtp 0 | loss %.4f\n", s, n, lm, lm
    if (every > 0 && (s % every == 0 || s == n)) printf "eval  %5d/%d | valid lm %.6f | ppl %.2f (%d batches)\n", s, n, lm + 0.1, exp(lm + 0.1), nb
  } }'

#!/usr/bin/env bash
# make demo: sft -> eval -> train (DynaMO) -> eval on the embedded defaults; test pass@1 before and after RL.
# SEEDS="0 1 2" trains one RL run per seed from the same SFT checkpoint and reports the gain's 95% CI over them.
# The summary goes to outputs/demo/<date>_<time>/demo.json; DOCS=1 also writes docs/demo.json and README's table.
# Extra arguments are passed to every command (e.g. `bash scripts/demo.sh logger=none`).
set -euo pipefail
cd "$(dirname "$0")/.."
DYNAMO=${DYNAMO:-.venv/bin/dynamo}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0}
# one torch thread unless told otherwise: results are deterministic for a given seed *and thread count* (float sums
# in another order move a 1000-step SFT a long way), so the default reproduces docs/demo.json exactly on the CPU it was
# made on; another CPU's kernels sum in another order, and its SFT can land elsewhere (README says how far)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
out=outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)
mkdir -p "$out"
# what the figures came from, recorded before anything runs: the commit (with -dirty if src/, conf/ or scripts/ had
# uncommitted changes), the torch threads (results are deterministic for a given seed and thread count), the args
{ echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain src conf scripts 2>/dev/null | grep -q . && echo -dirty)"
  echo "threads $("$PY" -c 'import torch; print(torch.get_num_threads())')"
  echo "args $*"; } > "$out/meta.txt"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

run() {  # run a dynamo command, show its output, and leave its run dir (its last line) in $run_dir
  local label=$1; shift
  local t0=$(date +%s)
  "$DYNAMO" "$@" | tee "$log"
  run_dir=$(tail -n 1 "$log")
  echo "$label $run_dir $(( $(date +%s) - t0 ))" >> "$out/runs.txt"
}

echo "== 1 dynamo sft (the embedded defaults: tiny model, task=math with an imperfect teacher)"
run sft sft name=demo "$@"
sft_dir=$run_dir
for seed in $SEEDS; do
  echo "== 2 dynamo eval of the SFT checkpoint (seed $seed)"
  run "sft_eval/$seed" eval model.path="$sft_dir/checkpoints/final" seed="$seed" name="demo-sft-seed$seed" "$@"
  echo "== 3 dynamo train allocator=variance modulator=dynamo (DynaMO) from the SFT checkpoint (seed $seed)"
  run "train/$seed" train allocator=variance modulator=dynamo model.path="$sft_dir/checkpoints/final" seed="$seed" \
      name="demo-seed$seed" "$@"
  train_dir=$run_dir
  echo "== 4 dynamo eval of the RL checkpoint (seed $seed)"
  run "rl_eval/$seed" eval model.path="$train_dir/checkpoints/final" seed="$seed" name="demo-rl-seed$seed" "$@"
done
"$PY" scripts/demo_report.py "$out" ${DOCS:+--docs}

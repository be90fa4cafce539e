#!/usr/bin/env bash
# make demo: sft -> train (DynaMO) -> eval on the embedded defaults, then test pass@1 before and after RL.
# Extra arguments are passed to all three commands (e.g. `bash scripts/demo.sh logger=none`).
set -euo pipefail
cd "$(dirname "$0")/.."
DYNAMO=${DYNAMO:-.venv/bin/dynamo}
PY=${PY:-.venv/bin/python}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)

run() {  # run a dynamo command, show its output, and leave its run dir (its last line) in $run_dir
  "$DYNAMO" "$@" | tee "$log"
  run_dir=$(tail -n 1 "$log")
}

echo "== 1/3 dynamo sft task=math model=tiny"
run sft task=math model=tiny name=demo "$@"
sft_dir=$run_dir
echo "== 2/3 dynamo train task=math allocator=variance modulator=dynamo (DynaMO) from the SFT checkpoint"
run train task=math allocator=variance modulator=dynamo model.path="$sft_dir/checkpoints/final" name=demo "$@"
train_dir=$run_dir
echo "== 3/3 dynamo eval of the RL checkpoint"
run eval task=math model.path="$train_dir/checkpoints/final" name=demo "$@"
eval_dir=$run_dir

"$PY" - "$sft_dir" "$eval_dir" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
sft, rl = (json.load(open(f"{d}/eval.json"))["overall"] for d in sys.argv[1:3])
print(f"\ntest greedy pass@1: after SFT {sft['greedy']:.3f} -> after RL {rl['greedy']:.3f} "
      f"({100 * (rl['greedy'] - sft['greedy']):+.1f} points); demo took {int(sys.argv[3])} s")
PY

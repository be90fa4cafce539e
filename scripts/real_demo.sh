#!/usr/bin/env bash
# make real-demo: SmolLM2-135M-Instruct + LoRA trained with RL on reasoning-gym chain sums (two one-digit terms, chat
# format), DynaMO for each of $SEEDS and GRPO (uniform allocation, no modulation, the same rollout budget) for each of
# $GRPO_SEEDS. Each run is one `dynamo train`: it evaluates the held-out split before step 1 (eval_before.json) and
# after the last (eval.json). Runs are kept under outputs/real_demo/<recipe>/<method>/seed<k>/, <recipe> a hash of the
# arguments below: a later call skips every run that finished and restarts one that did not. The summary goes to
# outputs/real_demo/<recipe>/real_demo.json; DOCS=1 also writes docs/real_demo.json and README's block.
# Extra arguments are passed to every run (and change the recipe's hash).
set -euo pipefail
cd "$(dirname "$0")/.."
DYNAMO=${DYNAMO:-.venv/bin/dynamo}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-0 1 2}
GRPO_SEEDS=${GRPO_SEEDS-0 1}
# two torch threads, stated in the summary: a run is deterministic for a given seed, thread count and CPU
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

recipe=(model=smollm2-135m model.lora.enabled=true
        task=reasoning_gym 'task.datasets={chain_sum: 1}'
        'task.config={chain_sum: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}'
        task.num_train=100 task.format=chat task.answer_fallback=last_number task.max_new_tokens=48
        trainer.prompts_per_step=8 rollout.n=4 trainer.steps=16 trainer.eval_every=0 trainer.save_every=0
        optim.lr=5e-4 optim.warmup_steps=2 algorithm.mini_batches=1
        eval.n_samples=2 'eval.ks=[1]' trainer.dump_rollouts=true logger=none "$@")
declare -A methods=([dynamo]="allocator=variance modulator=dynamo" [grpo]="allocator=uniform modulator=none")

out=outputs/real_demo/$(printf '%s\n' "${recipe[@]}" | sha1sum | cut -c1-10)
mkdir -p "$out"
printf '%s\n' "${recipe[@]}" > "$out/recipe.txt"

run_seed() {  # method seed: one train run, skipped when its eval.json is there
  local method=$1 seed=$2 dir="$out/$1/seed$2"
  if [[ -f $dir/eval.json && -f $dir/seconds.txt ]]; then
    echo "== $method seed $seed: done before ($dir)"; return
  fi
  rm -rf "$dir"  # an unfinished run: its steps are not checkpointed (save_every=0), so it starts again
  echo "== $method seed $seed -> $dir"
  local t0=$(date +%s)
  # shellcheck disable=SC2086
  "$DYNAMO" train "${recipe[@]}" ${methods[$method]} seed="$seed" hydra.run.dir="$dir"
  { echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git status --porcelain src conf scripts 2>/dev/null | grep -q . && echo -dirty)"
    echo "threads $("$PY" -c 'import torch; print(torch.get_num_threads())')"
    echo "seconds $(( $(date +%s) - t0 ))"; } > "$dir/seconds.txt.tmp"
  mv "$dir/seconds.txt.tmp" "$dir/seconds.txt"
}

for seed in $SEEDS; do run_seed dynamo "$seed"; done
for seed in $GRPO_SEEDS; do run_seed grpo "$seed"; done
"$PY" scripts/real_demo_report.py "$out" ${DOCS:+--docs}

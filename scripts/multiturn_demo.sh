#!/usr/bin/env bash
# sft -> train -> eval on a multi-turn task with a small tiny model, on CPU in minutes:
#   bash scripts/multiturn_demo.sh calc|guess OUT_DIR [extra overrides for every command]
# Prints the test split's greedy success, turns and tool calls of the SFT policy (the train run's step-0 eval) and
# of the RL policy (`dynamo eval` of its final checkpoint), per RL seed, and the mean over the seeds.
# Environment: SFT_STEPS (300), SFT_FROM=<checkpoint dir> continues SFT from it, RL_STEPS (30), RL_LR (5e-4),
# PROMPTS (8 prompts a step, x 8 rollouts), SEEDS ("0": RL seeds, every one from the same SFT checkpoint),
# EVAL_SAMPLES (0: greedy only; k > 0 also k sampled episodes per test problem, their success share "sampled").
set -euo pipefail
cd "$(dirname "$0")/.."
task=$1; out=$2; shift 2
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODEL="model.hidden_size=96 model.num_layers=2 model.num_heads=4 model.intermediate_size=256 model.max_position_embeddings=192"
COMMON="task=$task logger=none device=cpu eval.n_samples=${EVAL_SAMPLES:-0} eval.batch_size=64"
t0=$(date +%s)
$PY -m dynamo_cli sft $COMMON seed=0 $MODEL ${SFT_FROM:+model.path=$SFT_FROM} hydra.run.dir="$out/sft" trainer.steps=${SFT_STEPS:-300} \
    trainer.batch_size=32 trainer.eval_every=0 trainer.log_every=50 optim.warmup_steps=30 "$@"
t1=$(date +%s)
for seed in ${SEEDS:-0}; do
  $PY -m dynamo_cli train $COMMON seed=$seed model.path="$out/sft/checkpoints/final" hydra.run.dir="$out/train-$seed" \
      trainer.steps=${RL_STEPS:-30} trainer.prompts_per_step=${PROMPTS:-8} rollout.n=8 rollout.max_batch_size=64 \
      algorithm.micro_batch_size=32 algorithm.mini_batches=2 optim.lr=${RL_LR:-5e-4} optim.warmup_steps=0 trainer.eval_every=0 \
      trainer.save_every=0 trainer.dump_rollouts=true "$@"
  $PY -m dynamo_cli eval $COMMON seed=$seed model.path="$out/train-$seed/checkpoints/final" hydra.run.dir="$out/eval-$seed" "$@"
done
t2=$(date +%s)
$PY - "$out" ${SEEDS:-0} <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
rows = []
for seed in seeds:
    steps = [json.loads(line) for line in open(f"{out}/train-{seed}/metrics.jsonl")]
    start = next(s for s in steps if "eval/greedy_pass1" in s)  # the step-0 eval: the SFT policy
    end = json.load(open(f"{out}/eval-{seed}/eval.json"))["overall"]
    train = [s for s in steps if "train/loss" in s]
    row = {"seed": seed}
    for name, before, after in [("greedy reward", start["eval/greedy_pass1"], end["greedy"]),
                                *[(k, start[f"eval/{k}"], end[k]) for k in ("solved", "turns", "tool_calls") if k in end],
                                *([("sampled solved", start["eval/mean@n"], end["mean@n"])] if "mean@n" in end else [])]:
        row[name] = (before, after)
    for name in ("rollout/reward_mean", "rollout/turns", "rollout/tool_calls", "rollout/solved"):
        if name in train[0]:
            row[name] = (sum(s[name] for s in train[:4]) / 4, sum(s[name] for s in train[-4:]) / 4)
    rows.append(row)
keys = [k for k in rows[0] if k != "seed"]
print("test split (SFT policy -> RL policy); rollout/*: mean of the first 4 -> the last 4 RL steps")
for row in rows + ([{"seed": "mean", **{k: tuple(sum(r[k][i] for r in rows) / len(rows) for i in (0, 1)) for k in keys}}]
                   if len(rows) > 1 else []):
    print(f"seed {row['seed']}: " + ", ".join(f"{k} {row[k][0]:.3f} -> {row[k][1]:.3f}" for k in keys))
PY
echo "seconds: sft $((t1 - t0)), train + eval $((t2 - t1))"

#!/usr/bin/env bash
# sft -> train -> eval on a multi-turn task with a small tiny model, on CPU in minutes:
#   bash scripts/multiturn_demo.sh calc|guess OUT_DIR [extra overrides for every command]
# Prints the test split's greedy success, turns and tool calls of the SFT policy (the train run's step-0 eval) and
# of the RL policy (`dynamo eval` of its final checkpoint). SFT_FROM=<checkpoint dir> continues SFT from it.
set -euo pipefail
cd "$(dirname "$0")/.."
task=$1; out=$2; shift 2
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MODEL="model.hidden_size=96 model.num_layers=2 model.num_heads=4 model.intermediate_size=256 model.max_position_embeddings=192"
COMMON="task=$task logger=none device=cpu seed=0 eval.n_samples=0 eval.batch_size=64"
t0=$(date +%s)
$PY -m dynamo_cli sft $COMMON $MODEL ${SFT_FROM:+model.path=$SFT_FROM} hydra.run.dir="$out/sft" trainer.steps=${SFT_STEPS:-300} trainer.batch_size=32 \
    trainer.eval_every=0 trainer.log_every=50 optim.warmup_steps=30 "$@"
t1=$(date +%s)
$PY -m dynamo_cli train $COMMON model.path="$out/sft/checkpoints/final" hydra.run.dir="$out/train" \
    trainer.steps=${RL_STEPS:-30} trainer.prompts_per_step=8 rollout.n=8 rollout.max_batch_size=64 algorithm.micro_batch_size=32 \
    algorithm.mini_batches=2 optim.lr=${RL_LR:-5e-4} optim.warmup_steps=0 trainer.eval_every=0 trainer.save_every=0 \
    trainer.dump_rollouts=true "$@"
t2=$(date +%s)
$PY -m dynamo_cli eval $COMMON model.path="$out/train/checkpoints/final" hydra.run.dir="$out/eval" "$@"
t3=$(date +%s)
$PY - "$out" <<'PY'
import json, sys
out = sys.argv[1]
steps = [json.loads(l) for l in open(f"{out}/train/metrics.jsonl")]
before = next(s for s in steps if "eval/greedy_pass1" in s)
after = json.load(open(f"{out}/eval/eval.json"))["overall"]
keys = [k for k in ("turns", "tool_calls", "solved") if k in after]
print("SFT policy: greedy " + f"{before['eval/greedy_pass1']:.3f} " + " ".join(f"{k} {before['eval/' + k]:.3f}" for k in keys))
print("RL policy:  greedy " + f"{after['greedy']:.3f} " + " ".join(f"{k} {after[k]:.3f}" for k in keys))
train = [s for s in steps if "train/loss" in s]
for name in ("rollout/reward_mean", "rollout/turns", "rollout/tool_calls", "rollout/solved"):
    if name in train[0]:
        first, last = train[:4], train[-4:]
        print(f"{name}: first 4 steps {sum(s[name] for s in first) / 4:.3f}, last 4 steps {sum(s[name] for s in last) / 4:.3f}")
PY
echo "seconds: sft $((t1 - t0)), train $((t2 - t1)), eval $((t3 - t2))"

"""TRL's GRPOTrainer on the work of one dynamo run, for bench.real_model_speed: run with TRL's own venv, not dynamo's.

    .venv-trl/bin/python bench/trl_grpo.py PROBLEMS.json MODEL_DIR OUT.json --steps S --prompts P --n N --tokens T

PROBLEMS.json (written by bench.real_model_speed from dynamo's task): [{"prompt": [chat messages], "answer": "..."}].
The same model, LoRA (r 16, alpha 32, the same projections), P prompts x N completions a step at temperature 1, at most
T new tokens, one optimiser step per generation (steps_per_generation 1, num_iterations 1: no separate old-log-prob pass,
as dynamo's algorithm.mini_batches=1), no KL (beta 0), no gradient checkpointing (dynamo does not checkpoint either),
fp32 on the CPU. The reward: 1 when the last number of the completion equals the answer (dynamo's last-number fallback
without its boxed and answer-cue rules: the same amount of work per completion, a few microseconds). Writes each step's
wall time and the completion tokens it generated. Imports nothing from dynamo.
"""
from __future__ import annotations

import argparse
import json
import re
import time

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number_reward(completions, answer, **_) -> list[float]:
    rewards = []
    for completion, truth in zip(completions, answer, strict=True):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        numbers = NUMBER.findall(text)
        rewards.append(float(bool(numbers) and numbers[-1] == str(truth).strip()))
    return rewards


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self.start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("problems")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    problems = json.loads(open(args.problems).read())
    data = Dataset.from_list([{"prompt": p["prompt"], "answer": p["answer"]} for p in problems])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    rows = args.prompts * args.n
    config = GRPOConfig(output_dir=args.out + ".trainer", use_cpu=True, bf16=False, per_device_train_batch_size=rows,
                        gradient_accumulation_steps=1, num_generations=args.n, steps_per_generation=1, num_iterations=1,
                        max_completion_length=args.tokens, temperature=1.0, beta=0.0, learning_rate=args.lr,
                        gradient_checkpointing=False, max_steps=args.steps, logging_steps=1, report_to="none",
                        save_strategy="no", seed=0, dataloader_num_workers=0, log_completions=False)
    timer = StepTimes()
    trainer = GRPOTrainer(model=model, reward_funcs=last_number_reward, args=config, train_dataset=data,
                          processing_class=tokenizer, peft_config=lora, callbacks=[timer])
    trainer.train()
    lengths = [h["completions/mean_length"] * rows for h in trainer.state.log_history if "completions/mean_length" in h]
    with open(args.out, "w") as f:
        json.dump({"step_s": timer.times, "completion_tokens": lengths, "trl": __import__("trl").__version__}, f)


if __name__ == "__main__":
    main()
